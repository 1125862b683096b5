"""Where a training step's time goes, op by op, on both sides: t5scale's step (XLA's CPU runtime) and transformers'
(PyTorch), the same shape, batch and weights as train_throughput.py.

    .venv/bin/python benchmarks/profile_step.py                # small, 8 x 512/114, 3 profiled steps a side
    .venv/bin/python benchmarks/profile_step.py --tiny         # smoke test, seconds
    .venv/bin/python benchmarks/profile_step.py --no-scan --json /tmp/profile.json

t5scale: a `jax.profiler` trace of the steps, each HLO instruction timed from its start to its `end:` event (XLA's
CPU runtime may run an instruction asynchronously), and classified by what the compiled HLO says it computes: a
matrix product (a dot inside), a scan slice (dynamic-slice / dynamic-update-slice), a gather or scatter, a
reduction, a layout copy (copy / transpose), a fill (broadcast of a constant) or elementwise work. Its phase comes
from the instruction's name stack: forward (`jvp`), backward (`transpose(jvp)`), the rest (optimizer, loss, metrics).
XLA runs independent instructions concurrently on the cores, so each moment of the step is split between the
instructions running then: the column "s / step" sums to the time some instruction was running, and "idle" is the
rest of the step's wall time (the runtime between instructions).

transformers: `torch.profiler` over the same number of steps, each aten op's self time (its children excluded),
classified the same way by op name, its phase from the `record_function` ranges of `harness.make_hf_trainer`.
PyTorch runs one op at a time from the Python thread (each op may use every core); "idle" is the wall time outside
any op (Python, the autograd engine's bookkeeping, the profiler's own overhead).

The two sides are profiled one after the other, after warm-up and one untimed round each; profiling adds overhead
(more on the PyTorch side, which records every op from Python): compare the shares, and take step times from
train_throughput.py.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
import time

import harness

import t5scale

CATEGORIES = ("matrix products", "elementwise", "reductions", "layout copies", "scan slices", "gather/scatter",
              "fills", "other")
CONTROL = {"while", "conditional", "call"}
PHASES = ("forward", "backward", "optimizer + rest")


# ----------------------------------------------------------------------------------------------------------------
# t5scale: classify XLA's instructions, time them from a trace
# ----------------------------------------------------------------------------------------------------------------

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.-]+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.-]+) = (\S+) .*?([a-z][a-z-]*)\(")
_CALLS = re.compile(r"calls=%?([\w.-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def classify_opcodes(opcodes: set[str]) -> str:
    """A category from the opcodes an instruction (with what it fuses) executes."""
    if opcodes & CONTROL:
        return "control"  # runs other instructions, which are timed themselves
    if opcodes & {"dot", "convolution"}:
        return "matrix products"
    if opcodes & {"dynamic-slice", "dynamic-update-slice"}:
        return "scan slices"
    if opcodes & {"gather", "scatter"}:
        return "gather/scatter"
    if opcodes & {"reduce", "reduce-window"}:
        return "reductions"
    rest = opcodes - {"parameter", "bitcast", "tuple", "get-tuple-element", "constant"}
    if rest and rest <= {"copy", "transpose"}:
        return "layout copies"
    if rest and rest <= {"broadcast", "iota"}:
        return "fills"
    if not rest or "custom-call" in rest:
        return "other"
    return "elementwise"


def xla_phase(op_name: str) -> str:
    if "transpose(jvp" in op_name:
        return "backward"
    if "jvp(" in op_name:
        return "forward"
    return "optimizer + rest"


def xla_instructions(hlo_text: str) -> dict[str, tuple[str, str, str]]:
    """{instruction name: (category, phase, what: result type and the op that made it)} for every instruction of a
    compiled module's text."""
    opcodes: dict[str, set[str]] = collections.defaultdict(set)  # computation -> opcodes (fusions' bodies)
    instructions, computation = [], None
    for line in hlo_text.splitlines():
        if (m := _COMPUTATION.match(line)) and "=" not in line.split("{")[0]:
            computation = m.group(1)
        elif m := _INSTRUCTION.match(line):
            name, result, opcode = m.groups()
            opcodes[computation].add(opcode)
            calls = _CALLS.search(line)
            op_name = _OP_NAME.search(line)
            instructions.append((name, result, opcode, calls.group(1) if calls else None,
                                 op_name.group(1) if op_name else ""))
    table = {}
    for name, result, opcode, called, op_name in instructions:
        executed = opcodes.get(called, set()) if opcode == "fusion" else {opcode}
        table[name] = (classify_opcodes(executed), xla_phase(op_name), f"{result} {op_name.split('/')[-1]}")
    return table


