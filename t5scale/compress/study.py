"""The accuracy-against-bytes study: checkpoints (model sizes) x settings -> compressed folders, their bytes on disk,
the task's metrics through `t5scale.evaluate`, one table, and the frontier over all of them.

    rows = run_study(StudyConfig(checkpoints=("runs/small/ft", "runs/base/ft"), task="glue_mnli_v002",
                                 output_dir="runs/compress", settings=(Setting(bits=8), Setting(bits=4))))

Every checkpoint is also stored as the float32 baseline (`Setting(bits=None)`, same format, same header), which is
what `bytes_ratio` divides by: the parameters alone, no optimizer state, uncompressed on both sides.
Folders: OUTPUT_DIR/<model>/<setting>/ (a compressed checkpoint, with eval/metrics.json), and OUTPUT_DIR/results.csv,
results.json, accuracy_vs_bytes.png.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from typing import Mapping

from etils import epath

from t5scale.compress.checkpoint import save_compressed, stored_bytes
from t5scale.compress.compressed import check_fits, compress_params
from t5scale.compress.settings import BASELINE, Setting
from t5scale.model.flops import count_params
from t5scale.model.layout import flat_params
from t5scale.weights.load import COMPRESSION, is_compressed, load_any

COLUMNS = ("model", "params", "setting", "bits", "sparsity", "groups", "params_bytes", "total_bytes", "bytes_ratio",
           "score", "metrics", "path")


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    checkpoints: tuple[str, ...]  # MODEL_DIRs or MODEL_DIR/checkpoint_<N>, one per model size
    task: str  # a seqio task or mixture with metrics
    output_dir: str
    settings: tuple[Setting, ...]
    split: str = "validation"
    batch_size: int = 32
    num_examples: int | None = None  # per task; None: the whole split
    task_feature_lengths: Mapping[str, int] | None = None  # None: each feature's longest example

    def __post_init__(self):
        if not self.checkpoints:
            raise ValueError("Name at least one checkpoint to compress.")
        for path in self.checkpoints:
            if is_compressed(path):
                source = json.loads((epath.Path(path) / COMPRESSION).read_text()).get("source")
                raise ValueError(f"{path} is already a compressed checkpoint; compress its source, {source}, "
                                 "instead (compressing twice would quantize quantized weights).")


def run_study(cfg: StudyConfig) -> list[dict]:
    """One row per (checkpoint, setting), the float32 baseline first for each; also written as results.csv/json."""
    from t5scale.evaluate import EvalConfig, evaluate

    rows, labels = [], set()
    for path in cfg.checkpoints:
        model, checkpoint, step = load_any(path)
        label = _unique(model.cfg.name or checkpoint.parent.name, labels)
        flat = flat_params(model)
        settings = tuple(dict.fromkeys((BASELINE, *cfg.settings)))  # each once, the baseline first
        for setting in settings:
            check_fits({name: value.shape for name, value in flat.items()}, setting)
        baseline_bytes = None
        for setting in settings:
            folder = epath.Path(cfg.output_dir) / label / setting.name
            save_compressed(str(folder), model.cfg, *compress_params(flat, setting), setting, str(checkpoint), step)
            sizes = stored_bytes(str(folder))
            baseline_bytes = baseline_bytes or sizes["params"]
            summary = evaluate(EvalConfig(
                checkpoint_path=str(folder), mixture_or_task_name=cfg.task, output_dir=str(folder / "eval"),
                split=cfg.split, batch_size=cfg.batch_size, num_examples=cfg.num_examples,
                task_feature_lengths=cfg.task_feature_lengths))
            rows.append({"model": label, "params": count_params(model.cfg).total, "setting": setting.name,
                         "bits": setting.bits or 32, "sparsity": setting.sparsity, "groups": "+".join(setting.groups),
                         "params_bytes": sizes["params"], "total_bytes": sizes["total"],
                         "bytes_ratio": sizes["params"] / baseline_bytes, "score": score(summary["tasks"]),
                         "metrics": summary["tasks"], "path": str(folder)})
    write_results(rows, cfg.output_dir)
    return rows


def _unique(label: str, taken: set[str]) -> str:
    candidate, n = label, 1
    while candidate in taken:
        n += 1
        candidate = f"{label}-{n}"
    taken.add(candidate)
    return candidate


def score(tasks: Mapping[str, Mapping[str, float]]) -> float:
    """The mean within each task's metrics, then across tasks (T5's averaging)."""
    means = [sum(values.values()) / len(values) for values in tasks.values() if values]
    return sum(means) / len(means)


def frontier(rows: list[dict], cost: str = "params_bytes", quality: str = "score") -> list[dict]:
    """Rows no other row beats: none at most as costly and strictly better, or strictly cheaper and at least as
    good. Duplicates (same cost and quality) are all kept. Sorted by cost."""
    def beaten(r):
        return any((o[cost] <= r[cost] and o[quality] > r[quality]) or (o[cost] < r[cost] and o[quality] >= r[quality])
                   for o in rows)

    return sorted((r for r in rows if not beaten(r)), key=lambda r: (r[cost], -r[quality]))


def write_results(rows: list[dict], output_dir: str) -> None:
    out = epath.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows({**row, "metrics": json.dumps(row["metrics"], sort_keys=True)} for row in rows)
    (out / "results.csv").write_text(buffer.getvalue())


def format_table(rows: list[dict]) -> str:
    on_frontier = {id(r) for r in frontier(rows)}
    headers = ("model", "setting", "params bytes", "of float32", "score", "frontier")
    cells = [headers] + [(r["model"], r["setting"], f"{r['params_bytes']:,}", f"{100 * r['bytes_ratio']:.1f}%",
                          f"{r['score']:.2f}", "*" if id(r) in on_frontier else "") for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])
