"""What a sweep pays to compile a shape again: the train step's compile time in a second process, with the
persistent compilation cache the `t5scale` command turns on, vs the first process that filled it.

    .venv/bin/python benchmarks/compile_cache.py            # small (scanned, as `t5scale train`), 8 x 512/114
    .venv/bin/python benchmarks/compile_cache.py --tiny     # smoke test

Each round starts with an empty cache folder (T5SCALE_CACHE in a temporary directory) and runs two fresh
processes one after the other; each sets the cache up as the command does (`t5scale.cache.set_compilation_cache`)
and times trace + lower and compile of the trainer's step (compile_time.compile_seconds, from shapes alone). The
first compiles and writes the cache, the second reads it. Tracing and lowering run in both (the cache holds
compiled programs). The goal (issue 18): the second compiles >= 5x faster than the first; the fastest of
--repeats rounds counts on each side.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import compile_time
import harness

GOAL = (">=", 5.0)


def child(args) -> None:
    from t5scale.cache import set_compilation_cache

    set_compilation_cache()
    cfg = harness.model_config(args)
    print(json.dumps(compile_time.compile_seconds(cfg, args.batch_size, args.input_len, args.target_len)))


def run_child(argv: list[str], cache: str) -> dict:
    env = {**os.environ, "T5SCALE_CACHE": cache}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run([sys.executable, __file__, *argv, "--child"], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _without_json(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if not skip and not arg.startswith("--json"):
            out.append(arg)
        skip = arg == "--json"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_shape_args(parser)
    parser.add_argument("--repeats", type=int, help="rounds, each from an empty cache (fastest counts)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = harness.fill_defaults(parser.parse_args(), full=dict(batch_size=8, input_len=512, target_len=114,
                                                                repeats=2),
                                 tiny=dict(batch_size=2, input_len=32, target_len=8, repeats=1))
    if args.child:
        return child(args)
    load = harness.warn_if_busy()
    forwarded = _without_json(sys.argv[1:])
    best = {"first": None, "second": None}
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="t5scale-cache-bench-") as cache:
            times = {"first": run_child(forwarded, cache), "second": run_child(forwarded, cache)}
            entries = len(os.listdir(os.path.join(cache, "xla")))
        first, second = times["first"], times["second"]
        print(f"round {r + 1}: first lower {first['lower_s']:.2f}s + compile {first['compile_s']:.2f}s; second "
              f"lower {second['lower_s']:.2f}s + compile {second['compile_s']:.2f}s ({entries} cache entries)")
        for side, t in times.items():
            if best[side] is None or t["compile_s"] < best[side]["compile_s"]:
                best[side] = t
    ratio = best["first"]["compile_s"] / best["second"]["compile_s"]
    total_ratio = best["first"]["total_s"] / best["second"]["total_s"]
    print(f"compile {best['first']['compile_s']:.2f}s -> {best['second']['compile_s']:.2f}s ({ratio:.1f}x); "
          f"with tracing + lowering {best['first']['total_s']:.2f}s -> {best['second']['total_s']:.2f}s "
          f"({total_ratio:.1f}x)")
    harness.finish(args, {"benchmark": "compile_cache", "ratio_name": "compile time, first / second process",
                          "ratio": ratio, "goal": GOAL, "lower_plus_compile_ratio": total_ratio, "seconds": best,
                          "shape": harness.model_config(args).name, "batch_size": args.batch_size,
                          "input_len": args.input_len, "target_len": args.target_len, "repeats": args.repeats,
                          "load_average_at_start": load})


if __name__ == "__main__":
    main()
