"""Peak host memory (RSS high-water mark) of the train step and of greedy decoding, t5scale vs transformers, each
side in its own process; and what each remat policy saves against what it costs.

    .venv/bin/python benchmarks/memory.py                  # small, train 8 x 512/114, decode 8 x 512 -> 114
    .venv/bin/python benchmarks/memory.py --tiny           # smoke test
    .venv/bin/python benchmarks/memory.py --no-reference   # t5scale only: the remat policies

Every measurement is a fresh process, one at a time: t5scale (as the `t5scale` command runs, malloc tuned by
t5scale.malloc) never imports torch, and transformers' process never imports JAX. Both build the same shape with
random weights (memory does not depend on their values), the same batch shape, and the benchmarks' optimizer on
both sides (Adafactor, harness.optim_config; transformers' Adafactor). Two peaks, from /proc/self/status VmHWM:
"process", over the whole run (imports, init, t5scale's compile, warm-up, the measured calls), and "steady", over
--steps calls after the warm-up, with the high-water mark reset first (`echo 5 > /proc/self/clear_refs`). Both
sides inherit t5scale.malloc's tunables (as in every benchmark here); t5scale is also measured without them.
The goal (issue 18): t5scale <= 1.0x transformers' process peak, for training and for decoding.
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import time

GOAL = ("<=", 1.0)
REMAT_POLICIES = ("none", "dots", "full")
WARMUP = 2


def _peak_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


def _tokens(spec: dict, length: int, seed: int):
    import numpy as np

    return np.random.default_rng(seed).integers(2, spec["cfg"]["vocab_size"], (spec["batch_size"], length),
                                                dtype=np.int32)


def _measure(spec: dict, warmup_fn, step_fn) -> dict:
    for _ in range(WARMUP):
        warmup_fn()
    warmup_peak = _peak_mib()
    _reset_peak()
    tic = time.perf_counter()
    for _ in range(spec["steps"]):
        step_fn()
    seconds, steady = (time.perf_counter() - tic) / spec["steps"], _peak_mib()
    return {"process_peak_mib": max(warmup_peak, steady), "steady_peak_mib": steady, "seconds_per_call": seconds}


def t5scale_child(spec: dict) -> dict:
    import harness  # restarts this process with t5scale's malloc settings first, as the command does
    import jax

    import t5scale
    from t5scale.config import ModelConfig
    from t5scale.model.decoding import greedy_decode

    cfg = ModelConfig.from_dict(spec["cfg"])
    model = t5scale.make_model(cfg, seed=0)
    if spec["task"] == "train":
        batch = harness.random_batch(cfg, spec["batch_size"], spec["input_len"], spec["target_len"], seed=0)
        run, _ = harness.make_t5scale_trainer(model, batch)
        del model  # the trainer holds its own copy of the parameters
        gc.collect()
        return _measure(spec, lambda: run(1), lambda: run(1))
    inputs = _tokens(spec, spec["input_len"], 0)
    decode = lambda: jax.block_until_ready(greedy_decode(model, inputs, spec["target_len"], eos_id=cfg.vocab_size))
    return _measure(spec, decode, decode)


def transformers_child(spec: dict) -> dict:
    os.environ.setdefault("USE_TF", "0")
    os.environ.setdefault("USE_FLAX", "0")
    import torch
    import transformers
    from transformers.optimization import Adafactor

    cfg = spec["cfg"]
    config = transformers.T5Config(
        vocab_size=cfg["vocab_size"], d_model=cfg["d_model"], d_kv=cfg["d_kv"], d_ff=cfg["d_ff"],
        num_layers=cfg["num_encoder_layers"], num_decoder_layers=cfg["num_decoder_layers"],
        num_heads=cfg["num_heads"], relative_attention_num_buckets=cfg["relative_buckets"],
        relative_attention_max_distance=cfg["relative_max_distance"], dropout_rate=0.0,
        feed_forward_proj="gated-gelu" if cfg["activation"] == "gated-gelu" else "relu",
        tie_word_embeddings=cfg["tie_embeddings"], decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(config)
    inputs = torch.from_numpy(_tokens(spec, spec["input_len"], 0)).long()
    if spec["task"] == "train":
        targets = torch.from_numpy(_tokens(spec, spec["target_len"], 1)).long()
        decoder_inputs = torch.nn.functional.pad(targets[:, :-1], (1, 0))
        # As harness.make_hf_trainer (not importable here: harness imports JAX).
        optimizer = Adafactor(model.parameters(), lr=spec["learning_rate"], scale_parameter=False,
                              relative_step=False, warmup_init=False)

        def step():
            model(input_ids=inputs, decoder_input_ids=decoder_inputs, labels=targets).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return _measure(spec, step, step)
    model.eval()

    def generate():
        with torch.inference_mode():
            model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), num_beams=1, do_sample=False,
                           max_new_tokens=spec["target_len"], eos_token_id=cfg["vocab_size"], pad_token_id=0,
                           decoder_start_token_id=0, use_cache=True)

    return _measure(spec, generate, generate)


def run_child(spec: dict, system_malloc: bool = False) -> dict:
    """`spec` measured in a fresh process; `system_malloc`: without t5scale.malloc's tunables (which this process,
    through harness, has set, and its children inherit)."""
    env = dict(os.environ)
    if system_malloc:
        env.pop("GLIBC_TUNABLES", None)
        env["T5SCALE_SYSTEM_MALLOC"] = "1"
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{spec['side']} {spec['task']} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        spec = json.loads(sys.argv[2])
        print(json.dumps((t5scale_child if spec["side"] == "t5scale" else transformers_child)(spec)))
        return
    import harness

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_shape_args(parser)
    parser.add_argument("--steps", type=int, help="calls measured after the warm-up")
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure transformers (default); --no-reference: the remat policies only")
    args = harness.fill_defaults(parser.parse_args(), full=dict(batch_size=8, input_len=512, target_len=114, steps=3,
                                                                scan=True),
                                 tiny=dict(batch_size=2, input_len=32, target_len=8, steps=1, scan=True))
    load = harness.warn_if_busy()
    cfg = harness.model_config(args)
    base = {"batch_size": args.batch_size, "input_len": args.input_len, "target_len": args.target_len,
            "steps": args.steps, "learning_rate": harness.LEARNING_RATE}
    print(f"shape {cfg.name} ({'scanned' if cfg.scan_layers else 'unrolled'}), batch {args.batch_size} x "
          f"{args.input_len}/{args.target_len}; peaks in MiB")
    results, ratios = {}, []
    for task in ("train", "decode"):
        sides = ("t5scale", "transformers") if args.reference else ("t5scale",)
        for side in sides:
            results[f"{side} {task}"] = run_child({**base, "side": side, "task": task, "cfg": cfg.to_dict()})
        if args.reference:
            ours, theirs = results[f"t5scale {task}"], results[f"transformers {task}"]
            ratios.append({"name": f"{task}: t5scale / transformers peak RSS", "goal": GOAL,
                           "ratio": ours["process_peak_mib"] / theirs["process_peak_mib"],
                           "steady_ratio": ours["steady_peak_mib"] / theirs["steady_peak_mib"]})
    for task in ("train", "decode"):  # how much of t5scale's peak is malloc keeping freed memory
        results[f"t5scale {task}, system malloc"] = run_child(
            {**base, "side": "t5scale", "task": task, "cfg": cfg.to_dict()}, system_malloc=True)
    for remat in REMAT_POLICIES[1:] if cfg.remat.value == "none" else ():
        results[f"t5scale train remat={remat}"] = run_child(
            {**base, "side": "t5scale", "task": "train", "cfg": cfg.replace(remat=remat).to_dict()})
    print(f"{'':34}{'process peak':>14}{'steady peak':>13}{'s / call':>10}")
    for name, r in results.items():
        print(f"{name:34}{r['process_peak_mib']:>14.0f}{r['steady_peak_mib']:>13.0f}{r['seconds_per_call']:>10.2f}")
    for r in ratios:
        print(f"{r['name']}: {r['ratio']:.2f}x over the process, {r['steady_ratio']:.2f}x steady")
    headline = ratios[0] if ratios else {"name": "train: t5scale / transformers peak RSS", "ratio": None}
    harness.finish(args, {"benchmark": "memory", "ratio_name": headline["name"], "ratio": headline["ratio"],
                          "goal": GOAL, "ratios": ratios, "results": results, "shape": cfg.name,
                          "load_average_at_start": load, **base})


if __name__ == "__main__":
    main()
