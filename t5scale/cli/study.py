"""Scaling studies: `t5scale sweep` runs a sweep gin file's runs (each an ordinary `t5scale train` in its own
process); `results`, `pareto`, `curves` and `fit` read the run directories back.

    t5scale sweep --gin_file=sweeps/study.gin [--list | --run_index=N]
    t5scale results SWEEP_DIR
    t5scale pareto SWEEP_DIR --cost params,flops --quality neg_log_perplexity
    t5scale curves SWEEP_DIR [--target_loss 5.0]
    t5scale fit SWEEP_DIR [--x params] [--extrapolate 1e9]
"""

from __future__ import annotations

import json
import pathlib
import shlex
import subprocess
import sys
import time

from etils import epath

import gin
from t5scale.analysis import fit as fit_lib
from t5scale.analysis import pareto as pareto_lib
from t5scale.analysis import plots, results
from t5scale.analysis.sweep import (
    SweepConfig,
    finetune_argv,
    finetune_dir,
    plan_runs,
    run_status,
    sweep_status,
    train_argv,
)
from t5scale.cli import common

DIVERGED_EXIT = 3  # `t5scale train`'s exit code for a NaN loss


def _sweep_arguments(parser) -> None:
    parser.add_argument("--list", action="store_true", help="print one command per run (for clusters) and exit")
    parser.add_argument("--run_index", type=int, help="run only run N (a SLURM array task, one TPU slice)")


def _sweep_config() -> SweepConfig:
    common.configurable(SweepConfig, "sweep_config")
    return common.call_configurable("sweep_config")


@common.command("sweep", "train every run of a sweep gin file, skipping finished ones "
                "(--gin_file=sweeps/study.gin)", _sweep_arguments)
def sweep(args, gin_files, bindings) -> list[dict]:
    if not gin_files:
        raise common.UsageError("sweep needs --gin_file=... (e.g. sweeps/study.gin).")
    common.configurable(SweepConfig, "sweep_config")
    common.parse_gin(gin_files, bindings)
    cfg = common.call_configurable("sweep_config")
    runs = plan_runs(cfg)
    if args.list:
        own = [f"--gin_file={f}" for f in gin_files] + [f"--gin.{b}" for b in bindings]
        for run in runs:
            print(shlex.join(["t5scale", "sweep", *own, f"--run_index={run.index}"]))
        return []
    if args.run_index is not None and not 0 <= args.run_index < len(runs):
        raise common.UsageError(f"--run_index={args.run_index}: the sweep has runs 0..{len(runs) - 1}.")
    _write_plan(cfg, runs)
    chosen = runs if args.run_index is None else [runs[args.run_index]]
    outcomes = _run_all(cfg, chosen, len(runs))
    failed = [name for name, outcome in outcomes.items() if outcome == "failed"]
    if args.run_index is None:
        rows = results.sweep_rows(cfg.sweep_dir)
        results.write_results(rows, cfg.sweep_dir)
        print(results.format_table(rows))
        print(f"results: {cfg.sweep_dir}/results.csv, results.json")
    if failed:
        raise common.CommandFailed(f"{len(failed)} run(s) failed: {', '.join(failed)} (their logs are in "
                                   f"{cfg.sweep_dir}/<run>/train.log); rerun the same command to retry them.")
    return [{"name": name, "outcome": outcome} for name, outcome in outcomes.items()]


def _write_plan(cfg: SweepConfig, runs) -> None:
    root = epath.Path(cfg.sweep_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.gin").write_text(gin.config_str())
    (root / "sweep.json").write_text(json.dumps({"runs": [run.__dict__ for run in runs]}, indent=1) + "\n")


def _run_all(cfg: SweepConfig, runs, total: int) -> dict[str, str]:
    """Run each unfinished run in its own process, one after another, with a progress line each."""
    outcomes, spent, started = {}, [], time.monotonic()
    todo = [run for run in runs if sweep_status(cfg, run) in ("new", "interrupted")]
    for run in runs:
        status = sweep_status(cfg, run)
        prefix = f"[{run.index + 1}/{total}] {run.name}"
        if status in ("finished", "diverged"):
            print(f"{prefix}: {status} earlier, skipped")
            outcomes[run.name] = status
            continue
        left = len(todo) - len(spent)
        eta = f", ETA {sum(spent) / len(spent) * left / 60:.1f} min for {left} run(s)" if spent else ""
        print(f"{prefix}: {'resuming' if status == 'interrupted' else 'training'} {run.shape}, budget "
              f"{run.budget}, seed {run.seed}{eta}", flush=True)
        tic = time.monotonic()
        outcomes[run.name] = _train(cfg, run)
        spent.append(time.monotonic() - tic)
        print(f"{prefix}: {outcomes[run.name]} in {spent[-1]:.0f} s", flush=True)
    counts = {o: list(outcomes.values()).count(o) for o in sorted(set(outcomes.values()))}
    print(f"sweep: {len(outcomes)} run(s) in {time.monotonic() - started:.0f} s: {counts}")
    return outcomes


def _train(cfg: SweepConfig, run) -> str:
    """One run as `python -m t5scale train ...`, then (when the sweep fine-tunes) `python -m t5scale finetune ...`,
    each in its own process, skipping a stage that finished before."""
    stages = [(run.model_dir, train_argv(cfg, run))]
    if cfg.finetune_gin_files:
        stages.append((finetune_dir(run), finetune_argv(cfg, run)))
    for model_dir, argv in stages:
        if run_status(model_dir) == "finished":
            continue
        code = _run_process([sys.executable, "-m", "t5scale", *argv], model_dir)
        if code != 0:
            return "diverged" if code == DIVERGED_EXIT else "failed"
    return sweep_status(cfg, run)


def _run_process(argv: list[str], model_dir: str) -> int:
    """Its output goes to MODEL_DIR/train.log (to the console when MODEL_DIR is on gs://, where a file cannot be
    appended to)."""
    if "://" in model_dir:
        return subprocess.run(argv).returncode
    pathlib.Path(model_dir).mkdir(parents=True, exist_ok=True)
    with (pathlib.Path(model_dir) / "train.log").open("a") as log:
        return subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT).returncode


