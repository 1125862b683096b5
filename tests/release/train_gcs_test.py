"""`t5scale train` with MODEL_DIR=gs:// on the GCS emulator: writes its records (TensorBoard included), resumes
exactly after kill -9 from the newest committed checkpoint, warm-starts `finetune` from gs://, and `t5scale eval`
writes its outputs there.

The writers that only TensorFlow can do (TensorBoard events, the data position, seqio's prediction logger) write
locally and are copied up with etils.epath (t5scale.staging); tf.io.gfile's GCS client cannot reach an emulator.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.testing import REPO

TINY = ["--gin.NL=1", "--gin.DM=32", "--gin.KV=8", "--gin.NH=2", "--gin.FF=48"]
SMALL_RUN = ["--gin.BATCH_SIZE=4", "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
             "--gin.train_config.progress_bar=False", "--gin.train_config.log_every=1"]
STEPS = 6


def t5scale_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "t5scale", *argv]


def run(*argv: str) -> subprocess.CompletedProcess:
    done = subprocess.run(t5scale_command(*argv), cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def train(model_dir: str) -> list[str]:
    return ["train", "--gin_file=runs/demo.gin", *TINY, *SMALL_RUN, f"--gin.TRAIN_STEPS={STEPS}",
            f"--gin.MODEL_DIR='{model_dir}'", "--gin.train_config.save_every=2",
            f"--gin.train_config.eval_every={STEPS}", "--gin.train_config.eval_batches=1"]


def params(checkpoint: str) -> list[np.ndarray]:
    import jax
    import orbax.checkpoint as ocp
    from etils import epath

    with ocp.PyTreeCheckpointer() as checkpointer:
        return jax.tree.leaves(checkpointer.restore(epath.Path(checkpoint) / "state")["params"])


def losses(model_dir: str) -> dict[int, float]:
    """metrics.jsonl's loss per step; a resumed run's later line for a step replaces the earlier one."""
    from etils import epath

    rows = [json.loads(line) for line in epath.Path(model_dir, "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


def tensorboard_steps(model_dir: str, local_copy) -> set[int]:
    """Steps with a `loss` scalar in the TensorBoard event files in `model_dir`."""
    import tensorflow as tf
    from etils import epath

    steps = set()
    for remote in epath.Path(model_dir).glob("events.out.tfevents.*"):
        (local_copy / remote.name).write_bytes(remote.read_bytes())
        for event in tf.compat.v1.train.summary_iterator(str(local_copy / remote.name)):
            steps |= {event.step for value in event.summary.value if value.tag == "loss"}
    return steps


def committed_steps(gcs, bucket: str, run: str) -> list[int]:
    """Steps whose checkpoint orbax finished (on GCS it writes `commit_success.txt` last)."""
    names = gcs.objects(bucket, f"{run}/checkpoint_")
    return sorted(int(m.group(1)) for n in names if (m := re.fullmatch(rf"{run}/checkpoint_(\d+)/commit_success.txt",
                                                                       n)))


@pytest.mark.slow  # ~80-190 s on 2 cores; .ci/run runs the slow tests
def test_training_to_gcs_resumes_after_kill_9_and_warm_starts(gcs, tmp_path):
    from etils import epath

    bucket = gcs.create_bucket()
    full, killed = f"gs://{bucket}/full", f"gs://{bucket}/killed"
    run(*train(full))
    assert sorted(losses(full)) == list(range(1, STEPS + 1))  # one line per step, none lost to "append"
    assert tensorboard_steps(full, tmp_path) == set(range(1, STEPS + 1))
    assert [row["step"] for row in map(json.loads, epath.Path(full, "eval.jsonl").read_text().splitlines())] == \
        [STEPS]
    assert f"full/data_state/checkpoint_{STEPS}/process_0.index" in gcs.objects(bucket, "full/data_state/")

    process = subprocess.Popen(t5scale_command(*train(killed)), cwd=REPO, env=os.environ.copy(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None and not any(o.startswith("killed/checkpoint_4/") for o in gcs.objects(bucket)):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    committed = committed_steps(gcs, bucket, "killed")
    assert committed and committed[-1] in (2, 4), committed

    run(*train(killed))
    end = json.loads(epath.Path(killed, "train_end.json").read_text())
    assert (end["start_step"], end["step"]) == (committed[-1], STEPS)  # resumed there, not from scratch
    for resumed, uninterrupted in zip(params(f"{killed}/checkpoint_{STEPS}"), params(f"{full}/checkpoint_{STEPS}")):
        np.testing.assert_array_equal(resumed, uninterrupted)
    assert losses(killed) == losses(full)
    assert tensorboard_steps(killed, tmp_path) >= set(range(committed[-1] + 1, STEPS + 1))

    finetuned, warm_start = f"gs://{bucket}/ft", f"{full}/checkpoint_{STEPS}"
    run("finetune", "--gin_file=runs/demo_finetune.gin", *SMALL_RUN, "--gin.TRAIN_STEPS=1",
        f"--gin.MODEL_DIR='{finetuned}'", f"--gin.INITIAL_CHECKPOINT_PATH='{warm_start}'",
        "--gin.train_config.eval_every=None")
    assert json.loads(epath.Path(finetuned, "config.json").read_text())["train"]["initial_checkpoint_path"] == \
        warm_start
    assert json.loads(epath.Path(finetuned, "train_end.json").read_text())["start_step"] == 0
    # One fine-tuning step away from the pretrained params (a fresh init would be as far away as they are large).
    for tuned, pretrained in zip(params(f"{finetuned}/checkpoint_1"), params(warm_start)):
        assert np.linalg.norm(tuned - pretrained) < 0.1 * np.linalg.norm(pretrained)

    run("eval", "--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH='{finetuned}'",
        "--gin.MIXTURE_OR_TASK_NAME='embedded_sst2'", f"--gin.EVAL_OUTPUT_DIR='{finetuned}/eval'",
        "--gin.eval_config.num_examples=4")
    assert json.loads(epath.Path(finetuned, "eval", "metrics.json").read_text())["step"] == 1
    predictions = epath.Path(finetuned, "eval", "embedded_sst2-000001.jsonl").read_text().splitlines()
    assert len(predictions) == 4
    assert json.loads(epath.Path(finetuned, "eval", "embedded_sst2-metrics.jsonl").read_text())["step"] == 1
