"""`t5scale plan`: does a shape train (or decode) on a mesh or a TPU slice? Compiles the real step ahead of time.

    t5scale plan base --topology v4-8 --batch 128 --dtype bfloat16          # libtpu's compiler, for that slice
    t5scale plan base --topology v5litepod-256 --slices 2 --rules fsdp       # multi-slice: data over DCN
    t5scale plan large --topology v4-32 --search                             # the largest batch per setting
    t5scale plan --sweep sweeps/c4_shapes.gin --topology v4-64 --csv plan.csv
    t5scale plan base --topology v4-8 --mode decode --batch 64 --lengths 512/128 --beam 4
    t5scale plan xl-nl32 --mesh data=256 --batch 2048 --rules fsdp --hbm v3-256   # fake CPU devices

Per device: parameters, optimizer state and the batch exactly (from their shardings); with `--topology` and
libtpu installed, the TPU compiler's own memory analysis (arguments, temporaries, outputs, generated code) and its
verdict; otherwise temporaries as XLA's CPU compiler estimates them, labelled so. The collective traffic of one
step from the compiled HLO. Exit status 1 when it does not fit.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys

from t5scale import config as config_lib
from t5scale.analysis import sweep as sweep_lib
from t5scale.cli import common
from t5scale.model.flops import training_flops
from t5scale.sharding import RULE_SETS
from t5scale.train import plan as plan_lib
from t5scale.train import plan_search, slices
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
    what = (f"batch {plan['batch_size']} x {plan['lengths'][0]}/{plan['lengths'][1]}, {plan['microbatches']} "
            f"microbatch(es)") if plan["mode"] == "train" else (
        f"decoding batch {plan['batch_size']} x {plan['lengths'][0]} -> {plan['lengths'][1]} tokens, "
        + ("greedy" if plan["beam_size"] == 1 else f"beam {plan['beam_size']}"))
    lines = [f"{plan['shape']} ({plan['params'] / 1e6:.1f}M params) on data={mesh['data']} x model={mesh['model']} "
             f"({plan['devices']} devices), {mesh['rules']} rules; {what}, {plan['dtype']} activations, "
             f"remat {plan['remat']}"]
    tpu = plan.get("slice")
    if tpu:
        lines.append(f"{tpu['cloud_name']}: topology {tpu['topology']}, {tpu['chips']} chips, {tpu['hosts']} "
                     f"host(s), {tpu['device_kind']}; compiled by libtpu in {plan['compile_seconds']:.0f} s")
    rows = [("parameters (exact)", b["params"]), ("optimizer state (exact)", b["opt_state"]),
            ("batch (exact)", b["batch"])]
    if "out_of_memory" in plan:
        lines += ["", "per device"] + [f"  {name:34}{_size(value):>14}" for name, value in rows]
        lines += ["", f"libtpu refused the program: {plan['out_of_memory']}"]
        if hbm is not None:
            lines += ["", f"HBM {_size(hbm.bytes)} per device ({hbm.label}): does NOT fit (the TPU compiler's "
                          "verdict)"]
        return "\n".join(lines)
    memory = plan["xla_memory_analysis"]
    if plan["compiler"] == "tpu":
        rows += [("arguments (TPU compiler, tiled)", memory["argument"]),
                 ("temporaries (TPU compiler)", b["temporaries_estimate"]),
                 ("other outputs (TPU compiler)", b["other_outputs"]),
                 ("generated code (TPU compiler)", memory["generated_code"]),
                 ("total (TPU compiler)", b["total_estimate"])]
    else:
        rows += [("temporaries (XLA CPU estimate)", b["temporaries_estimate"]),
                 ("other outputs (metrics)", b["other_outputs"]), ("total (estimate)", b["total_estimate"])]
    lines += ["", "per device"] + [f"  {name:34}{_size(value):>14}" for name, value in rows]
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
    parser.add_argument("shape", nargs="?", help="a shape name, e.g. small, xl-nl32, v1_1-base (not with --sweep)")
    parser.add_argument("--topology", help="a TPU slice (v3-32, v4-128, v5litepod-256, v5p-64, v6e-16) or topology "
                        "(v4:4x4x4): compile with libtpu for its devices")
    parser.add_argument("--slices", type=int, default=1, help="with --topology: slices joined over DCN (default 1)")
    parser.add_argument("--mesh", default="", help="data=D,model=M (default model=1, data from the slice)")
    parser.add_argument("--batch", type=int, default=128, help="global batch size (default 128, T5's)")
    parser.add_argument("--lengths", default="512/114", help="inputs/targets lengths (default 512/114)")
    parser.add_argument("--rules", choices=RULE_SETS, help="logical axis rules (default t5x; --search: both unless "
                        "given)")
    parser.add_argument("--remat", choices=[r.value for r in config_lib.Remat],
                        help="what each layer keeps for the backward pass (default none: everything; --search: "
                        "each unless given)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="activations")
    parser.add_argument("--microbatches", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--mode", choices=plan_lib.MODES, default="train", help="train step (default) or decoding")
    parser.add_argument("--beam", type=int, default=1, help="with --mode decode: beam size (default 1: greedy)")
    parser.add_argument("--hbm", help="memory per device: 16GiB, a chip (v3, v4, v5e, h100) or a slice (v3-256); "
                        "default with --topology: the slice's")
    parser.add_argument("--search", action="store_true", help="find the largest batch that fits, per rules, remat "
                        "and model split (several compiles each; cached under $T5SCALE_CACHE/plans)")
    parser.add_argument("--sweep", help="plan every shape of a sweep gin file at its runs' batch and lengths")
    parser.add_argument("--csv", help="with --sweep or --search: also write the table to this CSV file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _compiler(tpu: slices.Slice | None) -> bool:
    """Whether libtpu compiles for `tpu`; without it, say in one line what the numbers are and how to get better."""
    if tpu is None:
        return False
    missing = plan_lib.libtpu_missing()
    if missing:
        _progress(f"t5scale plan: {missing}: temporaries below are XLA's CPU estimate for {tpu.devices} fake "
                  f"devices; {plan_lib.TPU_HINT}.")
    return missing is None


def _request(args, cfg, batch: int, lengths: tuple[int, int], tpu: slices.Slice | None, use_tpu: bool,
             hbm: plan_lib.Hbm | None) -> plan_lib.PlanRequest:
    devices = tpu.devices if tpu else (hbm.devices if hbm else None)
    data, model = parse_mesh(args.mesh, devices)
    # Without libtpu, fake CPU devices stand in for the slice's (one process: no DCN axis to lay out).
    return plan_lib.PlanRequest(
        cfg, MeshConfig(data=data, model=model, rules=args.rules or "t5x"), batch, *lengths,
        microbatches=args.microbatches,
        topology=args.topology if use_tpu else None, num_slices=args.slices if use_tpu else 1, mode=args.mode,
        beam_size=args.beam)


@common.command("plan", "will a shape train on a mesh or TPU slice? bytes per device from an ahead-of-time compile",
                _arguments)
def plan(args, gin_files, bindings) -> dict | list:
    try:
        if (args.shape is None) == (args.sweep is None):
            raise ValueError("give a shape or --sweep FILE (one of the two).")
        tpu = slices.parse_slice(args.topology, args.slices) if args.topology else None
        if args.slices != 1 and tpu is None:
            raise ValueError("--slices needs --topology.")
        if args.beam != 1 and args.mode != "decode":
            raise ValueError("--beam needs --mode decode.")
        hbm = plan_lib.parse_hbm(args.hbm) if args.hbm else None
        if hbm is None and tpu is not None:
            hbm = plan_lib.Hbm(tpu.generation.hbm_per_device, f"{tpu.cloud_name}, {tpu.generation.device_kind}")
        lengths = parse_lengths(args.lengths)
        if args.sweep:
            jobs = _sweep_jobs(args.sweep, bindings, args)
        else:
            jobs = [(config_lib.shape(args.shape, dtype=args.dtype, remat=args.remat or "none"), args.batch, lengths)]
        use_tpu = _compiler(tpu)
        requests = [_request(args, cfg, batch, run_lengths, tpu, use_tpu, hbm) for cfg, batch, run_lengths in jobs]
    except ValueError as error:
        raise common.UsageError(common.first_line(error)) from None
    cpu_devices = 1 if use_tpu else max(r.devices for r in requests)
    with plan_lib.PlanWorker(tpu=use_tpu, cpu_devices=cpu_devices) as worker:
        cached = plan_search.PlanCache(worker)
        if args.sweep:
            return _plan_sweep(args, cached, requests, hbm)
        if args.search:
            return _search(args, cached, requests[0], hbm)
        _progress(f"compiling {requests[0].model_cfg.name} for "
                  f"{tpu.cloud_name if tpu else f'{requests[0].devices} CPU device(s)'}"
                  f"{' with libtpu' if use_tpu else ''} ...")
        result = cached.plan(requests[0])
    if "error" in result:
        raise common.UsageError(result["error"])
    if hbm is not None:
        result["hbm"] = {"bytes": hbm.bytes, "label": hbm.label, "fits": plan_lib.fits(result, hbm)}
    print(json.dumps(result, indent=1) if args.json else format_plan(result, hbm))
    if hbm is not None and not result["hbm"]["fits"]:
        where = tpu.cloud_name if tpu else args.hbm
        raise common.CommandFailed(f"{requests[0].model_cfg.name} does not fit {where} per device at batch "
                                   f"{args.batch} on this mesh.")
    return result


def _search(args, cached: plan_search.PlanCache, request: plan_lib.PlanRequest, hbm: plan_lib.Hbm | None) -> list:
    if hbm is None:
        raise common.UsageError("--search needs the memory per device: --topology or --hbm.")
    fixed_model = request.mesh_cfg.model if "model=" in args.mesh else None
    only = {"rules": args.rules, "remat": args.remat, "model": fixed_model}
    rows = plan_search.search(cached.plan, request, hbm, _progress, only=only)
    best, why = plan_search.recommend(rows, args.batch)
    table = [{"shape": request.model_cfg.name, "rules": r.rules, "remat": r.remat, "model": r.model,
              "largest_batch": r.largest_batch,
              "hbm_per_device_at_it": r.plan["bytes_per_device"]["total_estimate"] if r.plan else None,
              "compiles": r.compiles, "error": r.error} for r in rows]
    if args.json:
        print(json.dumps({"rows": table, "recommended": dataclasses.asdict(best) if best else None}, indent=1))
    else:
        print(f"{request.model_cfg.name}: the largest global batch that fits {hbm.label} "
              f"({_size(hbm.bytes)} per device), {request.input_len}/{request.target_len}, "
              f"{request.model_cfg.dtype.name}")
        print(f"  {'rules':6}{'remat':7}{'model':>6}{'largest batch':>15}{'HBM at it':>14}  compiles")
        for row in table:
            at = _size(row["hbm_per_device_at_it"]) if row["hbm_per_device_at_it"] else "-"
            note = f"  ({row['error']})" if row["error"] else ""
            print(f"  {row['rules']:6}{row['remat']:7}{row['model']:>6}{row['largest_batch']:>15}{at:>14}"
                  f"  {row['compiles']}{note}")
        print(f"recommended: rules {best.rules}, remat {best.remat}, model={best.model} ({why})" if best
              else f"recommended: none ({why})")
    _write_csv(args.csv, table)
    return table


def _sweep_jobs(sweep_gin: str, bindings: list[str], args) -> list[tuple]:
    """(model config, batch, lengths) of each shape of a sweep, from its runs' own gin (as `t5scale sweep` trains
    them), with this command's --dtype and --remat."""
    import gin

    common.configurable(sweep_lib.SweepConfig, "sweep_config")
    common.register_run_configurables()
    common.parse_gin([sweep_gin], ["SWEEP_DIR='(plan)'", *bindings])
    cfg = common.call_configurable("sweep_config")
    first_runs = {}
    for run in sweep_lib.plan_runs(cfg):
        first_runs.setdefault(run.shape, run)
    jobs = []
    for run in first_runs.values():
        _, files, run_bindings = common.split_gin_flags(sweep_lib.train_argv(cfg, run)[1:])
        gin.clear_config()
        common.parse_gin(files, run_bindings)
        model_cfg = common.gin_model_config().replace(dtype=args.dtype, remat=args.remat or "none")
        lengths = common.macro_value("TASK_FEATURE_LENGTHS")
        jobs.append((model_cfg, common.macro_value("BATCH_SIZE"), (lengths["inputs"], lengths["targets"])))
    gin.clear_config()
    return jobs


