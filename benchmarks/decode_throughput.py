"""Greedy decoding: t5scale's `greedy_decode` vs transformers' `generate` (PyTorch), same shape, weights and inputs.

    .venv/bin/python benchmarks/decode_throughput.py            # small, 8 inputs of 512 tokens, 114 new tokens
    .venv/bin/python benchmarks/decode_throughput.py --tiny     # smoke test

Both sides decode exactly --target-len tokens per row: the EOS id given to both is `vocab_size`, an id no logit
belongs to, so no row stops early (random weights would otherwise end rows at arbitrary points and each side would
decode a different amount). That is plain argmax on both sides with nothing suppressed, so with the same weights
the tokens should agree; the agreement is printed as a sanity check (float rounding may flip a near-tie, after
which a row diverges). Timing covers the whole call, encoder included, with the KV cache on both sides
(`use_cache=True`), in interleaved rounds after two warm-up calls each (t5scale's first call compiles).
Tokens/s counts generated tokens. The goal (issue 6): t5scale >= 2x the reference's tokens/s.
"""

import argparse
import statistics

import harness
import jax
import numpy as np

import t5scale
from t5scale.model.decoding import greedy_decode

GOAL = (">=", 2.0)
WARMUP_CALLS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_shape_args(parser)  # --target-len is the number of tokens to generate
    parser.add_argument("--rounds", type=int, help="timed rounds; each side decodes the batch --steps times per round")
    parser.add_argument("--steps", type=int, help="decode calls per side per round")
    parser.add_argument("--threads", type=int, help="torch threads (default: os.cpu_count())")
    args = harness.fill_defaults(parser.parse_args(),
                                 full=dict(batch_size=8, input_len=512, target_len=114, rounds=5, steps=1,
                                           scan=False),  # unrolled: faster on CPU, as in train_throughput
                                 tiny=dict(batch_size=2, input_len=32, target_len=8, rounds=2, steps=1, scan=False))
    harness.warn_if_busy()
    cfg = harness.model_config(args)
    new_tokens, never_eos = args.target_len, cfg.vocab_size
    print(f"shape {cfg.name}: {cfg.operators()}, {cfg.dtype.name}; batch {args.batch_size} x {args.input_len} "
          f"input tokens -> {new_tokens} new tokens each")

    import torch

    inputs = harness.random_batch(cfg, args.batch_size, args.input_len, 1, seed=args.seed)["encoder_input_tokens"]
    model = t5scale.make_model(cfg, seed=args.seed)
    reference = harness.hf_twin(model).eval()
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
    agreement = {"tokens": float(np.mean(ours_tokens == theirs_tokens)),
                 "first_token": float(np.mean(ours_tokens[:, 0] == theirs_tokens[:, 0])),
                 "rows": float(np.mean(np.all(ours_tokens == theirs_tokens, axis=1)))}
    print(f"same tokens as the reference: {agreement['tokens']:.1%} of tokens, {agreement['first_token']:.1%} of "
          f"first tokens, {agreement['rows']:.1%} of whole rows")

    seconds = harness.interleaved(runs, rounds=args.rounds, steps=args.steps)
    generated = args.batch_size * new_tokens
    sides = {}
    print(f"{'':10}{'call s':>9}{'min':>8}{'max':>8}{'tokens/s':>10}")
    for name, per_round in seconds.items():
        call_s = statistics.fmean(per_round)
        sides[name] = {"call_s": call_s, "call_s_per_round": per_round, "tokens_per_s": generated / call_s}
        print(f"{name:10}{call_s:>9.3f}{min(per_round):>8.3f}{max(per_round):>8.3f}{generated / call_s:>10,.0f}")
    harness.finish(args, {"benchmark": "decode_throughput", "ratio_name": "t5scale / reference greedy tokens/s",
                          "ratio": sides["reference"]["call_s"] / sides["t5scale"]["call_s"], "goal": GOAL,
                          "shape": cfg.to_dict(), "batch_size": args.batch_size, "input_len": args.input_len,
                          "new_tokens": new_tokens, "rounds": args.rounds, "steps_per_round": args.steps,
                          "agreement": agreement, "sides": sides})


if __name__ == "__main__":
    main()
