"""Run a tiny pretraining job:
`python -m tests.train.run_training MODEL_DIR STEPS [SAVE_EVERY] [MESH_DATA MESH_MODEL [RULES]]`.

Used by the trainer tests as a separate process, so it can be killed, sent SIGTERM, or given 8 fake devices.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

from t5scale.config import ModelConfig
from t5scale.data.pipeline import DataConfig
from t5scale.train.optim import OptimConfig
from t5scale.train.partitioning import MeshConfig
from t5scale.train.trainer import TrainConfig, train
from tests.testing import REPO

# b,l,h,d all different; vocab covers the embedded vocabulary (2100 ids) padded to 128.
MODEL = ModelConfig(num_encoder_layers=2, num_decoder_layers=2, d_model=32, d_kv=8, num_heads=4, d_ff=64,
                    vocab_size=2176)
DATA = DataConfig(task_feature_lengths={"inputs": 32, "targets": 10}, batch_size=8, seed=1)
OPTIM = OptimConfig(schedule="constant", learning_rate=0.01)


def run(model_dir: str, steps: int, save_every: int = 2, mesh: MeshConfig | None = None, **train_changes):
    mesh = mesh or MeshConfig()
    cfg = TrainConfig(**{**dict(model_dir=model_dir, train_steps=steps, save_every=save_every, log_every=1,
                                progress_bar=False), **train_changes})
    return train(model_cfg=MODEL, data_cfg=DATA, optim_cfg=OPTIM, mesh_cfg=mesh, train_cfg=cfg)


def emulated_hosts_dataset(num_hosts: int):
    """A `make_dataset` for one process that reads its batches the way `num_hosts` processes would: host i's shard
    gives rows [i*b/n, (i+1)*b/n) of each global batch. A single-process reference for multi-host runs."""
    import tensorflow as tf

    from t5scale.data import pipeline

    def make_dataset(cfg, shard_index=0, num_shards=1):
        assert (shard_index, num_shards) == (0, 1)
        shards = tuple(pipeline.make_dataset(cfg, i, num_hosts) for i in range(num_hosts))
        return tf.data.Dataset.zip(shards).map(
            lambda *parts: {k: tf.concat([p[k] for p in parts], axis=0) for k in parts[0]})

    return make_dataset


def emulate_hosts(num_hosts: int) -> None:
    from t5scale.train import trainer

    trainer.make_dataset = emulated_hosts_dataset(num_hosts)


def losses(model_dir) -> dict[int, float]:
    """Step -> loss, the last record of each step (a resumed run rewrites the steps after its checkpoint)."""
    with open(f"{model_dir}/metrics.jsonl") as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


# Helpers for the tests that run it: in a subprocess, again after a failure, and reading what it wrote.


def start(model_dir, steps, *extra, env=None):
    return subprocess.Popen([sys.executable, "-m", "tests.train.run_training", str(model_dir), str(steps), *extra],
                            cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: pathlib.Path, process, timeout=300):
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def rows(model_dir) -> list[tuple[int, float]]:
    """(step, loss) of every metrics.jsonl record, in the order written (a rerun appends its own)."""
    path = pathlib.Path(model_dir) / "metrics.jsonl"
    return [(r["step"], r["loss"]) for r in map(json.loads, path.read_text().splitlines())] if path.exists() else []


def rerun(model_dir, steps, **changes):
    """Run the same command again; returns the result and the (step, loss) records that this run wrote."""
    before = len(rows(model_dir))
    result = run(str(model_dir), steps, **changes)
    return result, rows(model_dir)[before:]


def assert_resumed_from(result, new_rows, step, end):
    """The rerun restored `step` and trained exactly the steps after it: none at or before it again."""
    assert result.start_step == step
    assert [s for s, _ in new_rows] == list(range(step + 1, end + 1))


def committed_steps(model_dir) -> list[int]:
    """Checkpoints orbax has committed (its temporary directories carry a suffix after the step)."""
    return sorted(int(p.name.removeprefix("checkpoint_")) for p in pathlib.Path(model_dir).glob("checkpoint_*")
                  if p.name.removeprefix("checkpoint_").isdigit())


def finish(processes) -> list[dict]:
    ends = []
    for process in processes:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        ends.append(json.loads(out.strip().splitlines()[-1]))
    return ends


if __name__ == "__main__":
    from t5scale.train import distributed

    distributed.maybe_initialize()
    if os.environ.get("EMULATE_HOSTS"):
        emulate_hosts(int(os.environ["EMULATE_HOSTS"]))
    args = sys.argv[1:]
    mesh = MeshConfig(data=int(args[3]), model=int(args[4]), rules=args[5] if len(args) > 5 else "t5x") \
        if len(args) > 3 else MeshConfig()
    result = run(args[0], int(args[1]), int(args[2]) if len(args) > 2 else 2, mesh=mesh)
    print(json.dumps({"step": result.step, "ended_by": result.ended_by, "start_step": result.start_step}))
