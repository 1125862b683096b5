"""What the benchmarks share: shape options, t5scale's own train step, the Hugging Face twin, interleaved timing.

Not a benchmark itself; the scripts next to it import it (run them from the repository root, e.g.
`.venv/bin/python benchmarks/train_throughput.py`, so that this folder is on sys.path).

Fair comparisons on a small machine: both sides run in one process, after their own warm-up, in alternating rounds
(ABBA order, so neither side always goes right after the other), and each round ends with a host sync
(`block_until_ready` on JAX's results; PyTorch on CPU is synchronous). The machine drifts by 10-15% over minutes;
only numbers from the same run compare.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from typing import Callable

from t5scale.malloc import reexec_with_reused_memory, run_cpu_computations_inline

# Both sides run with malloc keeping freed memory (as the `t5scale` command does): without it every step of either
# side faults its temporaries back in, and a side that runs after the other pays for the other's freed memory.
# And, as the command does, JAX runs each CPU computation when called: no second step's temporaries in flight.
reexec_with_reused_memory()
run_cpu_computations_inline()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import t5scale  # noqa: E402
from t5scale.config import ModelConfig  # noqa: E402
from t5scale.train.optim import OptimConfig, Schedule, make_optimizer  # noqa: E402
from t5scale.train.step import TrainState, make_train_step, train_step_compiler_options  # noqa: E402

# A smoke-test shape: every dimension small, vocab above the embedded vocabulary's 2100 ids (so a real batch from
# the span-corruption pipeline fits) and a multiple of 128 like T5's.
TINY_OPERATORS = dict(NL=2, DM=64, KV=16, NH=4, FF=128, vocab_size=2176)
Z_LOSS = 1e-4  # the trainer's default (TrainConfig.z_loss); trainer.py imports TensorFlow, so it is not read here
LEARNING_RATE = 1e-3  # both optimizers: constant, as T5 fine-tuning; no parameter scaling, no momentum
# transformers imports TensorFlow and Flax when it finds them (both are installed here); the reference is PyTorch.
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("USE_FLAX", "0")


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def add_shape_args(parser: argparse.ArgumentParser) -> None:
    """--shape/--tiny and the batch options every benchmark takes; defaults come from `fill_defaults`."""
    parser.add_argument("--shape", default="small", help="t5scale shape name (small, base, small-nl16, ...)")
    parser.add_argument("--tiny", action="store_true",
                        help=f"smoke test in seconds: small with {TINY_OPERATORS}, short sequences, few steps")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--input-len", type=int)
    parser.add_argument("--target-len", type=int)
    parser.add_argument("--dtype", help="activation dtype, e.g. bfloat16 (default: the shape's, float32)")
    parser.add_argument("--scan", action=argparse.BooleanOptionalAction,
                        help="scanned (--scan) or unrolled (--no-scan) layers; default: per benchmark (see README)")
    parser.add_argument("--scan-unroll", type=int, help="layers per iteration of the scanned loop (default 1)")
    parser.add_argument("--remat", choices=("none", "dots", "full"), help="model_config.remat (default: the shape's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")


def fill_defaults(args: argparse.Namespace, full: dict, tiny: dict) -> argparse.Namespace:
    """Set every option left unset (None) from `tiny` under --tiny, else from `full`."""
    for name, value in (tiny if args.tiny else full).items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    return args


def model_config(args: argparse.Namespace, **overrides) -> ModelConfig:
    """The shape under test: --shape (or the tiny one), with dtype/scan choices and `overrides` applied."""
    if args.dtype is not None:
        overrides["dtype"] = args.dtype
    if args.scan is not None:
        overrides["scan_layers"] = args.scan
    if getattr(args, "scan_unroll", None) is not None:
        overrides["scan_unroll"] = args.scan_unroll
    if getattr(args, "remat", None) is not None:
        overrides["remat"] = args.remat
    operators = {**TINY_OPERATORS, **overrides} if args.tiny else overrides
    return t5scale.shape("small" if args.tiny else args.shape, dropout_rate=0.0, **operators)


def random_batch(cfg: ModelConfig, batch_size: int, input_len: int, target_len: int, seed: int
                 ) -> dict[str, np.ndarray]:
    """Unpacked, unpadded random tokens in [2, vocab) (no padding 0, no EOS 1), in the trainer's feature names."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(2, cfg.vocab_size, (batch_size, target_len), dtype=np.int32)
    return {
        "encoder_input_tokens": rng.integers(2, cfg.vocab_size, (batch_size, input_len), dtype=np.int32),
        "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),  # shifted right behind start token 0
        "decoder_target_tokens": targets,
        "decoder_loss_weights": np.ones_like(targets, dtype=np.float32),
    }


# ----------------------------------------------------------------------------------------------------------------
# The two trainers
# ----------------------------------------------------------------------------------------------------------------


def optim_config() -> OptimConfig:
    """t5scale's Adafactor set up like the reference's: constant lr, no parameter scale, clipping 1, decay 0.8."""
    return OptimConfig(learning_rate=LEARNING_RATE, schedule=Schedule.CONSTANT, multiply_by_parameter_scale=False)


