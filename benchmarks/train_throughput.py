"""Training throughput: t5scale's train step vs Hugging Face transformers' T5 (PyTorch), same shape, batch, weights.

    .venv/bin/python benchmarks/train_throughput.py                     # small, 8 x 512/114, 5 rounds x 1 step
    .venv/bin/python benchmarks/train_throughput.py --tiny              # smoke test, seconds
    .venv/bin/python benchmarks/train_throughput.py --shape base --dtype bfloat16 --no-reference   # accelerator

Both sides train the same T5 v1.0 model (t5scale's random init, copied into transformers through t5scale's HF
export) on the same random batch (no padding, no packing) with Adafactor at a constant lr 1e-3 (no parameter
scaling, no momentum, update clipping 1.0). Each warms up (t5scale's first step compiles), then the two take turns
in rounds. Tokens/s counts target tokens and, separately, input + target tokens; the ratio is the same for both.
Achieved FLOP/s uses t5scale's FLOP counter (matmuls only) for both sides; MFU is against float32 matmul peaks
measured now, by JAX and by torch. The goal (issue 6): t5scale >= 1.05x the reference's tokens/s.
t5scale runs the configuration `t5scale train` uses when nothing is set (ModelConfig's defaults: scanned layers, no
remat); `--no-scan` unrolls the layers, the fastest setting on CPU (~12% faster per step here; a scanned stack
compiles in constant time, see compile_time.py), `--remat dots|full` trades time for memory. Both sides run with
malloc keeping freed memory, and JAX runs each CPU computation when called (t5scale.malloc), as the command does.
"""

import argparse
import math
import statistics

import harness

import t5scale
from t5scale.model.flops import training_flops