def _plan_sweep(args, cached: plan_search.PlanCache, requests: list, hbm: plan_lib.Hbm | None) -> list:
    table = []
    for index, request in enumerate(requests, 1):
        _progress(f"[{index}/{len(requests)}] {request.model_cfg.name} at batch {request.batch_size} ...")
        result = cached.plan(request)
        row = {"shape": request.model_cfg.name, "params": None, "training_flops_per_example":
               training_flops(request.model_cfg, request.input_len, request.target_len).total,
               "batch": request.batch_size, "lengths": f"{request.input_len}/{request.target_len}",
               "devices": request.devices, "compiler": "tpu" if request.topology else "cpu"}
        if "error" in result:
            row.update(error=result["error"])
        else:
            total = result["bytes_per_device"]["total_estimate"]
            row.update(params=result["params"], hbm_per_device=None if "out_of_memory" in result else total,
                       params_per_device=result["bytes_per_device"]["params"],
                       fits=plan_lib.fits(result, hbm) if hbm else None,
                       compile_seconds=round(result["compile_seconds"], 1))
        if args.search and hbm is not None and "error" not in result:
            best, _, _ = plan_search.largest_batch(cached.plan, dataclasses.replace(
                request, batch_size=request.mesh_cfg.data * request.microbatches), hbm, _progress)
            row["largest_batch"] = best
        table.append(row)
    if args.json:
        print(json.dumps(table, indent=1))
    else:
        print(f"{'shape':18}{'params':>9}{'FLOPs/example':>15}{'batch':>7}{'lengths':>9}{'HBM/device':>13}"
              f"{'fits':>6}" + (f"{'largest batch':>15}" if args.search else ""))
        for row in table:
            memory = _size(row["hbm_per_device"]) if row.get("hbm_per_device") else (
                "out of HBM" if "fits" in row else "error")
            fit = {True: "yes", False: "NO", None: "-"}[row.get("fits")]
            print(f"{row['shape']:18}{(row['params'] or 0) / 1e6:>8.1f}M{row['training_flops_per_example']:>15.3g}"
                  f"{row['batch']:>7}{row['lengths']:>9}{memory:>13}{fit:>6}"
                  + (f"{row.get('largest_batch', '-'):>15}" if args.search else "")
                  + (f"  ({row['error']})" if "error" in row else ""))
    _write_csv(args.csv, table)
    return table


def _write_csv(path: str | None, rows: list[dict]) -> None:
    if not path:
        return
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    _progress(f"wrote {path}")
