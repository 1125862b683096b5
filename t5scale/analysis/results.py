"""One table of a sweep, rebuilt from its run directories alone (a dead sweep process loses nothing).

Per run (an ordinary MODEL_DIR) it reads: `config.json` (shape, lengths, batch), `train_end.json` (steps, what
ended it, training and compile seconds), `metrics.jsonl` (training loss per step), `eval.jsonl` (validation
loss, and the training seconds spent to reach it), `throughput.jsonl` (step time and tokens/s per logged window,
compile excluded; a run still going or killed has no train_end.json and takes its seconds from here),
`run_info.json` (devices, versions), `task_eval.jsonl` (task metrics every `task_eval_every` steps of a
fine-tuning run) and any eval `metrics.json` below it (downstream scores: the best per metric, with the step it
came from, as T5 and the paper report the best validation score over fine-tuning checkpoints). A step logged twice
(a resume reruns the steps after its checkpoint) counts once, with its last entry.

Quality: validation cross-entropy per target token in nats; negative log-perplexity = -loss (higher is better).
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import math
import statistics

from etils import epath

from t5scale.config import ModelConfig
from t5scale.model.flops import count_params, training_flops

COLUMNS = ("name", "shape", "EL", "DL", "DM", "KV", "NH", "FF", "params", "params_non_embedding",
           "train_flops_per_example", "flops_spent", "steps", "train_tokens", "ended_by", "step_time_s",
           "target_tokens_per_s",
           "train_seconds", "compile_seconds", "final_loss", "best_loss", "neg_log_perplexity", "device")


def read_jsonl(path: epath.Path) -> list[dict]:
    """Rows of a JSON-lines file, the last one of each step (a resume rewrites the steps after its checkpoint);
    a torn last line (a killed writer) is skipped."""
    if not path.exists():
        return []
    by_step = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        by_step[row.get("step")] = row
    return [by_step[s] for s in sorted(by_step, key=lambda s: (s is None, s))]


def _json(path: epath.Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def run_row(run_dir: epath.Path) -> dict:
    config = _json(run_dir / "config.json")
    cfg = ModelConfig.from_dict(config["model"])
    lengths = config["data"]["task_feature_lengths"]
    params = count_params(cfg)
    per_example = training_flops(cfg, lengths["inputs"], lengths["targets"]).total
    end, info = _json(run_dir / "train_end.json"), _json(run_dir / "run_info.json")
    train_rows = read_jsonl(run_dir / "metrics.jsonl")
    steps = end.get("step", train_rows[-1]["step"] if train_rows else 0)
    evals = [r for r in read_jsonl(run_dir / "eval.jsonl") if math.isfinite(r["loss"])]
    windows = read_jsonl(run_dir / "throughput.jsonl")
    timing = window_timing(windows)
    row = {
        "name": run_dir.name, "shape": cfg.name, **cfg.operators(),
        "params": params.total, "params_non_embedding": params.total - params.embedding - params.logits,
        "train_flops_per_example": per_example,
        "flops_spent": per_example * config["data"]["batch_size"] * steps, "steps": steps,
        "train_tokens": sum(r.get("tokens", 0) for r in train_rows),  # D: target tokens trained on
        "ended_by": end.get("ended_by", "running or killed"),
        "step_time_s": timing["step_time_s"], "target_tokens_per_s": timing["target_tokens_per_s"],
        "train_seconds": end.get("train_seconds", timing["train_seconds"]),
        "compile_seconds": end.get("compile_seconds", timing["compile_seconds"]),
        "final_loss": evals[-1]["loss"] if evals else None,
        "best_loss": min(r["loss"] for r in evals) if evals else None,
        "device": f"{info['device_count']} x {info['device_kind']}" if info else None,
    }
    row["neg_log_perplexity"] = -row["final_loss"] if row["final_loss"] is not None else None
    row.update(downstream_scores(run_dir))
    return row


def window_timing(windows: list[dict]) -> dict:
    """Step time (median over windows), tokens/s, and the training and compile seconds so far (the last window's)
    from `throughput.jsonl`. The first window after each start also ran the newly compiled step for the first
    time: it joins the median and tokens/s only when there is no other."""
    timed = [w for w in windows if w["steps"] > 0]
    steady = [w for w in timed if not w.get("after_start")] or timed
    if not steady:
        return {"step_time_s": None, "target_tokens_per_s": None, "train_seconds": None, "compile_seconds": None,
                "cumulative": {}}
    return {"step_time_s": statistics.median(w["seconds"] / w["steps"] for w in steady),
            "target_tokens_per_s": sum(w["target_tokens"] for w in steady) / sum(w["seconds"] for w in steady),
            "train_seconds": windows[-1].get("train_seconds"), "compile_seconds": windows[-1].get("compile_seconds"),
            "cumulative": {w["step"]: w["train_seconds"] for w in windows if "train_seconds" in w}}


def seconds_at(cumulative: dict[int, float], step: int) -> float | None:
    """Training seconds at the last logged window ending at or before `step` (an eval between windows)."""
    logged = sorted(cumulative)
    i = bisect.bisect_right(logged, step)
    return cumulative[logged[i - 1]] if i else None


def downstream_scores(run_dir: epath.Path) -> dict[str, float]:
    """`task/metric` (and benchmark averages) of every evaluation of the run, the best per column, and
    `task/metric@step`, the step of that best (the earliest on a tie). Evaluations: the rows of task_eval.jsonl (a
    fine-tuning run's periodic ones, in this run dir or one level down) and every eval metrics.json below the run."""
    summaries = []
    # At most two levels down (MODEL_DIR/finetune/eval/metrics.json); epath does not glob recursively on gs://.
    for pattern in ("task_eval.jsonl", "*/task_eval.jsonl"):
        summaries += [row for path in sorted(run_dir.glob(pattern)) for row in read_jsonl(path)]
    summaries += [json.loads(path.read_text()) for path in sorted(
        p for pattern in ("metrics.json", "*/metrics.json", "*/*/metrics.json") for p in run_dir.glob(pattern))]
    scores: dict[str, float] = {}
    for summary in sorted(summaries, key=lambda s: s.get("step", math.inf)):
        values = {f"{task}/{name}": value for task, metrics in summary.get("tasks", {}).items()
                  for name, value in metrics.items()}
        values.update(summary.get("averages", {}))
        for key, value in values.items():
            if value > scores.get(key, -math.inf):
                scores[key], scores[f"{key}@step"] = value, summary.get("step")
    return scores


def run_configs(sweep_dir: str) -> list[epath.Path]:
    """The `config.json` of every run directory under `sweep_dir`, sorted by run name; FileNotFoundError if the
    folder or its runs are missing."""
    root = epath.Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Sweep directory {root} does not exist.")
    configs = sorted(root.glob("*/config.json"))
    if not configs:
        raise FileNotFoundError(f"No runs in {root}: no */config.json (run `t5scale sweep` first).")
    return configs


def sweep_rows(sweep_dir: str) -> list[dict]:
    """A row per run directory (one with a config.json) under `sweep_dir`, sorted by name."""
    return [run_row(path.parent) for path in run_configs(sweep_dir)]


PLAN_COLUMNS = {"hbm_per_device": "plan_hbm_per_device", "fits": "plan_fits", "largest_batch": "plan_largest_batch",
                "compiler": "plan_compiler", "params_per_device": "plan_params_per_device"}


def add_plan_columns(rows: list[dict], plan_csv: str) -> list[dict]:
    """`rows` with the columns of a `t5scale plan --sweep ... --csv` file (memory per device by the TPU compiler or
    XLA's CPU estimate, fits, the largest batch) joined on the shape; a row whose shape the plan lacks gets none."""
    path = epath.Path(plan_csv)
    if not path.exists():
        raise FileNotFoundError(f"--plan {plan_csv}: no such file (write it with t5scale plan --sweep ... --csv).")
    plans = {}
    for plan in csv.DictReader(io.StringIO(path.read_text())):
        if "shape" not in plan:
            raise ValueError(f"--plan {plan_csv} has no 'shape' column: not a `t5scale plan --sweep` CSV.")
        plans[plan["shape"]] = plan
    out = []
    for row in rows:
        plan = plans.get(row["shape"], {})
        out.append({**row, **{column: _plan_value(plan.get(key)) for key, column in PLAN_COLUMNS.items()}})
    return out


def _plan_value(text: str | None):
    if text in (None, ""):
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def all_columns(rows: list[dict]) -> list[str]:
    extra = sorted({key for row in rows for key in row} - set(COLUMNS))
    return [*COLUMNS, *extra]


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=all_columns(rows), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 10**6:
        return f"{value:.3g}"
    return str(value)


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    columns = columns or ["name", "params", "train_flops_per_example", "steps", "step_time_s", "train_seconds",
                          "final_loss", "neg_log_perplexity", "ended_by",
                          *[c for c in ("plan_hbm_per_device", "plan_fits", "pareto") if c in rows[0]]]
    cells = [columns] + [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def write_results(rows: list[dict], sweep_dir: str) -> tuple[epath.Path, epath.Path]:
    root = epath.Path(sweep_dir)
    (root / "results.csv").write_text(to_csv(rows))
    (root / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    return root / "results.csv", root / "results.json"


def curves(sweep_dir: str) -> dict[str, dict[str, list[float]]]:
    """Validation loss per run against steps, training seconds (compile excluded) and training FLOPs."""
    out = {}
    for path in run_configs(sweep_dir):
        rows = [r for r in read_jsonl(path.parent / "eval.jsonl") if math.isfinite(r["loss"])]
        if not rows:
            continue
        config = json.loads(path.read_text())
        lengths = config["data"]["task_feature_lengths"]
        per_step = config["data"]["batch_size"] * training_flops(
            ModelConfig.from_dict(config["model"]), lengths["inputs"], lengths["targets"]).total
        cumulative = window_timing(read_jsonl(path.parent / "throughput.jsonl"))["cumulative"]

        out[path.parent.name] = {"step": [r["step"] for r in rows], "loss": [r["loss"] for r in rows],
                                 "train_seconds": [r.get("train_seconds", seconds_at(cumulative, r["step"]))
                                                   for r in rows],
                                 "flops": [r["step"] * per_step for r in rows]}
    return out


def time_to_loss(run_curves: dict[str, dict[str, list[float]]], target: float) -> list[dict]:
    """Per run: the first validation point at or below `target` loss (steps, seconds, FLOPs), or None."""
    rows = []
    for name, curve in sorted(run_curves.items()):
        hit = next((i for i, loss in enumerate(curve["loss"]) if loss <= target), None)
        rows.append({"name": name, "target_loss": target,
                     **{k: (curve[k][hit] if hit is not None else None) for k in ("step", "train_seconds", "flops")}})
    return rows
