"""Evaluate a checkpoint on seqio tasks with their own postprocessors and metrics (T5's protocol).

    summary = evaluate(EvalConfig(checkpoint_path="runs/glue/checkpoint_1000",
                                  mixture_or_task_name="glue_v002_proportional", output_dir="runs/glue/eval"))

seqio.Evaluator reads each task's evaluation split, our model decodes (greedy, beam search with T5's brevity
penalty, or sampling seeded per example), and the task's postprocessor and metric functions do the rest. Metrics
over scores (rank classification) are refused: T5 decodes every GLUE, SuperGLUE and SQuAD task.
Writes `output_dir/metrics.json` (per-task metrics, GLUE and SuperGLUE averages) and seqio's per-task
`<task>-<step, 6 digits>.jsonl` predictions; `format_table` prints the summary. A compressed checkpoint
(t5scale.compress) evaluates the same way, its weights dequantized to float32, under its source's step.

On several devices or hosts (every host runs the same command, as for training) the parameters are placed on the
mesh as in training (a t5scale checkpoint is read shard by shard, each host the shards its devices hold), every
global batch is split over the data axis so that each host decodes its share of the examples, the outputs are
gathered, and process 0 alone computes the metrics and writes the files: the metrics equal one process's. The
trainer calls `evaluate_model` the same way with its own sharded parameters, every `train_config.task_eval_every`
steps (t5x's eval period).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable, Iterator, Mapping

import jax
import numpy as np
import seqio
import tensorflow as tf
from etils import epath
from jax.experimental import multihost_utils

from t5scale.data import metrics as metrics_lib
from t5scale.data.registry import get_task_or_mixture
from t5scale.model import decoding
from t5scale.staging import StagedDir
from t5scale.train.partitioning import MeshConfig, batch_sharding, make_mesh
from t5scale.weights.load import load_any

# T5's benchmark scores; each is reported only when every task it averages was evaluated.
BENCHMARKS = {"glue_average": metrics_lib.GLUE_AVERAGE_TASKS,
              "super_glue_average": metrics_lib.SUPER_GLUE_AVERAGE_TASKS}


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    checkpoint_path: str  # MODEL_DIR/checkpoint_<step>, a MODEL_DIR (its newest checkpoint), or a compressed one
    mixture_or_task_name: str
    output_dir: str
    split: str = "validation"
    task_feature_lengths: Mapping[str, int] | None = None  # None: each feature's longest example
    batch_size: int = 32
    beam_size: int = 1  # 1: greedy decoding
    alpha: float = 0.6  # beam search brevity penalty ((5 + length) / 6) ** alpha
    num_examples: int | None = None  # per task, from the start of the split; None: all
    temperature: float = 0.0  # > 0: sample (beam_size 1), each example with its index in the split as its row id
    top_k: int = 0  # sampling: only the k most likely tokens; 0: all
    top_p: float = 1.0  # sampling: only the nucleus of this probability; 1: all
    seed: int = 0  # sampling

    def __post_init__(self):
        if self.batch_size < 1 or self.beam_size < 1:
            raise ValueError("EvalConfig: batch_size and beam_size must be positive.")
        decoding.check_sampling(self.temperature, self.top_k, self.top_p, self.beam_size)


def _batches(dataset, batch_size: int) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
    """(indices, features) in batches of exactly `batch_size` rows; the last one padded with zero rows."""
    rows = list(dataset.as_numpy_iterator())
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        indices = [int(index) for index, _ in chunk]
        features = {k: np.stack([f[k] for _, f in chunk]) for k in chunk[0][1]}
        pad = batch_size - len(chunk)
        yield indices, {k: np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)) for k, v in features.items()}


def _over_batches(compute: Callable, dataset, batch_size: int, mesh) -> list[tuple[int, object]]:
    """(index, output row) of `compute(batch)` over the dataset in global batches. With a mesh, each process puts
    its slice of the batch rows on its devices (the data axis splits the batch) and gets every row back."""
    processes, out = jax.process_count(), []
    if batch_size % processes:
        raise ValueError(f"The eval batch size {batch_size} does not split over {processes} processes.")
    local = slice(jax.process_index() * batch_size // processes, (jax.process_index() + 1) * batch_size // processes)
    sharding = None if mesh is None else batch_sharding(mesh)
    for indices, batch in _batches(dataset, batch_size):
        if mesh is None:
            values = np.asarray(compute(batch))
        else:
            with mesh:
                values = compute({k: jax.make_array_from_process_local_data(sharding, v[local])
                                  for k, v in batch.items()})
            values = np.asarray(multihost_utils.process_allgather(values, tiled=True))
        out += zip(indices, values.tolist())
    return out


def make_predict_fn(model, cfg: EvalConfig, mesh=None) -> Callable:
    def predict(batch):
        return decoding.predict_batch(model, batch, beam_size=cfg.beam_size, alpha=cfg.alpha,
                                      temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed,
                                      row_ids=batch["row_ids"])

    def predict_fn(dataset, model_feature_shapes=None):
        # An example's index in the split is its sampling row id: its draws do not depend on the batch size.
        dataset = dataset.map(lambda index, features: (index, {**features, "row_ids": tf.cast(index, tf.int32)}))
        return _over_batches(predict, dataset, cfg.batch_size, mesh)

    return predict_fn


def evaluate(cfg: EvalConfig, mesh_cfg: MeshConfig | None = None) -> dict | None:
    """Metrics of every task of the mixture (or the task) that has `cfg.split` and metrics; see the module doc.
    On more than one device or process the parameters go on the `mesh_cfg` mesh (default: all devices on the data
    axis). Returns the summary on process 0, None on the others."""
    get_task_or_mixture(cfg.mixture_or_task_name)  # registers our tasks; names the known ones if unknown
    mesh = None
    if jax.device_count() > 1 or mesh_cfg is not None:
        mesh_cfg = mesh_cfg or MeshConfig()
        mesh = make_mesh(mesh_cfg)
    model, checkpoint, step = load_any(cfg.checkpoint_path, mesh=mesh, rules=mesh_cfg.rules if mesh else "t5x")
    return evaluate_model(model, step, cfg, checkpoint=str(checkpoint), mesh=mesh)


def evaluate_model(model, step: int, cfg: EvalConfig, *, checkpoint: str, mesh=None) -> dict | None:
    """`evaluate` of a model in memory (its parameters on `mesh`, or local without one); `cfg.checkpoint_path` is
    not read. Every process must call it; process 0 writes and returns the summary, the others return None."""
    get_task_or_mixture(cfg.mixture_or_task_name)
    main = jax.process_index() == 0
    output_dir = epath.Path(cfg.output_dir)
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
    # seqio's logger writes through tf.io.gfile: for gs:// into a local folder, copied up with epath at the end.
    logs = StagedDir(cfg.output_dir, download=("*-metrics.jsonl",)) if main else None  # rewritten with the new step
    evaluator = seqio.Evaluator(
        cfg.mixture_or_task_name, feature_converter=seqio.EncDecFeatureConverter(pack=False), eval_split=cfg.split,
        sequence_length=cfg.task_feature_lengths, num_examples=cfg.num_examples,
        logger_cls=[seqio.JSONLogger] if main else [], log_dir=logs.local if main else None,
        async_compute_metrics=False)
    if not evaluator.eval_tasks:
        raise ValueError(f"No task of {cfg.mixture_or_task_name!r} has a {cfg.split!r} split and metrics.")
    if scored := [task.name for task in evaluator.eval_tasks if task.score_metric_fns]:
        raise ValueError(f"{', '.join(scored)}: metrics over scores (rank classification) are not run; t5scale "
                         "evaluates by decoding, as T5 does for GLUE, SuperGLUE and SQuAD.")
    all_metrics, _ = evaluator.evaluate(compute_metrics=main, step=step, predict_fn=make_predict_fn(model, cfg, mesh))
    if not main:
        return None
    tasks = {task: {name: float(getattr(value, "value", value)) for name, value in values.items()}
             for task, values in sorted(all_metrics.result().items())}
    summary = {"checkpoint": checkpoint, "step": step, "split": cfg.split, "tasks": tasks,
               "averages": benchmark_averages(tasks)}
    logs.close()  # the predictions first: metrics.json says the evaluation is complete
    (output_dir / "metrics.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def benchmark_averages(tasks: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """T5's GLUE and SuperGLUE averages of per-task metrics, each only if all of its tasks are there."""
    def complete(entries):
        return all(tasks.get(task) for entry in entries for task in ([entry] if isinstance(entry, str) else entry))

    return {name: metrics_lib.benchmark_average(tasks, entries) for name, entries in BENCHMARKS.items()
            if complete(entries)}


def format_table(summary: dict) -> str:
    rows = [(task, name, f"{value:.2f}") for task, values in summary["tasks"].items()
            for name, value in values.items()]
    rows += [(name, "", f"{value:.2f}") for name, value in summary["averages"].items()]
    widths = [max(len(r[i]) for r in [("task", "metric", "value"), *rows]) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in [("task", "metric", "value"),
                                                                                        *rows]]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])
