"""Evaluate a checkpoint on seqio tasks with their own postprocessors and metrics (T5's protocol).

    summary = evaluate(EvalConfig(checkpoint_path="runs/glue/checkpoint_1000",
                                  mixture_or_task_name="glue_v002_proportional", output_dir="runs/glue/eval"))

seqio.Evaluator reads each task's evaluation split, our model decodes (greedy, or beam search with T5's brevity
penalty) or scores targets (for rank-based metrics), and the task's postprocessor and metric functions do the rest.
Writes `output_dir/metrics.json` (per-task metrics, GLUE and SuperGLUE averages) and seqio's per-task
`<task>-<step, 6 digits>.jsonl` predictions; `format_table` prints the summary. Runs in one process. A compressed
checkpoint (t5scale.compress) evaluates the same way, its weights dequantized to float32, under its source's step.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable, Iterator, Mapping

import numpy as np
import seqio
from etils import epath

from t5scale.compress.checkpoint import load_any
from t5scale.data import metrics as metrics_lib
from t5scale.data.tasks import get_task_or_mixture
from t5scale.model import decoding
from t5scale.staging import StagedDir

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

    def __post_init__(self):
        if self.batch_size < 1 or self.beam_size < 1:
            raise ValueError("EvalConfig: batch_size and beam_size must be positive.")


def _batches(dataset, batch_size: int) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
    """(indices, features) in batches of exactly `batch_size` rows; the last one padded with zero rows."""
    rows = list(dataset.as_numpy_iterator())
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        indices = [int(index) for index, _ in chunk]
        features = {k: np.stack([f[k] for _, f in chunk]) for k in chunk[0][1]}
        pad = batch_size - len(chunk)
        yield indices, {k: np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)) for k, v in features.items()}


def make_predict_fn(model, cfg: EvalConfig) -> Callable:
    def predict_fn(dataset, model_feature_shapes=None):
        return [(index, row) for indices, batch in _batches(dataset, cfg.batch_size)
                for index, row in zip(indices, np.asarray(decoding.predict_batch(
                    model, batch, beam_size=cfg.beam_size, alpha=cfg.alpha)).tolist())]

    return predict_fn


def make_score_fn(model, cfg: EvalConfig) -> Callable:
    def score_fn(dataset, model_feature_shapes=None):
        return [(index, value) for indices, batch in _batches(dataset, cfg.batch_size)
                for index, value in zip(indices, np.asarray(decoding.score_batch(model, batch)).tolist())]

    return score_fn


def evaluate(cfg: EvalConfig) -> dict:
    """Metrics of every task of the mixture (or the task) that has `cfg.split` and metrics; see the module doc."""
    get_task_or_mixture(cfg.mixture_or_task_name)  # registers our tasks; names the known ones if unknown
    model, checkpoint, step = load_any(cfg.checkpoint_path)
    output_dir = epath.Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # seqio's logger writes through tf.io.gfile: for gs:// into a local folder, copied up with epath at the end.
    logs = StagedDir(cfg.output_dir, download=("*-metrics.jsonl",))  # it rewrites these with the new step added
    evaluator = seqio.Evaluator(
        cfg.mixture_or_task_name, feature_converter=seqio.EncDecFeatureConverter(pack=False), eval_split=cfg.split,
        sequence_length=cfg.task_feature_lengths, num_examples=cfg.num_examples, logger_cls=[seqio.JSONLogger],
        log_dir=logs.local, async_compute_metrics=False)
    if not evaluator.eval_tasks:
        raise ValueError(f"No task of {cfg.mixture_or_task_name!r} has a {cfg.split!r} split and metrics.")
    all_metrics, _ = evaluator.evaluate(compute_metrics=True, step=step, predict_fn=make_predict_fn(model, cfg),
                                        score_fn=make_score_fn(model, cfg))
    tasks = {task: {name: float(getattr(value, "value", value)) for name, value in values.items()}
             for task, values in sorted(all_metrics.result().items())}
    summary = {"checkpoint": str(checkpoint), "step": step, "split": cfg.split, "tasks": tasks,
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
