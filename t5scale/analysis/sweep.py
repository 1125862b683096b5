"""A sweep: shapes x budgets x seeds, each an ordinary MODEL_DIR under SWEEP_DIR, named so nothing collides.

    plan = plan_runs(SweepConfig("runs/sweep", shapes=("tiny",), grids=({"base": "tiny", "NL": [2, 4], "DM": [128]},),
                                 budgets=({"train_steps": 200},), seeds=(0, 1)))

Shapes come from names and from grids over operators on a base shape (the full product, or the operator lists
zipped); `param_match` keeps only shapes whose non-embedding parameter count (independent of the task's vocabulary)
is within that fraction of the median, for
"deep-narrow vs wide at similar params". With `finetune_gin_files`, each pretrained run is then fine-tuned into
MODEL_DIR/finetune (downstream quality as the paper measures it: with `train_config.task_eval_every` among the
fine-tuning bindings, the results table takes the best validation score per task and its step). A run's status is
read back from the `train_end.json` of its MODEL_DIR (and of its fine-tuning).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import statistics
from typing import Mapping, Sequence

from etils import epath

from t5scale import config as config_lib
from t5scale.model.flops import count_params

BUDGET_KEYS = {"train_steps": "steps", "flop_budget": "flops", "time_budget_s": "time"}  # -> run-name tag
BUDGET_ENDINGS = {"train_steps", "flop_budget", "time_budget"}  # train_end.json's ended_by of a finished run


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    sweep_dir: str  # every run's MODEL_DIR is a folder in it
    shapes: Sequence[str] = ()  # names, e.g. "small-el16", "tiny-nl2-dm128"
    grids: Sequence[Mapping] = ()  # {"base": "tiny", "NL": [2, 4], "DM": [128, 256], "zip": False}
    param_match: float | None = None  # keep shapes within this fraction of the median non-embedding params
    budgets: Sequence[Mapping] = ({"train_steps": 1000},)  # each: train_steps and/or flop_budget, time_budget_s
    seeds: Sequence[int] = (0,)
    run_gin_files: Sequence[str] = ("runs/pretrain.gin",)  # the run every shape gets
    bindings: Sequence[str] = ()  # more gin bindings for every run, e.g. "BATCH_SIZE=16"
    finetune_gin_files: Sequence[str] = ()  # e.g. ("runs/finetune.gin",): then fine-tune every pretrained run
    finetune_bindings: Sequence[str] = ()  # e.g. "MIXTURE_OR_TASK_NAME='glue_v002_proportional'"

    def __post_init__(self):
        if not self.shapes and not self.grids:
            raise ValueError("SweepConfig: give shapes (names) and/or grids (a base shape and operator lists).")
        if not self.budgets or not self.seeds:
            raise ValueError("SweepConfig: budgets and seeds must not be empty.")
        for budget in self.budgets:
            unknown = set(budget) - set(BUDGET_KEYS)
            if unknown or not budget:
                raise ValueError(f"SweepConfig: budget {dict(budget)} must set some of {sorted(BUDGET_KEYS)}; "
                                 f"unknown: {sorted(unknown)}.")
        for grid in self.grids:
            operators = set(grid) - {"base", "zip"}
            unknown = operators - {*config_lib.OPERATORS, "NL"}
            if "base" not in grid or unknown or not operators:
                raise ValueError(f"SweepConfig: grid {dict(grid)} needs a 'base' shape and operator lists among "
                                 f"{sorted({*config_lib.OPERATORS, 'NL'})}; unknown: {sorted(unknown)}.")
        if self.param_match is not None and not 0 < self.param_match:
            raise ValueError(f"SweepConfig.param_match must be positive, got {self.param_match}.")


@dataclasses.dataclass(frozen=True)
class Run:
    index: int
    name: str  # the MODEL_DIR's folder name: shape, budget, seed
    shape: str
    budget: Mapping
    seed: int
    model_dir: str


def expand_shapes(cfg: SweepConfig) -> list[str]:
    """Every shape name of the sweep, in order, without duplicates; validated by resolving each one."""
    names = list(cfg.shapes)
    for grid in cfg.grids:
        operators = {k: list(v) for k, v in grid.items() if k not in ("base", "zip")}
        if grid.get("zip"):
            lengths = {len(v) for v in operators.values()}
            if len(lengths) != 1:
                raise ValueError(f"SweepConfig: zipped grid {dict(grid)} needs operator lists of one length.")
            points = [dict(zip(operators, values)) for values in zip(*operators.values())]
        else:
            points = [dict(zip(operators, values)) for values in itertools.product(*operators.values())]
        names += [config_lib.shape(grid["base"], **point).name for point in points]
    names = list(dict.fromkeys(config_lib.shape(name).name for name in names))
    if cfg.param_match is not None:
        counts = {name: count_params(config_lib.shape(name)) for name in names}
        params = {name: c.total - c.embedding - c.logits for name, c in counts.items()}  # vocab-independent
        median = statistics.median(params.values())
        names = [name for name in names if abs(params[name] - median) <= cfg.param_match * median]
    return names


def budget_tag(budget: Mapping) -> str:
    return "-".join(f"{BUDGET_KEYS[k]}{budget[k]:g}" for k in BUDGET_KEYS if k in budget)


def plan_runs(cfg: SweepConfig) -> list[Run]:
    runs = []
    for shape, budget, seed in itertools.product(expand_shapes(cfg), cfg.budgets, cfg.seeds):
        name = f"{shape}-{budget_tag(budget)}-seed{seed}"
        runs.append(Run(len(runs), name, shape, dict(budget), seed, str(epath.Path(cfg.sweep_dir) / name)))
    return runs


def run_status(model_dir: str) -> str:
    """"new" (nothing there), "finished" (ended by its budget), "diverged" (NaN loss: not retried), or
    "interrupted" (checkpoints or a SIGTERM stop: rerunning resumes it)."""
    path = epath.Path(model_dir)
    end = path / "train_end.json"
    if end.exists():
        ended_by = json.loads(end.read_text()).get("ended_by")
        if ended_by in BUDGET_ENDINGS:
            return "finished"
        if ended_by == "nan":
            return "diverged"
    return "interrupted" if path.exists() and any(path.iterdir()) else "new"


def finetune_dir(run: Run) -> str:
    return str(epath.Path(run.model_dir) / "finetune")


def sweep_status(cfg: SweepConfig, run: Run) -> str:
    """`run_status` of the whole run: pretraining, then its fine-tuning when the sweep has one."""
    status = run_status(run.model_dir)
    if status != "finished" or not cfg.finetune_gin_files:
        return status
    status = run_status(finetune_dir(run))
    return "interrupted" if status == "new" else status


def finetune_argv(cfg: SweepConfig, run: Run) -> list[str]:
    """The `t5scale finetune` arguments of one run: from its newest pretraining checkpoint into MODEL_DIR/finetune."""
    return ["finetune", *[f"--gin_file={f}" for f in cfg.finetune_gin_files],
            f"--gin.INITIAL_CHECKPOINT_PATH='{run.model_dir}'", f"--gin.MODEL_DIR='{finetune_dir(run)}'",
            f"--gin.train_config.seed={run.seed}", *[f"--gin.{b}" for b in cfg.finetune_bindings]]


def train_argv(cfg: SweepConfig, run: Run) -> list[str]:
    """The `t5scale train` arguments of one run: the sweep's run gin, then its shape, MODEL_DIR, budget, seed."""
    budget = {"train_steps": "TRAIN_STEPS", "flop_budget": "train_config.flop_budget",
              "time_budget_s": "train_config.time_budget_s"}
    return ["train", "--gin_file=models/shape.gin", *[f"--gin_file={f}" for f in cfg.run_gin_files],
            f"--gin.MODEL_SHAPE='{run.shape}'", f"--gin.MODEL_DIR='{run.model_dir}'",
            *[f"--gin.{budget[k]}={v}" for k, v in run.budget.items()], f"--gin.train_config.seed={run.seed}",
            *[f"--gin.{b}" for b in cfg.bindings]]
