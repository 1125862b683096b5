"""Greedy decoding: t5scale's `greedy_decode` vs transformers' `generate` (PyTorch), same shape, weights and inputs;
or, with --weights, t5scale with its weights kept int8 / bfloat16 in memory vs float32 (t5scale.compress.inference).

    .venv/bin/python benchmarks/decode_throughput.py            # small, 8 inputs of 512 tokens, 114 new tokens
    .venv/bin/python benchmarks/decode_throughput.py --tiny     # smoke test
    .venv/bin/python benchmarks/decode_throughput.py --weights int8 int8-dynamic bfloat16   # vs float32 weights
    .venv/bin/python benchmarks/decode_throughput.py --narrow int8-dynamic   # narrow t5scale vs float32 transformers

Both sides decode exactly --target-len tokens per row: the EOS id given to both is `vocab_size`, an id no logit
belongs to, so no row stops early (random weights would otherwise end rows at arbitrary points and each side would
decode a different amount). That is plain argmax on both sides with nothing suppressed, so with the same weights
the tokens should agree; the agreement is printed as a sanity check (float rounding may flip a near-tie, after
which a row diverges). Timing covers the whole call, encoder included, with the KV cache on both sides
(`use_cache=True`), in interleaved rounds after two warm-up calls each (t5scale's first call compiles).
Tokens/s counts generated tokens. The goal (issue 6): t5scale >= 2x the reference's tokens/s. Then beam search
the same way (`--beam-size 4`, alpha 0.6, T5's setting; 0 skips it), the best beam of each row compared; the goal
(issue 18): >= 1.5x.

With --weights, every side is t5scale: float32, and the same weights held narrow (`keep_weights_narrow`, every
kernel and the embedding, per-channel scales): "int8" (dequantized to float32 inside the program), "int8-dynamic"
(int8 x int8 products, activations quantized per token) or "bfloat16" (bfloat16 products, float32 sums). Token
agreement is against float32. The goal (issue 15): int8 faster than float32 (ratio >= 1), which holds only if the
products read the narrow weights: the script prints, from the compiled program, how many bytes of each dtype the
decoding loop carries (the weights it reads at every step, plus the cache). See docs/compression.md.
"""

import argparse
import collections
import re
import statistics

import harness
import jax
import numpy as np

import t5scale
from t5scale.model.decoding import beam_search, greedy_decode

