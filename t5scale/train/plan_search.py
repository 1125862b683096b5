"""What fits a slice, searched: the largest global batch for each setting (rules, remat, model split) of a shape.

    with PlanWorker(tpu=True) as worker:
        rows = search(PlanCache(worker), request, hbm, progress=print)

A batch is probed by compiling the step for it (t5scale.train.plan): doubling from one sequence per data shard
until a batch does not fit, then bisecting between the last that did and the first that did not, in whole data
shards, so a setting costs about 2 log2(batch) compiles. Every compile is cached on disk under
`$T5SCALE_CACHE/plans/`, keyed by the request, the compiler and the versions of jax and libtpu, so a search that is
run again (or widened) compiles only what it has not seen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from importlib import metadata
from typing import Callable

from t5scale import cache
from t5scale.config import Remat
from t5scale.sharding import RULE_SETS
from t5scale.train.plan import Hbm, PlanRequest, PlanWorker, fits

MODEL_SPLITS = (1, 2, 4, 8)
MAX_BATCH_PER_SHARD = 1024  # a search stops doubling here


def _versions() -> str:
    found = []
    for package in ("jax", "jaxlib", "libtpu"):
        try:
            found.append(f"{package}={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return ",".join(found)


class PlanCache:
    """`plan(request)` through a planning process, each result kept on disk (errors other than libtpu's
    out-of-HBM verdict are not kept: they may be fixed by the next version)."""

    def __init__(self, worker: PlanWorker):
        self.worker = worker
        self.folder = cache.cache_dir() / "plans"
        self.compiles = 0

    def _path(self, request: PlanRequest):
        key = json.dumps({"request": request.to_json(), "versions": _versions(), "tpu": self.worker.tpu},
                         sort_keys=True)
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"

    def plan(self, request: PlanRequest) -> dict:
        path = self._path(request)
        if path.exists():
            return {**json.loads(path.read_text()), "cached": True}
        result = self.worker.plan(request)
        self.compiles += 1
        if "error" not in result:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(result))
            tmp.replace(path)
        return result


@dataclasses.dataclass
class SearchRow:
    rules: str
    remat: str
    model: int
    largest_batch: int  # 0: not even one sequence per data shard fits
    plan: dict | None  # the plan at largest_batch
    compiles: int
    error: str | None = None


def settings(request: PlanRequest, only: dict | None = None) -> list[tuple[str, str, int]]:
    """(rules, remat, model split) worth trying: model splits that divide the devices and the heads; `only` fixes
    any of "rules", "remat", "model" (None: all)."""
    only = only or {}
    cfg = request.model_cfg
    splits = [m for m in MODEL_SPLITS if request.devices % m == 0 and cfg.num_heads % m == 0
              and request.devices // m >= request.num_slices]
    return [(rules, remat.value, model) for rules in RULE_SETS for remat in Remat for model in splits
            if only.get("rules") in (None, rules) and only.get("remat") in (None, remat.value)
            and only.get("model") in (None, model)]


def with_setting(request: PlanRequest, rules: str, remat: str, model: int) -> PlanRequest:
    """`request` with another setting, at the smallest batch its data axis splits (one sequence per shard)."""
    data = request.devices // model
    mesh = dataclasses.replace(request.mesh_cfg, rules=rules, model=model, data=data)
    return dataclasses.replace(request, model_cfg=request.model_cfg.replace(remat=remat), mesh_cfg=mesh,
                               batch_size=data * request.microbatches)


def largest_batch(plan: Callable[[PlanRequest], dict], request: PlanRequest, hbm: Hbm,
                  progress: Callable[[str], None] = lambda line: None) -> tuple[int, dict | None, int]:
    """(largest global batch that fits, its plan, compiles): doubling, then bisection, in whole data shards."""
    shard = request.mesh_cfg.data * request.microbatches
    compiles, best, best_plan = 0, 0, None

    def probe(shards: int) -> bool:
        nonlocal compiles
        result = plan(dataclasses.replace(request, batch_size=shards * shard))
        compiles += 0 if result.get("cached") else 1
        if "error" in result:
            raise RuntimeError(result["error"])
        ok = fits(result, hbm)
        took = " (cached)" if result.get("cached") else f", {result['compile_seconds']:.0f} s"
        progress(f"  batch {shards * shard:>6}: {_verdict(result, hbm)}{took}")
        if ok:
            nonlocal best, best_plan
            best, best_plan = shards * shard, result
        return ok

    low, high = 0, None  # low shards fit (0 trivially); high shards do not
    shards = 1
    while shards <= MAX_BATCH_PER_SHARD:
        if not probe(shards):
            high = shards
            break
        low, shards = shards, shards * 2
    while high is not None and high - low > 1:
        middle = (low + high) // 2
        if probe(middle):
            low = middle
        else:
            high = middle
    return best, best_plan, compiles


def _verdict(plan: dict, hbm: Hbm) -> str:
    if "out_of_memory" in plan:
        return "does not fit (libtpu: out of HBM)"
    total = plan["bytes_per_device"]["total_estimate"]
    return f"{'fits' if total <= hbm.bytes else 'does not fit'} ({total / 2**30:.2f} GiB, {total / hbm.bytes:.0%})"


def search(plan: Callable[[PlanRequest], dict], request: PlanRequest, hbm: Hbm,
           progress: Callable[[str], None] = lambda line: None, only: dict | None = None) -> list[SearchRow]:
    rows = []
    for rules, remat, model in settings(request, only):
        progress(f"{request.model_cfg.name}: rules {rules}, remat {remat}, model={model}")
        try:
            batch, best, compiles = largest_batch(plan, with_setting(request, rules, remat, model), hbm, progress)
            rows.append(SearchRow(rules, remat, model, batch, best, compiles))
        except (RuntimeError, ValueError) as error:
            rows.append(SearchRow(rules, remat, model, 0, None, 0, str(error)))
    return rows


_REMAT_COST = {Remat.NONE.value: 0, Remat.DOTS.value: 1, Remat.FULL.value: 2}


def recommend(rows: list[SearchRow], batch: int) -> tuple[SearchRow | None, str]:
    """The setting to train `batch` with: among those it fits, the least recomputation (remat none < dots < full),
    then the smallest model split (fewest collectives per layer), then t5x rules over fsdp (no parameter gathers);
    when none fits `batch`, the one that fits the largest batch."""
    fitting = [row for row in rows if row.largest_batch >= batch]
    if fitting:
        best = min(fitting, key=lambda r: (_REMAT_COST[r.remat], r.model, r.rules != "t5x"))
        return best, f"fits batch {batch} with the least recomputation, then the fewest model shards"
    candidates = [row for row in rows if row.largest_batch > 0]
    if not candidates:
        return None, "no setting fits even one sequence per data shard"
    best = max(candidates, key=lambda r: (r.largest_batch, -_REMAT_COST[r.remat], -r.model))
    return best, f"nothing fits batch {batch}; this fits the largest ({best.largest_batch})"