GOAL = (">=", 1.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_shape_args(parser)
    parser.add_argument("--rounds", type=int, help="timed rounds; each side runs --steps steps per round")
    parser.add_argument("--steps", type=int, help="steps per side per round")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps per side (t5scale's first compiles)")
    parser.add_argument("--threads", type=int, help="torch threads (default: os.cpu_count())")
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="time t5scale alone (accelerators: transformers runs on the CPU here)")
    args = harness.fill_defaults(parser.parse_args(),
                                 full=dict(batch_size=8, input_len=512, target_len=114, rounds=5, steps=1),
                                 tiny=dict(batch_size=2, input_len=32, target_len=8, rounds=2, steps=1))
    if args.warmup < 1:
        parser.error("--warmup must be at least 1: t5scale's first step compiles.")

    harness.warn_if_busy()
    cfg = harness.model_config(args)
    lengths = (args.input_len, args.target_len)
    flops_per_step = args.batch_size * training_flops(cfg, *lengths).total
    print(f"shape {cfg.name}: {cfg.operators()}, {t5scale.count_params(cfg).total / 1e6:.1f}M params, "
          f"{cfg.dtype.name}, {'scanned' if cfg.scan_layers else 'unrolled'} layers, remat {cfg.remat.value}; "
          f"batch {args.batch_size} x {lengths[0]}/{lengths[1]}; {flops_per_step / 1e9:.1f} GFLOP per training step "
          "(t5scale's counter)")

    if args.reference and cfg.dtype.name != "float32":
        print(f"note: t5scale computes in {cfg.dtype.name}, the reference in float32")
    batch = harness.random_batch(cfg, args.batch_size, *lengths, seed=args.seed)
    model = t5scale.make_model(cfg, seed=args.seed)
    runs, first_loss = {}, {}
    if args.reference:
        threads = harness.set_torch_threads(args.threads)
        runs["reference"] = harness.make_hf_trainer(harness.hf_twin(model), batch)
    runs["t5scale"], _ = harness.make_t5scale_trainer(model, batch)
    del model

    # Warm-up; the first step's loss is the loss at the initial weights, the same weights on both sides.
    compile_s, metrics = harness.timed(lambda: runs["t5scale"](1))
    first_loss["t5scale"] = float(metrics["loss"] - metrics["z_loss"])  # cross-entropy; the reference has no z-loss
    runs["t5scale"](args.warmup - 1)
    if args.reference:
        first_loss["reference"] = runs["reference"](1)
        runs["reference"](args.warmup - 1)
    print(f"t5scale's first step (compile + run): {compile_s:.1f}s")
    print("loss at the initial weights: " + ", ".join(f"{k} {v:.4f}" for k, v in first_loss.items())
          + f" (cross-entropy; ln(vocab) = {math.log(cfg.vocab_size):.4f})")

    peaks = {"jax": harness.jax_peak()}
    if args.reference:
        peaks["torch"] = (harness.torch_matmul_peak(), f"float32 torch matmul, {threads} threads")
    for name, (peak, source) in peaks.items():
        print(f"peak for MFU, {name}: {f'{peak / 1e9:.1f} GFLOP/s' if peak else 'unknown'} ({source})")

    # One untimed interleaved round: the first step of a side after the other side's first steps lays out the
    # shared heap again (page faults once), a cost a process running one framework never pays.
    harness.interleaved(runs, rounds=1, steps=1, pause_s=0.0)
    seconds = harness.interleaved(runs, rounds=args.rounds, steps=args.steps)
    results = summarize(args, cfg, seconds, flops_per_step, peaks)
    results["loss_at_init"] = first_loss
    print_table(results, peaks)
    harness.finish(args, results)


def summarize(args, cfg, seconds: dict[str, list[float]], flops_per_step: float, peaks: dict) -> dict:
    target_tokens = args.batch_size * args.target_len
    all_tokens = args.batch_size * (args.input_len + args.target_len)
    sides = {}
    for name, per_round in seconds.items():
        step_s = statistics.fmean(per_round)  # every round runs the same number of steps
        flops_per_s = flops_per_step / step_s
        sides[name] = {
            "step_s": step_s, "step_s_per_round": per_round,
            "target_tokens_per_s": target_tokens / step_s, "all_tokens_per_s": all_tokens / step_s,
            "gflops_per_s": flops_per_s / 1e9,
            "mfu": {peak_name: flops_per_s / peak if peak else None for peak_name, (peak, _) in peaks.items()},
        }
    ratio = round_ratios = None
    if "reference" in sides:
        ratio = sides["reference"]["step_s"] / sides["t5scale"]["step_s"]
        round_ratios = [r / t for r, t in zip(seconds["reference"], seconds["t5scale"])]
    return {"benchmark": "train_throughput", "ratio_name": "t5scale / reference training tokens/s",
            "ratio": ratio, "ratio_per_round": round_ratios, "goal": GOAL, "shape": cfg.to_dict(),
            "batch_size": args.batch_size, "input_len": args.input_len, "target_len": args.target_len,
            "rounds": args.rounds, "steps_per_round": args.steps, "warmup_steps": args.warmup,
            "flops_per_step": flops_per_step, "peaks_flops_per_s": {k: p for k, (p, _) in peaks.items()},
            "sides": sides}


def print_table(results: dict, peaks: dict) -> None:
    mfu_heads = "".join(f"{'MFU/' + name + ' peak':>17}" for name in peaks)
    print(f"{'':10}{'step s':>9}{'min':>8}{'max':>8}{'target tok/s':>14}{'in+tgt tok/s':>14}{'GFLOP/s':>9}"
          + mfu_heads)
    for name, side in results["sides"].items():
        mfus = "".join(f"{m:>17.1%}" if m is not None else f"{'-':>17}" for m in side["mfu"].values())
        per_round = side["step_s_per_round"]
        print(f"{name:10}{side['step_s']:>9.3f}{min(per_round):>8.3f}{max(per_round):>8.3f}"
              f"{side['target_tokens_per_s']:>14,.0f}{side['all_tokens_per_s']:>14,.0f}{side['gflops_per_s']:>9.1f}"
              + mfus)
    if results["ratio_per_round"]:
        print("ratio per round: " + " ".join(f"{r:.3f}" for r in results["ratio_per_round"]))


if __name__ == "__main__":
    main()
