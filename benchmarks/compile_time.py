"""Compile time of t5scale's train step, deep vs shallow: 48 layers per stack vs 6, scanned layers.

    .venv/bin/python benchmarks/compile_time.py              # small with NL=6 and NL=48, batch 1 x 512/114
    .venv/bin/python benchmarks/compile_time.py --tiny       # smoke test
    .venv/bin/python benchmarks/compile_time.py --no-scan    # unrolled stacks, for contrast (expect ~8x)

Ahead of time and from shapes alone (no weights in memory): the trainer's step (`make_train_step` with t5scale's
Adafactor, state donated) is traced and lowered (`jax.jit(...).lower`), then compiled (`.compile()`), each timed.
A warm-up compile of a 1-layer model first takes XLA's one-off start-up cost out of the measurement; the shapes
then alternate for --repeats rounds and the fastest of each counts. The persistent compilation cache is off.
The goal (issue 6): lower + compile of the deep model <= 2x the shallow one's.
"""

import argparse

import harness
import jax
import jax.numpy as jnp
from flax import nnx

import t5scale
from t5scale.train.optim import OptimConfig, make_optimizer
from t5scale.train.step import TrainState, make_train_step, train_step_compiler_options

GOAL = ("<=", 2.0)


def compile_seconds(cfg, batch_size: int, input_len: int, target_len: int) -> dict[str, float]:
    """Seconds to trace + lower, and to compile, the train step of `cfg` for abstract state and batch."""
    graphdef, params = nnx.split(t5scale.abstract_model(cfg), nnx.Param)
    tx = make_optimizer(OptimConfig())  # the trainer's default: T5's pretraining Adafactor
    state = jax.eval_shape(lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)), params)
    batch = {name: jax.ShapeDtypeStruct((batch_size, length), dtype) for name, length, dtype in (
        ("encoder_input_tokens", input_len, jnp.int32), ("decoder_input_tokens", target_len, jnp.int32),
        ("decoder_target_tokens", target_len, jnp.int32), ("decoder_loss_weights", target_len, jnp.float32))}
    step = jax.jit(make_train_step(graphdef, tx, z_loss=harness.Z_LOSS, microbatches=1, dropout_seed=0),
                   donate_argnums=0, compiler_options=train_step_compiler_options())
    lower_s, lowered = harness.timed(lambda: step.lower(state, batch))
    compile_s, _ = harness.timed(lowered.compile)
    return {"lower_s": lower_s, "compile_s": compile_s, "total_s": lower_s + compile_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_shape_args(parser)
    parser.add_argument("--layers", type=int, nargs=2, default=(6, 48), metavar=("SHALLOW", "DEEP"),
                        help="layers per stack (NL) of the two models")
    parser.add_argument("--repeats", type=int, help="compiles per shape (fastest counts)")
    args = harness.fill_defaults(parser.parse_args(), full=dict(batch_size=1, input_len=512, target_len=114, repeats=2),
                                 tiny=dict(batch_size=1, input_len=32, target_len=8, repeats=1))
    jax.config.update("jax_enable_compilation_cache", False)
    harness.warn_if_busy()

    shallow, deep = args.layers
    configs = {layers: harness.model_config(args, NL=layers) for layers in (shallow, deep)}
    lengths = (args.batch_size, args.input_len, args.target_len)
    warmup = compile_seconds(harness.model_config(args, NL=1), *lengths)
    print(f"warm-up compile (NL=1): {warmup['total_s']:.1f}s")
    best: dict[int, dict[str, float]] = {}
    for r in range(args.repeats):
        for layers in ((shallow, deep) if r % 2 == 0 else (deep, shallow)):
            times = compile_seconds(configs[layers], *lengths)
            print(f"  {configs[layers].name}: lower {times['lower_s']:.1f}s + compile {times['compile_s']:.1f}s")
            if layers not in best or times["total_s"] < best[layers]["total_s"]:
                best[layers] = times

    width = max(len(cfg.name) for cfg in configs.values()) + 2
    print(f"{'':{width}}{'lower s':>9}{'compile s':>11}{'total s':>9}")
    for layers, times in best.items():
        print(f"{configs[layers].name:{width}}{times['lower_s']:>9.1f}{times['compile_s']:>11.1f}{times['total_s']:>9.1f}")
    ratio = best[deep]["total_s"] / best[shallow]["total_s"]
    print(f"compile-only ratio {best[deep]['compile_s'] / best[shallow]['compile_s']:.2f}x, "
          f"lower-only {best[deep]['lower_s'] / best[shallow]['lower_s']:.2f}x")
    harness.finish(args, {"benchmark": "compile_time",
                          "ratio_name": f"compile time NL={deep} / NL={shallow} (lower + compile)",
                          "ratio": ratio, "goal": GOAL, "scan_layers": configs[deep].scan_layers,
                          "shapes": {layers: cfg.name for layers, cfg in configs.items()},
                          "seconds": best, "batch_size": args.batch_size, "input_len": args.input_len,
                          "target_len": args.target_len, "repeats": args.repeats})


if __name__ == "__main__":
    main()