def trace_intervals(trace_dir: str) -> list[tuple[float, float, str]]:
    """(start us, end us, instruction) for every instruction XLA ran in the trace: from its event to its `end:`
    event (an instruction XLA runs asynchronously ends after its own event does)."""
    (path,) = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
    with gzip.open(path) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    started: dict[str, collections.deque] = collections.defaultdict(collections.deque)
    intervals = []
    for e in sorted(events, key=lambda e: e["ts"]):
        if "hlo_op" in e.get("args", {}):
            started[e["name"]].append(e["ts"])
        elif e["name"].startswith("end: ") and started[e["name"][5:]]:
            intervals.append((started[e["name"][5:]].popleft(), e["ts"] + e["dur"], e["name"][5:]))
    return intervals


def split_concurrent(intervals: list[tuple[float, float, str]]) -> dict[str, float]:
    """Microseconds per instruction, each moment split equally between the instructions running then."""
    points = sorted({t for start, end, _ in intervals for t in (start, end)})
    index = {t: i for i, t in enumerate(points)}
    delta = [0] * (len(points) + 1)
    for start, end, name in intervals:
        delta[index[start]] += 1
        delta[index[end]] -= 1
    running, counts = 0, []
    for d in delta[:-1]:
        running += d
        counts.append(running)
    share: dict[str, float] = collections.defaultdict(float)
    for start, end, name in intervals:
        for i in range(index[start], index[end]):
            share[name] += (points[i + 1] - points[i]) / counts[i]
    return share


def profile_t5scale(run, step, state_args, steps: int) -> dict:
    import jax

    table = xla_instructions(step.lower(*state_args).compile().as_text())
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        tic = time.perf_counter()
        run(steps)
        wall = time.perf_counter() - tic
        jax.profiler.stop_trace()
        intervals = trace_intervals(trace_dir)
    intervals = [i for i in intervals if table.get(i[2], ("other",))[0] != "control"]
    seconds, by_instruction, unknown = collections.defaultdict(float), {}, set()
    for name, us in split_concurrent(intervals).items():
        if name not in table:
            unknown.add(name)
        category, phase, what = table.get(name, ("other", "optimizer + rest", "?"))
        seconds[(category, phase)] += us / 1e6 / steps
        by_instruction[name] = (us / 1e6 / steps, category, phase, what)
    thread_seconds = sum(end - start for start, end, _ in intervals) / 1e6 / steps
    top = sorted(by_instruction.items(), key=lambda item: -item[1][0])
    return {"wall_s": wall / steps, "seconds": seconds, "thread_s": thread_seconds, "unmatched": sorted(unknown),
            "instructions": dict(top)}


# ----------------------------------------------------------------------------------------------------------------
# transformers: classify aten ops, time them with torch.profiler
# ----------------------------------------------------------------------------------------------------------------

TORCH_CATEGORIES = {
    "matrix products": {"mm", "bmm", "addmm", "baddbmm", "addbmm", "linear", "matmul", "dot", "mv"},
    "reductions": {"sum", "mean", "amax", "max", "min", "norm", "linalg_vector_norm", "_softmax", "_log_softmax",
                   "_softmax_backward_data", "_log_softmax_backward_data", "nll_loss_forward", "nll_loss_backward",
                   "cumsum", "any", "all"},
    "layout copies": {"copy_", "clone", "contiguous", "_to_copy", "to", "cat", "_unsafe_view", "reshape"},
    "gather/scatter": {"embedding", "embedding_dense_backward", "index_select", "gather", "scatter", "scatter_add_",
                       "index_add_", "index_put_", "_index_put_impl_", "index", "masked_fill_"},
    "fills": {"fill_", "zero_", "zeros", "zeros_like", "ones", "ones_like", "empty", "empty_like", "full",
              "new_zeros", "new_empty", "empty_strided", "arange"},
}


def torch_category(op: str) -> str:
    name = op.removeprefix("aten::")
    for category, names in TORCH_CATEGORIES.items():
        if name in names:
            return category
    return "other" if not op.startswith("aten::") else "elementwise"


