"""Every benchmark (issues 6 and 18), one after another (never two at once), then one table of ratios against the goals.

    .venv/bin/python benchmarks/run_all.py                    # full runs (small shape): several minutes
    .venv/bin/python benchmarks/run_all.py --tiny             # smoke test of the whole set, about a minute
    .venv/bin/python benchmarks/run_all.py --only decode_throughput compile_time --json /tmp/bench.json

Each benchmark runs in its own process (a fresh JAX and torch, no thread pools or caches left over from the one
before). Options other than --only/--json (e.g. --tiny, --shape, --scan) go to every benchmark. Exits non-zero if a
benchmark fails, not if a goal is missed.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
BENCHMARKS = ("train_throughput", "compile_time", "compile_cache", "decode_throughput", "decode_int8",
              "pipeline_vs_trainer", "memory")
# Runs of a script with options of their own: name -> (script, options).
VARIANTS = {"decode_int8": ("decode_throughput", ("--narrow", "int8-dynamic"))}


def _goal_met(ratio: float | None, goal: list) -> bool | None:
    if ratio is None:
        return None
    op, value = goal
    return ratio >= value if op == ">=" else ratio <= value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS, metavar="NAME",
                        help=f"run these only, in this order ({', '.join(BENCHMARKS)})")
    parser.add_argument("--json", metavar="PATH", help="write every benchmark's results to this JSON file")
    args, forwarded = parser.parse_known_args()

    results, failed = {}, []
    with tempfile.TemporaryDirectory() as directory:
        for name in args.only:
            out = pathlib.Path(directory) / f"{name}.json"
            script, options = VARIANTS.get(name, (name, ()))
            command = [sys.executable, str(HERE / f"{script}.py"), *options, *forwarded, "--json", str(out)]
            print(f"\n=== {name}: {' '.join(command)}", flush=True)
            if subprocess.run(command).returncode != 0 or not out.exists():
                failed.append(name)
                continue
            results[name] = json.loads(out.read_text())

    print(f"\n{'benchmark':22}{'ratio':48}{'measured':>10}{'goal':>10}  met")
    for name in args.only:
        if name not in results:
            print(f"{name:22}{'FAILED':48}")
            continue
        r = results[name]
        # A benchmark with several headline ratios (memory: training and decoding) lists them under "ratios".
        rows = r["ratios"] if isinstance(r.get("ratios"), list) else None
        for row in rows or [{"name": r["ratio_name"], "ratio": r["ratio"], "goal": r["goal"]}]:
            measured = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
            met = {True: "yes", False: "NO", None: "-"}[_goal_met(row["ratio"], row["goal"])]
            print(f"{name:22}{row['name']:48}{measured:>10}{' '.join(map(str, row['goal'])) + 'x':>10}  {met}")
    if any(r["tiny"] for r in results.values()):
        print("(tiny shapes: a smoke test of the harness; the ratios say nothing about the goals)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.json}")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