def _sweep_dir_argument(parser) -> None:
    parser.add_argument("sweep_dir", help="the sweep's SWEEP_DIR (a folder of MODEL_DIRs)")


def _results_arguments(parser) -> None:
    _sweep_dir_argument(parser)
    parser.add_argument("--plan", help="a `t5scale plan --sweep ... --csv` file: add its memory per device, fits and "
                        "largest batch, by shape (plan_* columns)")


def _rows(args) -> list[dict]:
    rows = results.sweep_rows(args.sweep_dir)
    return results.add_plan_columns(rows, args.plan) if args.plan else rows


@common.command("results", "one table of a sweep's runs, rebuilt from their directories", _results_arguments)
def results_command(args, gin_files, bindings) -> list[dict]:
    rows = _rows(args)
    csv_path, json_path = results.write_results(rows, args.sweep_dir)
    print(results.format_table(rows))
    print(f"results: {csv_path}, {json_path}")
    return rows


def _pareto_arguments(parser) -> None:
    _results_arguments(parser)
    parser.add_argument("--cost", default="params,flops",
                        help=f"comma-separated cost axes among {', '.join(sorted(pareto_lib.COSTS))}")
    parser.add_argument("--quality", default="neg_log_perplexity",
                        help="a results column, higher is better (neg_log_perplexity, or a downstream metric)")


@common.command("pareto", "Pareto frontiers of a sweep: marked table and a PNG", _pareto_arguments)
def pareto(args, gin_files, bindings) -> list[dict]:
    costs = [c.strip() for c in args.cost.split(",") if c.strip()]
    rows = _rows(args)
    for cost in costs:
        marked = pareto_lib.mark_frontier(rows, cost, args.quality)
        print(f"\nfrontier of {pareto_lib.cost_column(cost)} vs {args.quality}:")
        print(results.format_table(marked, ["name", pareto_lib.cost_column(cost), args.quality, "pareto"]))
    path = plots.pareto_png(rows, costs, args.quality, f"{args.sweep_dir}/pareto-{'-'.join(costs)}.png")
    print(f"figure: {path}")
    return pareto_lib.mark_frontier(rows, costs[0], args.quality)


def _curves_arguments(parser) -> None:
    _sweep_dir_argument(parser)
    parser.add_argument("--target_loss", type=float, help="also print the steps / seconds / FLOPs to reach it")


@common.command("curves", "validation loss vs steps, wall-clock and FLOPs per run (a PNG)", _curves_arguments)
def curves(args, gin_files, bindings) -> dict:
    run_curves = results.curves(args.sweep_dir)
    if not run_curves:
        raise common.UsageError(f"no run in {args.sweep_dir} has validation losses (eval.jsonl); set "
                                "train_config.eval_every in the run's gin.")
    print(f"figure: {plots.curves_png(run_curves, f'{args.sweep_dir}/curves.png')}")
    if args.target_loss is not None:
        rows = results.time_to_loss(run_curves, args.target_loss)
        print(results.format_table(rows, ["name", "target_loss", "step", "train_seconds", "flops"]))
    return run_curves


def _fit_arguments(parser) -> None:
    _sweep_dir_argument(parser)
    parser.add_argument("--x", default="params", choices=("params", "params_non_embedding"), help="N")
    parser.add_argument("--with_data", action="store_true", help="fit L(N, D), D = training tokens")
    parser.add_argument("--extrapolate", type=float, help="predict the loss at this N, with its interval")
    parser.add_argument("--bootstrap", type=int, default=200, help="resamples for the intervals")


@common.command("fit", "scaling-law fit L(N) or L(N, D) over a sweep's final validation losses", _fit_arguments)
def fit(args, gin_files, bindings) -> dict:
    rows = [r for r in results.sweep_rows(args.sweep_dir) if r["final_loss"] is not None]
    n = [r[args.x] for r in rows]
    loss = [r["final_loss"] for r in rows]
    d = [r["train_tokens"] for r in rows] if args.with_data else None
    result = fit_lib.fit_scaling_law(n, loss, d, bootstrap=args.bootstrap)
    names = ("E", "A", "alpha", *(("B", "beta") if args.with_data else ()))
    for name in names:
        low, high = result.intervals.get(name, (float("nan"), float("nan")))
        print(f"{name:>5} = {getattr(result, name):.4g}  (95% bootstrap interval {low:.4g} .. {high:.4g})")
    summary = {"n_points": result.n_points, **{k: getattr(result, k) for k in names},
               "intervals": result.intervals}
    if args.extrapolate and not args.with_data:
        value, interval = result.extrapolate(args.extrapolate)
        print(f"L({args.extrapolate:.3g}) = {value:.4g}  (interval {interval[0]:.4g} .. {interval[1]:.4g})")
        summary["extrapolated"] = {"n": args.extrapolate, "loss": value, "interval": interval}
    if not args.with_data:
        figure = plots.fit_png(n, loss, result, f"{args.sweep_dir}/fit.png", x_label=plots.LABELS[args.x],
                               extrapolate_to=args.extrapolate)
        print(f"figure: {figure}")
    (epath.Path(args.sweep_dir) / "fit.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
