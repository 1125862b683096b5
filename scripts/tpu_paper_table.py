"""The Scale Efficiently shapes at T5's batch, planned by libtpu's compiler on one slice per TPU generation, next to
XLA's CPU estimate for the same step: docs/tables/tpu_paper_shapes.csv (docs/performance.md shows it).

    .venv/bin/python scripts/tpu_paper_table.py [--out docs/tables/tpu_paper_shapes.csv] [--cpu-on v4-32]

Every compile is cached under $T5SCALE_CACHE/plans, so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import time

from t5scale import config as config_lib
from t5scale.train.partitioning import MeshConfig
from t5scale.train.plan import Hbm, PlanRequest, PlanWorker, fits
from t5scale.train.plan_search import PlanCache
from t5scale.train.slices import parse_slice

SHAPES = ("small", "base", "large", "xl", "small-nl16", "base-nl36", "large-nl32")
SLICES = ("v4-32", "v3-32", "v5litepod-32")  # the paper's v3, then v4 and v5e, at 32 cores or chips
BATCH, LENGTHS = 128, (512, 114)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/tables/tpu_paper_shapes.csv")
    parser.add_argument("--cpu-on", default="v4-32", help="slices (comma-separated) to also plan on fake CPU "
                        "devices, for XLA's CPU estimate beside libtpu's numbers (default v4-32; '' for none)")
    args = parser.parse_args()
    rows = []
    started = time.perf_counter()
    with PlanWorker(tpu=True) as tpu_worker, PlanWorker(cpu_devices=32) as cpu_worker:
        tpu_plans, cpu_plans = PlanCache(tpu_worker), PlanCache(cpu_worker)
        for name in SLICES:
            tpu = parse_slice(name)
            hbm = Hbm(tpu.generation.hbm_per_device, name)
            for shape in SHAPES:
                cfg = config_lib.shape(shape, dtype="bfloat16")
                request = PlanRequest(cfg, MeshConfig(), BATCH, *LENGTHS, topology=name)
                print(f"{name} {shape}: libtpu ...", flush=True)
                plan = tpu_plans.plan(request)
                cpu = None
                if name in args.cpu_on.split(","):
                    print(f"{name} {shape}: XLA CPU, {tpu.devices} fake devices ...", flush=True)
                    cpu = cpu_plans.plan(PlanRequest(cfg, MeshConfig(data=tpu.devices), BATCH, *LENGTHS))
                rows.append(row(name, tpu, shape, plan, cpu, hbm))
                print(rows[-1], flush=True)
                write(args.out, rows)
    print(f"{len(rows)} plans in {time.perf_counter() - started:.0f} s -> {args.out}")


def row(name, tpu, shape, plan, cpu, hbm) -> dict:
    gib = lambda n: None if n is None else round(n / 2**30, 3)  # noqa: E731
    b = plan.get("bytes_per_device", {})
    traffic = plan.get("collectives", {})
    return {
        "slice": name, "topology": tpu.topology, "devices": tpu.devices, "hosts": tpu.hosts, "shape": shape,
        "params_M": round(plan.get("params", 0) / 1e6, 1), "hbm_gib": gib(hbm.bytes),
        "fits": None if "error" in plan else fits(plan, hbm),
        "params_gib": gib(b.get("params")), "opt_state_gib": gib(b.get("opt_state")),
        "tpu_temporaries_gib": gib(b.get("temporaries_estimate")) if "out_of_memory" not in plan else None,
        "tpu_total_gib": gib(b.get("total_estimate")) if "out_of_memory" not in plan else None,
        "tpu_out_of_memory": plan.get("out_of_memory", ""),
        "all_reduce": traffic.get("all-reduce", {}).get("count"),
        "all_reduce_sent_gib": gib(traffic.get("all-reduce", {}).get("sent_bytes")),
        "all_gather": traffic.get("all-gather", {}).get("count"),
        "reduce_scatter": traffic.get("reduce-scatter", {}).get("count"),
        "tpu_compile_s": round(plan.get("compile_seconds", 0), 1),
        "cpu_temporaries_gib": gib(cpu["bytes_per_device"]["temporaries_estimate"]) if cpu and "error" not in cpu
        else None,
        "cpu_total_gib": gib(cpu["bytes_per_device"]["total_estimate"]) if cpu and "error" not in cpu else None,
        "cpu_compile_s": round(cpu["compile_seconds"], 1) if cpu and "error" not in cpu else None,
        "error": plan.get("error", "") or (cpu or {}).get("error", ""),
    }


def write(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