GOAL = (">=", 2.0)
BEAM_GOAL = (">=", 1.5)
BEAM_ALPHA = 0.6  # T5's brevity penalty; every hypothesis has the same length here, so the formulas' difference
# (t5x's ((5 + len) / 6)^alpha, transformers' len^alpha) does not change which one wins
NARROW_GOAL = (">=", 1.0)
WARMUP_CALLS = 2
NARROW_MODES = ("int8", "int8-dynamic", "bfloat16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_shape_args(parser)  # --target-len is the number of tokens to generate
    parser.add_argument("--rounds", type=int, help="timed rounds; each side decodes the batch --steps times per round")
    parser.add_argument("--steps", type=int, help="decode calls per side per round")
    parser.add_argument("--threads", type=int, help="torch threads (default: os.cpu_count())")
    parser.add_argument("--beam-size", type=int, help="also compare beam search of this width (0: greedy only)")
    parser.add_argument("--weights", nargs="+", choices=NARROW_MODES,
                        help="compare t5scale with these in-memory weights against float32, instead of transformers")
    parser.add_argument("--narrow", choices=NARROW_MODES,
                        help="against transformers (float32), run t5scale with its weights held in this mode")
    args = harness.fill_defaults(parser.parse_args(),
                                 full=dict(batch_size=8, input_len=512, target_len=114, rounds=5, steps=1,
                                           scan=False, beam_size=4),  # unrolled: faster on CPU, as in train_throughput
                                 tiny=dict(batch_size=2, input_len=32, target_len=8, rounds=2, steps=1, scan=False,
                                           beam_size=2))
    if args.weights and args.narrow:
        parser.error("--weights compares t5scale with itself, --narrow with transformers: give one of them.")
    harness.warn_if_busy()
    cfg = harness.model_config(args)
    print(f"shape {cfg.name}: {cfg.operators()}, {cfg.dtype.name}; batch {args.batch_size} x {args.input_len} "
          f"input tokens -> {args.target_len} new tokens each")

    inputs = harness.random_batch(cfg, args.batch_size, args.input_len, 1, seed=args.seed)["encoder_input_tokens"]
    model = t5scale.make_model(cfg, seed=args.seed)
    (compare_weights if args.weights else compare_with_reference)(args, cfg, model, inputs)


def agreement_of(tokens: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    return {"tokens": float(np.mean(tokens == reference)),
            "first_token": float(np.mean(tokens[:, 0] == reference[:, 0])),
            "rows": float(np.mean(np.all(tokens == reference, axis=1)))}


def timing_table(seconds: dict[str, list[float]], generated: int) -> dict[str, dict]:
    sides = {}
    print(f"{'':14}{'call s':>9}{'min':>8}{'max':>8}{'tokens/s':>10}")
    for name, per_round in seconds.items():
        call_s = statistics.fmean(per_round)
        sides[name] = {"call_s": call_s, "call_s_per_round": per_round, "tokens_per_s": generated / call_s}
        print(f"{name:14}{call_s:>9.3f}{min(per_round):>8.3f}{max(per_round):>8.3f}{generated / call_s:>10,.0f}")
    return sides


_BYTES = {"f32": 4, "s32": 4, "bf16": 2, "u16": 2, "s8": 1, "pred": 1}


def loop_carried_megabytes(model, inputs, new_tokens: int, eos_id: int) -> dict[str, float]:
    """{dtype: MB} of the arrays greedy decoding's while loop carries, read from the compiled program's HLO: what
    the loop body can read at every step without recomputing it (weights, hoisted dequantized weights, the cache)."""
    from t5scale.model import decoding

    text = decoding._greedy_decode.lower(model, inputs, new_tokens, eos_id).compile().as_text()
    carried = next(line for line in text.splitlines() if " while(" in line).split(" while(")[0]
    sizes = collections.Counter()
    for dtype, dims in re.findall(r"\b(f32|s32|bf16|u16|s8|pred)\[([\d,]*)\]", carried):
        sizes[dtype] += _BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
    return {dtype: size / 1e6 for dtype, size in sorted(sizes.items())}


def compare_weights(args, cfg, model, inputs) -> None:
    from t5scale.compress.inference import keep_weights_narrow

    new_tokens, never_eos = args.target_len, cfg.vocab_size
    models = {"float32": model, **{w: keep_weights_narrow(model, w) for w in args.weights}}
    carried = {name: loop_carried_megabytes(m, inputs, new_tokens, never_eos) for name, m in models.items()}
    for name, sizes in carried.items():
        print(f"{name}: the decoding loop carries " + ", ".join(f"{mb:,.1f} MB {dtype}" for dtype, mb in sizes.items()))
    outputs = {}

    def make_run(name):
        def run(n: int) -> None:
            for _ in range(n):
                outputs[name] = greedy_decode(models[name], inputs, new_tokens, eos_id=never_eos)
            jax.block_until_ready(outputs[name])
        return run

    runs = {name: make_run(name) for name in models}
    for name, run in runs.items():
        compile_s, _ = harness.timed(lambda run=run: run(1))
        run(WARMUP_CALLS - 1)
        print(f"{name}: first call (compile + run) {compile_s:.1f}s")
    agreement = {name: agreement_of(np.asarray(outputs[name]), np.asarray(outputs["float32"]))
                 for name in args.weights}
    for name, a in agreement.items():
        print(f"{name} tokens equal to float32's: {a['tokens']:.1%} of tokens, {a['first_token']:.1%} of first "
              f"tokens, {a['rows']:.1%} of whole rows")
    sides = timing_table(harness.interleaved(runs, rounds=args.rounds, steps=args.steps),
                         args.batch_size * new_tokens)
    first = args.weights[0]
    harness.finish(args, {"benchmark": "decode_throughput_weights",
                          "ratio_name": f"{first} / float32 greedy tokens/s",
                          "ratio": sides["float32"]["call_s"] / sides[first]["call_s"], "goal": NARROW_GOAL,
                          "ratios": {w: sides["float32"]["call_s"] / sides[w]["call_s"] for w in args.weights},
                          "shape": cfg.to_dict(), "batch_size": args.batch_size, "input_len": args.input_len,
                          "new_tokens": new_tokens, "rounds": args.rounds, "steps_per_round": args.steps,
                          "agreement": agreement, "loop_carried_mb": carried, "sides": sides})


def compare_beam(args, model, reference, inputs, never_eos: int) -> dict:
    """Beam search, T5's setting (alpha 0.6), interleaved like greedy: every hypothesis runs to --target-len."""
    import torch

    torch_inputs, outputs = torch.from_numpy(inputs).long(), {}

    def ours(n: int) -> None:
        for _ in range(n):
            outputs["t5scale"], _ = beam_search(model, inputs, args.target_len, beam_size=args.beam_size,
                                                alpha=BEAM_ALPHA, eos_id=never_eos)
        jax.block_until_ready(outputs["t5scale"])

    def theirs(n: int) -> None:
        with torch.inference_mode():
            for _ in range(n):
                outputs["reference"] = reference.generate(
                    input_ids=torch_inputs, attention_mask=torch.ones_like(torch_inputs), num_beams=args.beam_size,
                    length_penalty=BEAM_ALPHA, do_sample=False, max_new_tokens=args.target_len,
                    eos_token_id=never_eos, pad_token_id=0, decoder_start_token_id=0, use_cache=True)

    compile_s, _ = harness.timed(lambda: ours(1))
    ours(WARMUP_CALLS - 1)
    theirs(WARMUP_CALLS)
    agreement = agreement_of(np.asarray(outputs["t5scale"]), outputs["reference"].numpy()[:, 1:])
    print(f"beam {args.beam_size}, alpha {BEAM_ALPHA}: t5scale's first call {compile_s:.1f}s; best beams equal to "
          f"the reference's: {agreement['tokens']:.1%} of tokens, {agreement['rows']:.1%} of rows")
    sides = timing_table(harness.interleaved({"t5scale": ours, "reference": theirs}, rounds=args.rounds,
                                             steps=args.steps), args.batch_size * args.target_len)
    ratio = sides["reference"]["call_s"] / sides["t5scale"]["call_s"]
    print(f"==> t5scale / reference beam-{args.beam_size} tokens/s: {ratio:.3f}x (goal >= {BEAM_GOAL[1]}x)")
    return {"ratio": ratio, "alpha": BEAM_ALPHA, "agreement": agreement, "sides": sides}


def compare_with_reference(args, cfg, model, inputs) -> None:
    import torch

    new_tokens, never_eos = args.target_len, cfg.vocab_size
    reference = harness.hf_twin(model).eval()
    if args.narrow:  # the reference keeps float32: the agreement below is then against float32 weights
        from t5scale.compress.inference import keep_weights_narrow

        model = keep_weights_narrow(model, args.narrow)
        print(f"t5scale's weights held {args.narrow} (keep_weights_narrow); transformers' float32")
    threads = harness.set_torch_threads(args.threads)
    torch_inputs = torch.from_numpy(inputs).long()
    outputs = {}

    def ours(n: int) -> None:
        for _ in range(n):
            outputs["t5scale"] = greedy_decode(model, inputs, new_tokens, eos_id=never_eos)
        jax.block_until_ready(outputs["t5scale"])

    def theirs(n: int) -> None:
        with torch.inference_mode():
            for _ in range(n):
                outputs["reference"] = reference.generate(
                    input_ids=torch_inputs, attention_mask=torch.ones_like(torch_inputs), num_beams=1,
                    do_sample=False, max_new_tokens=new_tokens, eos_token_id=never_eos, pad_token_id=0,
                    decoder_start_token_id=0, use_cache=True)

    runs = {"t5scale": ours, "reference": theirs}
    compile_s, _ = harness.timed(lambda: ours(1))
    ours(WARMUP_CALLS - 1)
    theirs(WARMUP_CALLS)
    print(f"t5scale's first call (compile + run): {compile_s:.1f}s; torch threads {threads}")
    ours_tokens = np.asarray(outputs["t5scale"])
    theirs_tokens = outputs["reference"].numpy()[:, 1:]  # drop the decoder start token
    if ours_tokens.shape != theirs_tokens.shape:
        raise RuntimeError(f"Decoded shapes differ: t5scale {ours_tokens.shape}, reference {theirs_tokens.shape}; "
                           "one side stopped early.")
    agreement = agreement_of(ours_tokens, theirs_tokens)
    print(f"same tokens as the reference: {agreement['tokens']:.1%} of tokens, {agreement['first_token']:.1%} of "
          f"first tokens, {agreement['rows']:.1%} of whole rows")

    sides = timing_table(harness.interleaved(runs, rounds=args.rounds, steps=args.steps),
                         args.batch_size * new_tokens)
    ratio = sides["reference"]["call_s"] / sides["t5scale"]["call_s"]
    ours_name = f"t5scale {args.narrow}" if args.narrow else "t5scale"
    ratios = [{"name": f"{ours_name} / reference greedy tokens/s", "ratio": ratio, "goal": GOAL}]
    beam = compare_beam(args, model, reference, inputs, never_eos) if args.beam_size else None
    if beam:
        ratios.append({"name": f"{ours_name} / reference beam-{args.beam_size} tokens/s", "ratio": beam["ratio"],
                       "goal": BEAM_GOAL})
    harness.finish(args, {"benchmark": "decode_throughput", "ratio_name": ratios[0]["name"],
                          "ratio": ratio, "goal": GOAL, "ratios": ratios, "beam": beam, "narrow": args.narrow,
                          "shape": cfg.to_dict(), "batch_size": args.batch_size, "input_len": args.input_len,
                          "new_tokens": new_tokens, "rounds": args.rounds, "steps_per_round": args.steps,
                          "agreement": agreement, "sides": sides})


if __name__ == "__main__":
    main()
