"""`t5scale plan`: does a shape train on a mesh? Compiles the real train step ahead of time on fake CPU devices.

    t5scale plan xl-nl32 --mesh data=256 --batch 2048 --rules fsdp --hbm v3-256
    t5scale plan base --mesh data=4,model=2 --batch 128 --lengths 512/114 --dtype bfloat16 --hbm 16GiB --json

Per device: parameters, optimizer state and the batch exactly (from their shardings); temporaries as XLA's CPU
compiler estimates them (a TPU or GPU compiler fuses and schedules differently: an estimate, labelled so); the
collective traffic of one step from the compiled HLO. Exit status 1 when it does not fit `--hbm`.
"""

from __future__ import annotations

import json

from t5scale import config as config_lib
from t5scale.cli import common
from t5scale.sharding import RULE_SETS
from t5scale.train import plan as plan_lib
from t5scale.train.partitioning import MeshConfig


def parse_mesh(text: str, devices: int | None) -> tuple[int, int]:
    """`data=D,model=M` (either may be left out: model defaults to 1, data to the slice's devices / model)."""
    sizes = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        if name not in ("data", "model") or not value.isdigit() or int(value) < 1 or name in sizes:
            raise common.UsageError(f"--mesh {text!r}: write data=D,model=M with positive integers.")
        sizes[name] = int(value)
    model = sizes.get("model", 1)
    data = sizes.get("data", devices // model if devices and devices % model == 0 else None)
    if data is None:
        raise common.UsageError(f"--mesh {text!r}: give data=D (or a slice as --hbm, e.g. v3-256, whose devices "
                                "the model axis divides).")
    if devices is not None and data * model != devices:
        raise common.UsageError(f"--mesh data={data},model={model} is {data * model} devices; the slice has "
                                f"{devices}.")
    return data, model


def parse_lengths(text: str) -> tuple[int, int]:
    inputs, _, targets = text.partition("/")
    if not (inputs.isdigit() and targets.isdigit()) or min(int(inputs), int(targets)) < 1:
        raise common.UsageError(f"--lengths {text!r}: write INPUTS/TARGETS, e.g. 512/114.")
    return int(inputs), int(targets)


def _size(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def format_plan(plan: dict, hbm: plan_lib.Hbm | None) -> str:
    mesh, b = plan["mesh"], plan["bytes_per_device"]
    lines = [f"{plan['shape']} ({plan['params'] / 1e6:.1f}M params) on data={mesh['data']} x model={mesh['model']} "
             f"({plan['devices']} devices), {mesh['rules']} rules; batch {plan['batch_size']} x "
             f"{plan['lengths'][0]}/{plan['lengths'][1]}, {plan['microbatches']} microbatch(es), {plan['dtype']} "
             f"activations, remat {plan['remat']}", "", "per device"]
    rows = [("parameters (exact)", b["params"]), ("optimizer state (exact)", b["opt_state"]),
            ("batch (exact)", b["batch"]), ("temporaries (XLA CPU estimate)", b["temporaries_estimate"]),
            ("other outputs (metrics)", b["other_outputs"]), ("total (estimate)", b["total_estimate"])]
    lines += [f"  {name:34}{_size(value):>14}" for name, value in rows]
    moved = {k: v for k, v in plan["collectives"].items() if v["count"]}
    lines += ["", "collectives per step, per device (from the compiled HLO; sent = ring-algorithm estimate)"]
    lines += [f"  {kind:20}{v['count']:>6} x  {_size(v['buffer_bytes']):>12} buffers  {_size(v['sent_bytes']):>12}"
              " sent" for kind, v in moved.items()] or ["  none"]
    if hbm is not None:
        total = b["total_estimate"]
        verdict = "fits" if total <= hbm.bytes else "does NOT fit"
        lines += ["", f"HBM {_size(hbm.bytes)} per device ({hbm.label}): {verdict} ({total / hbm.bytes:.0%} of it)"]
    return "\n".join(lines)


def _arguments(parser) -> None:
    parser.add_argument("shape", help="a shape name, e.g. small, xl-nl32, v1_1-base")
    parser.add_argument("--mesh", default="", help="data=D,model=M (default model=1, data from --hbm's slice)")
    parser.add_argument("--batch", type=int, default=128, help="global batch size (default 128, T5's)")
    parser.add_argument("--lengths", default="512/114", help="inputs/targets lengths (default 512/114)")
    parser.add_argument("--rules", choices=RULE_SETS, default="t5x", help="logical axis rules (default t5x)")
    parser.add_argument("--remat", choices=[r.value for r in config_lib.Remat], default="none",
                        help="what each layer keeps for the backward pass (default none: everything)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="activations")
    parser.add_argument("--microbatches", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--hbm", help="memory per device: 16GiB, a chip (v3, v4, v5e, h100) or a slice (v3-256)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


@common.command("plan", "will a shape train on a mesh? bytes per device from an ahead-of-time compile", _arguments)
def plan(args, gin_files, bindings) -> dict:
    try:
        hbm = plan_lib.parse_hbm(args.hbm) if args.hbm else None
        cfg = config_lib.shape(args.shape, dtype=args.dtype, remat=args.remat)
        data, model = parse_mesh(args.mesh, hbm.devices if hbm else None)
        request = plan_lib.PlanRequest(cfg, MeshConfig(data=data, model=model, rules=args.rules), args.batch,
                                       *parse_lengths(args.lengths), microbatches=args.microbatches)
    except ValueError as error:
        raise common.UsageError(common.first_line(error)) from None
    [result] = plan_lib.plan_in_subprocess([request])
    if "error" in result:
        raise common.UsageError(result["error"])
    if hbm is not None:
        result["hbm"] = {"bytes": hbm.bytes, "label": hbm.label, "fits": plan_lib.fits(result, hbm)}
    print(json.dumps(result, indent=1) if args.json else format_plan(result, hbm))
    if hbm is not None and not result["hbm"]["fits"]:
        raise common.CommandFailed(f"{cfg.name} does not fit {args.hbm} per device at batch {args.batch} on this "
                                   "mesh.")
    return result