def profile_reference(run, steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        tic = time.perf_counter()
        run(steps)
        wall = time.perf_counter() - tic
    seconds, by_op = collections.defaultdict(float), collections.defaultdict(float)
    for event in prof.events():
        top = event
        while top.cpu_parent is not None:
            top = top.cpu_parent
        phase = {"forward": "forward", "backward": "backward"}.get(top.name, "optimizer + rest")
        if event.name.startswith("aten::") or event.name.startswith("autograd::"):
            category = torch_category(event.name) if event.name.startswith("aten::") else "other"
            seconds[(category, phase)] += event.self_cpu_time_total / 1e6 / steps
            by_op[(event.name, category, phase)] += event.self_cpu_time_total / 1e6 / steps
    top = sorted(by_op.items(), key=lambda item: -item[1])
    return {"wall_s": wall / steps, "seconds": seconds,
            "ops": {" | ".join(key): value for key, value in top}}


# ----------------------------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------------------------


def print_breakdown(sides: dict[str, dict]) -> None:
    names = list(sides)
    print(f"\nseconds per step (share of the step), by category; {', '.join(names)}")
    print(f"{'':18}" + "".join(f"{name:>22}" for name in names))
    rows = {}
    for category in CATEGORIES:
        rows[category] = [sum(v for (c, _), v in side["seconds"].items() if c == category) for side in sides.values()]
    busy = [sum(r[i] for r in rows.values()) for i in range(len(names))]
    rows["idle / outside ops"] = [max(side["wall_s"] - b, 0.0) for side, b in zip(sides.values(), busy)]
    for category, values in rows.items():
        print(f"{category:18}" + "".join(f"{v:>13.3f} ({v / side['wall_s']:>5.1%})"
                                         for v, side in zip(values, sides.values())))
    print(f"{'step (profiled)':18}" + "".join(f"{side['wall_s']:>13.3f}{'':9}" for side in sides.values()))
    print(f"\nby phase, seconds per step: {', '.join(names)}")
    for phase in PHASES:
        values = [sum(v for (_, p), v in side["seconds"].items() if p == phase) for side in sides.values()]
        print(f"{phase:18}" + "".join(f"{v:>13.3f}{'':9}" for v in values))
    print("\nnon-product time by phase (elementwise, reductions, copies, slices, gathers, fills, other), s per step:")
    for phase in PHASES:
        values = [sum(v for (c, p), v in side["seconds"].items() if p == phase and c != "matrix products")
                  for side in sides.values()]
        print(f"{phase:18}" + "".join(f"{v:>13.3f}{'':9}" for v in values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_shape_args(parser)
    parser.add_argument("--steps", type=int, help="profiled steps per side")
    parser.add_argument("--threads", type=int, help="torch threads (default: os.cpu_count())")
    parser.add_argument("--top", type=int, default=25, help="list this many of t5scale's costliest non-product ops")
    parser.add_argument("--no-reference", dest="reference", action="store_false", help="profile t5scale alone")
    args = harness.fill_defaults(parser.parse_args(), full=dict(batch_size=8, input_len=512, target_len=114, steps=3),
                                 tiny=dict(batch_size=2, input_len=32, target_len=8, steps=2))
    harness.warn_if_busy()
    import jax.numpy as jnp

    cfg = harness.model_config(args)
    batch = harness.random_batch(cfg, args.batch_size, args.input_len, args.target_len, seed=args.seed)
    model = t5scale.make_model(cfg, seed=args.seed)
    print(f"shape {cfg.name}: {cfg.operators()}, {'scanned' if cfg.scan_layers else 'unrolled'} layers, "
          f"remat {cfg.remat.value}; batch {args.batch_size} x {args.input_len}/{args.target_len}; "
          f"{args.steps} profiled steps a side")
    runs = {}
    if args.reference:
        harness.set_torch_threads(args.threads)
        runs["transformers"] = harness.make_hf_trainer(harness.hf_twin(model), batch)
    runs["t5scale"], step = harness.make_t5scale_trainer(model, batch)
    del model
    for run in runs.values():
        run(2)  # warm-up (t5scale's first step compiles)
    harness.interleaved(runs, rounds=1, steps=1, pause_s=0.0)

    sides = {}
    time.sleep(1.0)
    device_batch = {k: jnp.asarray(v) for k, v in batch.items()}
    sides["t5scale"] = profile_t5scale(runs["t5scale"], step, (runs["t5scale"].state(), device_batch), args.steps)
    if args.reference:
        time.sleep(1.0)
        sides["transformers"] = profile_reference(runs["transformers"], args.steps)
    print_breakdown(sides)
    print("\nt5scale's costliest instructions outside the products (s per step, category, phase, result, op):")
    others = [(n, v) for n, v in sides["t5scale"]["instructions"].items() if v[1] != "matrix products"]
    for name, (s, category, phase, what) in others[:args.top]:
        print(f"  {s:7.3f}  {category:14} {phase:17} {name:42} {what[:90]}")
    if "transformers" in sides:
        print("\ntransformers' costliest aten ops outside the products (s per step, summed over calls, by phase):")
        others = [(k, v) for k, v in sides["transformers"]["ops"].items() if "| matrix products |" not in k]
        for key, s in others[:args.top // 2]:
            print(f"  {s:7.3f}  {key}")
    if sides["t5scale"]["unmatched"]:
        print(f"(trace instructions not in the compiled text, counted as other: {sides['t5scale']['unmatched'][:8]})")
    print(f"t5scale: instructions ran {sides['t5scale']['thread_s']:.3f} thread-seconds per step "
          f"({sides['t5scale']['thread_s'] / sides['t5scale']['wall_s']:.2f}x the step's wall time)")
    if args.json:
        out = {name: {**side, "seconds": {f"{c} | {p}": v for (c, p), v in side["seconds"].items()}}
               for name, side in sides.items()}
        with open(args.json, "w") as f:
            json.dump({"sides": out, "shape": cfg.to_dict(), "environment": harness.environment()}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
