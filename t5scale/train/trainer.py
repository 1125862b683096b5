"""The pretraining loop: shape + task -> checkpoints, from one CPU to a pod (every host runs the same code).

    result = train(model_cfg=shape("small"), data_cfg=DataConfig(), optim_cfg=OptimConfig(),
                   mesh_cfg=MeshConfig(), train_cfg=TrainConfig(model_dir="/tmp/run", train_steps=1000))

Stops at the first of: TRAIN_STEPS, a training-FLOP budget, a wall-clock budget (counted over all restarts), or
SIGTERM (a checkpoint is written first); `MODEL_DIR/train_end.json` records which. A rerun of the same command
resumes from the newest readable checkpoint, data position included, and reproduces the uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from t5scale.config import ModelConfig
from t5scale.data.pipeline import BatchIterator, DataConfig, make_dataset
from t5scale.model.flops import training_flops
from t5scale.model.t5 import T5
from t5scale.train import metrics as metrics_lib
from t5scale.train.checkpoints import Checkpointer, resolve_checkpoint, restore_params
from t5scale.train.metrics import NonFiniteLossError  # noqa: F401  (re-exported: callers catch it here)
from t5scale.train.optim import OptimConfig, make_learning_rate_fn, make_optimizer
from t5scale.train.partitioning import MeshConfig, batch_sharding, make_mesh, param_shardings
from t5scale.train.step import TrainState, make_eval_step, make_train_step

# Fields that define the network; a resumed run must match the checkpoint on all of them.
ARCHITECTURE_FIELDS = ("num_encoder_layers", "num_decoder_layers", "d_model", "d_kv", "num_heads", "d_ff",
                       "vocab_size", "activation", "tie_embeddings", "shared_heads", "tied_kv", "relative_buckets",
                       "relative_max_distance")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model_dir: str
    train_steps: int
    flop_budget: float | None = None  # stop once this many training FLOPs are spent (FLOP counter)
    time_budget_s: float | None = None  # stop after this much training wall-clock time, over all restarts
    save_every: int = 1000
    keep_checkpoints: int | None = 3
    log_every: int = 100
    eval_every: int | None = None  # validation loss every N steps (None: never)
    eval_batches: int = 10
    microbatches: int = 1  # gradient accumulation: the batch is split into this many sequential chunks
    z_loss: float = 1e-4
    seed: int = 0  # parameter init and dropout
    initial_checkpoint_path: str | None = None  # warm start: params only, when MODEL_DIR has no checkpoint
    peak_flops_per_device: float | None = None  # for MFU; None: known accelerators are detected
    async_checkpoints: bool = True
    progress_bar: bool = True

    def __post_init__(self):
        if self.train_steps < 1 or self.save_every < 1 or self.log_every < 1 or self.microbatches < 1:
            raise ValueError("TrainConfig: train_steps, save_every, log_every and microbatches must be positive.")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    step: int
    ended_by: str  # "train_steps" | "flop_budget" | "time_budget" | "sigterm"
    last_loss: float | None
    model_dir: str
    target_tokens_per_s: float | None = None  # throughput and MFU of the last logged window
    mfu: float | None = None
    mfu_peak: str = ""  # where the peak behind the MFU comes from


class _Sigterm:
    """Remembers a SIGTERM so the loop can checkpoint and exit between steps."""

    def __init__(self):
        self.received = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.received = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def _check_architecture(model_dir: epath.Path, model_cfg: ModelConfig) -> None:
    path = model_dir / "config.json"
    if not path.exists():
        return
    saved = json.loads(path.read_text())["model"]
    current = model_cfg.to_dict()
    changed = {f: (saved[f], current[f]) for f in ARCHITECTURE_FIELDS if saved.get(f) != current[f]}
    if changed:
        raise ValueError(f"{model_dir} holds a run of another architecture; changed fields (checkpoint, now): "
                         f"{changed}. Use the checkpoint's shape (or, to resume, a new MODEL_DIR).")


def _write_run_config(model_dir: epath.Path, configs: dict[str, Any], gin_config: str) -> None:
    if jax.process_index() != 0:
        return
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(configs, indent=1, default=str) + "\n")
    if gin_config:
        (model_dir / "config.gin").write_text(gin_config)


def _global_batch(local: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """Assemble the global batch from every process's local rows."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def train(*, model_cfg: ModelConfig, data_cfg: DataConfig, optim_cfg: OptimConfig, mesh_cfg: MeshConfig,
          train_cfg: TrainConfig, gin_config: str = "") -> TrainResult:
    # orbax wants absolute paths; gs:// ones already are.
    model_dir = epath.Path(train_cfg.model_dir if "://" in train_cfg.model_dir else
                           os.path.abspath(train_cfg.model_dir))
    _check_architecture(model_dir, model_cfg)
    configs = {"model": model_cfg.to_dict(), "data": dataclasses.asdict(data_cfg),
               "optim": dataclasses.asdict(optim_cfg), "mesh": dataclasses.asdict(mesh_cfg),
               "train": dataclasses.asdict(train_cfg)}
    _write_run_config(model_dir, configs, gin_config)

    mesh = make_mesh(mesh_cfg)
    graphdef, abstract_params = nnx.split(nnx.eval_shape(lambda: T5(model_cfg, rngs=nnx.Rngs(0))), nnx.Param)
    params_sharding = param_shardings(abstract_params, mesh, mesh_cfg.rules)
    tx = make_optimizer(optim_cfg)

    def init_state():
        params = nnx.state(T5(model_cfg, rngs=nnx.Rngs(params=train_cfg.seed)), nnx.Param)
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

    with mesh:
        state = jax.jit(init_state, out_shardings=TrainState(None, params_sharding, None))()
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    data_sharding = batch_sharding(mesh)

    batches = BatchIterator(make_dataset(data_cfg, jax.process_index(), jax.process_count()))
    checkpointer = Checkpointer(str(model_dir), keep=train_cfg.keep_checkpoints,
                                async_save=train_cfg.async_checkpoints)
    abstract_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    start_step, restored, record = checkpointer.restore_latest(abstract_state, batches.restore)
    if restored is not None:
        state = restored
        logging.info("Resumed from %s at step %d.", model_dir / f"checkpoint_{start_step}", start_step)
    elif train_cfg.initial_checkpoint_path:
        initial = resolve_checkpoint(train_cfg.initial_checkpoint_path, "INITIAL_CHECKPOINT_PATH")
        _check_architecture(initial.parent, model_cfg)
        params = restore_params(str(initial), abstract_state.params)
        state = TrainState(state.step, params, jax.jit(tx.init, out_shardings=state_sharding.opt_state)(params))
    train_seconds = record.get("train_seconds", 0.0) if record else 0.0

    train_step = jax.jit(make_train_step(graphdef, tx, z_loss=train_cfg.z_loss,
                                         microbatches=train_cfg.microbatches, dropout_seed=train_cfg.seed),
                         in_shardings=(state_sharding, data_sharding), out_shardings=(state_sharding, None),
                         donate_argnums=0)
    eval_step = jax.jit(make_eval_step(graphdef, z_loss=train_cfg.z_loss),
                        in_shardings=(state_sharding.params, data_sharding))
    flops_per_step = data_cfg.batch_size * training_flops(
        model_cfg, data_cfg.task_feature_lengths["inputs"], data_cfg.task_feature_lengths["targets"]).total
    peak, peak_source = metrics_lib.peak_flops(train_cfg.peak_flops_per_device)
    logging.info("Peak for MFU: %s FLOP/s (%s).", f"{peak:.3g}" if peak else "none", peak_source)
    logger = metrics_lib.MetricsLogger(
        str(model_dir), flops_per_step=flops_per_step, learning_rate_fn=make_learning_rate_fn(optim_cfg),
        peak_flops=peak, total_steps=train_cfg.train_steps,
        start_step=start_step, progress_bar=train_cfg.progress_bar)

    def save(step: int) -> None:
        logger.check_finite()  # never commit a state reached through a NaN loss
        checkpointer.save(step, state, {"step": step, "train_seconds": train_seconds}, batches.save)

    sigterm = _Sigterm()
    step, ended_by = start_step, "train_steps"
    try:
        while True:
            if step >= train_cfg.train_steps:
                break
            if train_cfg.flop_budget is not None and step * flops_per_step >= train_cfg.flop_budget:
                ended_by = "flop_budget"
                break
            if train_cfg.time_budget_s is not None and train_seconds >= train_cfg.time_budget_s:
                ended_by = "time_budget"
                break
            if sigterm.received:
                ended_by = "sigterm"
                break
            tic = time.perf_counter()
            with mesh:
                state, step_metrics = train_step(state, _global_batch(next(batches), data_sharding))
            step += 1
            logger.record(step, step_metrics)
            if step % train_cfg.log_every == 0:
                logger.flush(step)  # syncs with the device: the step time below then covers real work
            train_seconds += time.perf_counter() - tic
            if train_cfg.eval_every and step % train_cfg.eval_every == 0:
                logger.write_eval(step, _evaluate(eval_step, state.params, data_cfg, train_cfg, data_sharding, mesh))
                logger.reset_timer(step)
            if step % train_cfg.save_every == 0:
                save(step)
                logger.reset_timer(step)
        logger.flush(step)
        if step not in checkpointer.steps():
            save(step)
        checkpointer.wait()
    finally:
        sigterm.restore()
        logger.close()
        checkpointer.close()
    result = TrainResult(step=step, ended_by=ended_by, last_loss=logger.last_loss, model_dir=str(model_dir),
                         target_tokens_per_s=logger.last_scalars.get("target_tokens_per_s"),
                         mfu=logger.last_scalars.get("mfu"), mfu_peak=peak_source)
    if jax.process_index() == 0:
        (model_dir / "train_end.json").write_text(json.dumps(dataclasses.asdict(result), indent=1) + "\n")
    return result


def _evaluate(eval_step, params, data_cfg: DataConfig, train_cfg: TrainConfig, sharding, mesh) -> dict:
    """Validation loss over the first `eval_batches` batches of the validation split (same every time)."""
    eval_cfg = dataclasses.replace(data_cfg, split="validation", shuffle=False, num_epochs=None)
    batches = BatchIterator(make_dataset(eval_cfg, jax.process_index(), jax.process_count()))
    sums = None
    for _ in range(train_cfg.eval_batches):
        with mesh:
            out = eval_step(params, _global_batch(next(batches), sharding))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    tokens = max(float(sums["tokens"]), 1.0)
    return {"loss": float(sums["loss"]) / tokens, "accuracy": float(sums["correct"]) / tokens}