def make_t5scale_trainer(model: nnx.Module, batch: dict[str, np.ndarray], optim: OptimConfig | None = None
                         ) -> tuple[Callable[[int], dict], Callable]:
    """(run(n) -> metrics of the n-th step, the jitted step) for t5scale's own train step on a fixed batch.

    The step is the trainer's: `make_train_step` jitted with the state donated. One device, so no shardings.
    `run` blocks on the new state and metrics once, after its n steps, like the trainer between log windows;
    `run.state()` is the current state.
    """
    graphdef, params = nnx.split(model, nnx.Param)
    params = jax.tree.map(jnp.copy, params)  # the step donates its state; `model` keeps working
    tx = make_optimizer(optim or optim_config())
    step = jax.jit(make_train_step(graphdef, tx, z_loss=Z_LOSS, microbatches=1, dropout_seed=0), donate_argnums=0,
                   compiler_options=train_step_compiler_options())
    device_batch = {k: jnp.asarray(v) for k, v in batch.items()}
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

    def run(n: int) -> dict | None:
        nonlocal state
        metrics = None
        for _ in range(n):
            state, metrics = step(state, device_batch)
        jax.block_until_ready((state, metrics))
        return jax.device_get(metrics)

    run.state = lambda: state  # the current state, e.g. to lower the step again
    return run, step


def hf_twin(model: nnx.Module):
    """transformers' T5ForConditionalGeneration with `model`'s weights, through t5scale's own HF export."""
    import transformers

    from t5scale.convert.hf import to_hf

    with tempfile.TemporaryDirectory() as directory:
        to_hf(model, directory)
        return transformers.T5ForConditionalGeneration.from_pretrained(directory)


def make_hf_trainer(hf_model, batch: dict[str, np.ndarray]) -> Callable[[int], float]:
    """run(n) -> loss of the n-th step, for the reference: HF's T5 with transformers' Adafactor, on a fixed batch."""
    import torch
    from torch.profiler import record_function
    from transformers.optimization import Adafactor

    hf_model.train()  # dropout_rate is 0, so this only matches the trainer's mode
    optimizer = Adafactor(hf_model.parameters(), lr=LEARNING_RATE, scale_parameter=False, relative_step=False,
                          warmup_init=False)
    inputs = dict(input_ids=torch.from_numpy(batch["encoder_input_tokens"]).long(),
                  decoder_input_ids=torch.from_numpy(batch["decoder_input_tokens"]).long(),
                  labels=torch.from_numpy(batch["decoder_target_tokens"]).long())

    def run(n: int) -> float | None:
        loss = None
        for _ in range(n):  # the ranges name the phases in torch.profiler (profile_step.py); free otherwise
            with record_function("forward"):
                loss = hf_model(**inputs).loss  # mean cross-entropy over the target tokens
            with record_function("backward"):
                loss.backward()
            with record_function("optimizer"):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        return None if loss is None else loss.item()

    return run


def set_torch_threads(threads: int | None) -> int:
    import torch

    torch.set_num_threads(threads or os.cpu_count())
    return torch.get_num_threads()


# ----------------------------------------------------------------------------------------------------------------
# Timing and peaks
# ----------------------------------------------------------------------------------------------------------------


def interleaved(runs: dict[str, Callable[[int], object]], *, rounds: int, steps: int, pause_s: float = 1.0
                ) -> dict[str, list[float]]:
    """Seconds per step of each run, one entry per round: `steps` steps of each run per round, the runs taking
    turns in ABBA order. Each `run(n)` must return only after its n steps are done (a host sync).

    Each run starts after a `pause_s` pause: OpenMP (torch) and XLA's thread pools keep spinning for a while after
    their work ends, and would otherwise slow down whichever side runs next."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        for name in (list(runs) if r % 2 == 0 else list(reversed(runs))):
            time.sleep(pause_s)
            tic = time.perf_counter()
            runs[name](steps)
            seconds[name].append((time.perf_counter() - tic) / steps)
    return seconds


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    tic = time.perf_counter()
    out = fn()
    return time.perf_counter() - tic, out


def jax_peak() -> tuple[float | None, str]:
    """Peak FLOP/s for MFU as t5scale's trainer takes it: a vendor bf16 figure on accelerators, a float32 matmul
    measured now on a CPU (`t5scale.train.metrics.measure_matmul_peak`)."""
    from t5scale.train.metrics import peak_flops

    return peak_flops(None)


def torch_matmul_peak(seconds: float = 0.5, size: int = 1024) -> float:
    """FLOP/s of a float32 torch matmul, best of repeated runs: the reference's own view of the CPU's peak."""
    import torch

    a = torch.ones(size, size)
    a @ a
    best, deadline = math.inf, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        tic = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - tic)
    return 2 * size**3 / best


# ----------------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------------


def warn_if_busy(threshold: float = 0.5) -> float:
    """Warn when other processes use the CPU: torch's OpenMP threads slow down many-fold when a core is taken."""
    load = os.getloadavg()[0]
    if load > threshold:
        print(f"WARNING: load average {load:.2f} before starting; another process is using the CPU, so these "
              "numbers are not representative.")
    return load


def environment() -> dict:
    device = jax.devices()[0]
    env = {"python": platform.python_version(), "jax": jax.__version__, "device": device.device_kind,
           "platform": device.platform, "cpu_count": os.cpu_count(), "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
           "load_average_1min": os.getloadavg()[0], "command": " ".join([sys.executable, *sys.argv])}
    env.update({name: sys.modules[name].__version__ for name in ("torch", "transformers") if name in sys.modules})
    return env


def goal_met(ratio: float | None, goal: tuple[str, float]) -> bool | None:
    if ratio is None:
        return None
    op, value = goal
    return ratio >= value if op == ">=" else ratio <= value


def finish(args: argparse.Namespace, results: dict) -> None:
    """Print the headline and write --json: `results` holds at least benchmark, ratio, ratio_name, goal."""
    met = goal_met(results["ratio"], results["goal"])
    if results["ratio"] is not None:
        print(f"==> {results['ratio_name']}: {results['ratio']:.3f}x (goal {' '.join(map(str, results['goal']))}x: "
              f"{'met' if met else 'NOT met'})")
    results = {**results, "goal_met": met, "tiny": args.tiny, "environment": environment()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
            f.write("\n")
        print(f"wrote {args.json}")
