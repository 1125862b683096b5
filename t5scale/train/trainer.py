"""The pretraining loop: shape + task -> checkpoints, from one CPU to a pod (every host runs the same code).

    result = train(model_cfg=shape("small"), data_cfg=DataConfig(), optim_cfg=OptimConfig(),
                   mesh_cfg=MeshConfig(), train_cfg=TrainConfig(model_dir="/tmp/run", train_steps=1000))

Stops at the first of: TRAIN_STEPS, a training-FLOP budget, a wall-clock budget (counted over all restarts), or
SIGTERM (a checkpoint is written first); `MODEL_DIR/train_end.json` records which. Every host takes that decision
together at a step boundary, so all save the same step. A rerun of the same command resumes from the newest intact
checkpoint, data position included, and reproduces the uninterrupted run; one saved with the other `scan_layers`
layout is converted. A checkpoint that does not fit the run stops it (IncompatibleCheckpointError) before anything
is written: it never trains from scratch over existing checkpoints unless `restart_from_scratch` says so.

With `pruning` set (t5scale.train.pruning), the run prunes while it trains: masks follow the cubic schedule, are
applied after every update and are checkpointed as their own item, so a resumed run continues the same masks.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from t5scale.config import ModelConfig
from t5scale.data.pipeline import BatchIterator, DataConfig, make_dataset
from t5scale.model.flops import training_flops
from t5scale.model.layout import convert_layer_layout
from t5scale.model.t5 import T5
from t5scale.train import metrics as metrics_lib
from t5scale.train import pruning as pruning_lib
from t5scale.train.checkpoints import (
    START_OVER,
    Checkpointer,
    IncompatibleCheckpointError,
    Layout,
    describe_settings_changed,
    resolve_checkpoint,
    restore_params,
)
from t5scale.train.metrics import NonFiniteLossError  # noqa: F401  (re-exported: callers catch it here)
from t5scale.train.optim import OptimConfig, make_learning_rate_fn, make_optimizer
from t5scale.train.partitioning import MeshConfig, batch_sharding, make_mesh, opt_state_shardings, param_shardings
from t5scale.train.profile import StepProfiler
from t5scale.train.pruning import PruningConfig
from t5scale.train.step import TrainState, make_eval_step, make_train_step, train_step_compiler_options

# Fields that define the network; a resumed run must match the checkpoint on all of them.
ARCHITECTURE_FIELDS = ("num_encoder_layers", "num_decoder_layers", "d_model", "d_kv", "num_heads", "d_ff",
                       "vocab_size", "activation", "tie_embeddings", "shared_heads", "tied_kv", "relative_buckets",
                       "relative_max_distance")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model_dir: str
    train_steps: int
    flop_budget: float | None = None  # stop once this many training FLOPs are spent (FLOP counter)
    time_budget_s: float | None = None  # stop after this many training seconds (as TrainResult), over all restarts
    save_every: int = 1000
    keep_checkpoints: int | None = 3
    keep_every: int | None = None  # also keep every checkpoint whose step is a multiple of this, for good
    log_every: int = 100
    eval_every: int | None = None  # validation loss every N steps (None: never)
    eval_batches: int = 10
    # The task's own metrics (decoding or scoring, seqio's metric functions; t5x's eval period) every N steps and
    # at the end, into MODEL_DIR/task_eval.jsonl; needs a task evaluator (`t5scale finetune` passes one).
    task_eval_every: int | None = None
    microbatches: int = 1  # gradient accumulation: the batch is split into this many sequential chunks
    z_loss: float = 1e-4
    seed: int = 0  # parameter init and dropout
    initial_checkpoint_path: str | None = None  # warm start: params only, when MODEL_DIR has no checkpoint
    peak_flops_per_device: float | None = None  # for MFU; None: known accelerators are detected
    async_checkpoints: bool = True
    progress_bar: bool = True
    # When MODEL_DIR's checkpoints cannot be resumed by this run: delete them and start at step 0 (a run that can
    # resume them still does, so a relaunch of the same command does not start over again).
    restart_from_scratch: bool = False
    pruning: PruningConfig | None = None  # gradual magnitude pruning while training (None: dense)
    profile_steps: int | None = None  # a jax.profiler trace of this many steps, after the first, in MODEL_DIR

    def __post_init__(self):
        if self.train_steps < 1 or self.save_every < 1 or self.log_every < 1 or self.microbatches < 1:
            raise ValueError("TrainConfig: train_steps, save_every, log_every and microbatches must be positive.")
        for name in ("keep_every", "eval_every", "task_eval_every", "profile_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be positive or None, got {getattr(self, name)}.")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    step: int
    ended_by: str  # "train_steps" | "flop_budget" | "time_budget" | "sigterm" | "nan" (a NaN loss stopped it)
    last_loss: float | None
    model_dir: str
    target_tokens_per_s: float | None = None  # throughput and MFU of the last logged window
    mfu: float | None = None
    mfu_peak: str = ""  # where the peak behind the MFU comes from
    start_step: int = 0  # the checkpoint step this run resumed from (0: a fresh start)
    # Over all starts: seconds of training (metrics.TrainingClock: compiling, evaluating, checkpointing and writing
    # logs excluded), and of compiling the train step (once per start).
    train_seconds: float | None = None
    compile_seconds: float | None = None


class _Sigterm:
    """Remembers a SIGTERM so the loop can checkpoint and exit between steps."""

    def __init__(self):
        self.received = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.received = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


# A per-host reason to stop, in order of precedence when hosts disagree.
HOST_STOP_REASONS = ("time_budget", "sigterm")


def _stop_together(local_reason: str | None) -> str | None:
    """The reason to stop now that every host agrees on: any host's, so all save the same step and exit (one host
    stopping alone would leave the others hanging in the next collective). NaN losses need no vote: the loss is a
    global value that every host checks at the same steps."""
    if jax.process_count() == 1:
        return local_reason
    code = 0 if local_reason is None else 1 + HOST_STOP_REASONS.index(local_reason)
    agreed = int(np.max(multihost_utils.process_allgather(np.int32(code))))
    return None if agreed == 0 else HOST_STOP_REASONS[agreed - 1]


def _read_run_config(model_dir: epath.Path) -> dict | None:
    path = model_dir / "config.json"
    return json.loads(path.read_text()) if path.exists() else None


def _check_architecture(model_dir: epath.Path, model_cfg: ModelConfig, *, resuming: bool) -> None:
    saved = (_read_run_config(model_dir) or {}).get("model")
    if saved is None:
        return
    current = model_cfg.to_dict()
    changed = {f: (saved[f], current[f]) for f in ARCHITECTURE_FIELDS if saved.get(f) != current[f]}
    if changed and resuming:
        raise IncompatibleCheckpointError(
            f"{model_dir} holds a run of another architecture; changed fields (checkpoint, now): {changed}. To "
            f"proceed: use the checkpoint's shape, a new MODEL_DIR, or pass {START_OVER} to delete its checkpoints "
            "and start over.")
    if changed:
        raise ValueError(f"{model_dir} holds a run of another architecture; changed fields (checkpoint, now): "
                         f"{changed}. Use the checkpoint's shape.")


def _write_run_config(model_dir: epath.Path, configs: dict[str, Any], gin_config: str) -> None:
    if jax.process_index() != 0:
        return
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(configs, indent=1, default=str) + "\n")
    if gin_config:
        (model_dir / "config.gin").write_text(gin_config)


def _make_init_fn(model_cfg: ModelConfig, tx, seed: int, mesh, rules: str):
    """The jitted initial train state, params placed by `rules` (the optimizer state's placement follows)."""
    abstract_params = nnx.state(nnx.eval_shape(lambda: T5(model_cfg, rngs=nnx.Rngs(0))), nnx.Param)

    def init_state():
        params = nnx.state(T5(model_cfg, rngs=nnx.Rngs(params=seed)), nnx.Param)
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

    shardings = param_shardings(abstract_params, mesh, rules)
    opt_shardings = opt_state_shardings(jax.eval_shape(tx.init, abstract_params), abstract_params, shardings)
    return jax.jit(init_state, out_shardings=TrainState(None, shardings, opt_shardings))


def _abstract_masks(pruning: PruningConfig, abstract_params, mesh):
    """The masks' ShapeDtypeStructs: placed like their params, the shape-() placeholders replicated."""
    masks = jax.eval_shape(functools.partial(pruning_lib.initial_masks, cfg=pruning), abstract_params)
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda m, p: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=p.sharding if m.ndim else
                                                          replicated), masks, abstract_params)


def _shardings(abstract):
    return jax.tree.map(lambda x: x.sharding, abstract)


def _other_layer_layout(model_cfg: ModelConfig, tx, seed: int, mesh, rules: str, abstract_state,
                        abstract_masks, pruning: PruningConfig | None) -> Layout:
    """A checkpoint of the other `scan_layers` layout holds the same parameters (per layer or stacked): restored
    in its own shape and placement, then rearranged into this run's (a pruning run's masks likewise)."""
    other_cfg = model_cfg.replace(scan_layers=not model_cfg.scan_layers)

    @functools.cache
    def abstract_state_fn():
        init_fn = _make_init_fn(other_cfg, tx, seed, mesh, rules)
        with mesh:  # compiled only, never run: the placement XLA gives the optimizer state, without its memory
            shardings = init_fn.lower().compile().output_shardings
        return jax.tree.map(lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            init_fn.eval_shape(), shardings)

    def converter(target):
        return jax.jit(functools.partial(convert_layer_layout, target=target), out_shardings=_shardings(target))

    masks_fns = ((lambda: _abstract_masks(pruning, abstract_state_fn().params, mesh)), converter(abstract_masks)) \
        if pruning else (None, None)
    return Layout(f"scan_layers={other_cfg.scan_layers}", abstract_state_fn, converter(abstract_state), *masks_fns)


def _resume(checkpointer: Checkpointer, state, configs: dict, model_cfg: ModelConfig, data_cfg: DataConfig,
            train_cfg: TrainConfig, tx, mesh, rules: str):
    """(state, masks, start step, run record, batches) from MODEL_DIR's newest intact checkpoint, else a fresh start
    (warm-started when asked; a pruning run's masks all ones). Raises IncompatibleCheckpointError rather than
    starting over existing checkpoints. masks is None for a run that does not prune."""
    model_dir = checkpointer.model_dir
    state_sharding = _shardings(state)
    abstract_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    pruning = train_cfg.pruning
    abstract_masks = _abstract_masks(pruning, abstract_state.params, mesh) if pruning else None
    layouts = (_other_layer_layout(model_cfg, tx, train_cfg.seed, mesh, rules, abstract_state, abstract_masks,
                                   pruning),)

    def batch_iterator(skip_steps: int = 0):
        dataset = make_dataset(data_cfg, jax.process_index(), jax.process_count())
        return BatchIterator(dataset.skip(skip_steps) if skip_steps else dataset)

    current = {"batches": batch_iterator()}

    def derive_data_position(step: int) -> None:  # another process count: each shard from its start, step skipped
        current["batches"] = batch_iterator(step)

    try:
        if checkpointer.steps():
            _check_architecture(model_dir, model_cfg, resuming=True)
        saved_configs = _read_run_config(model_dir) or {}
        start_step, restored, record, masks = checkpointer.restore_latest(
            abstract_state, current["batches"].restore, abstract_masks=abstract_masks, layouts=layouts,
            derive_data_position=derive_data_position,
            settings_changed=describe_settings_changed(saved_configs, json.loads(json.dumps(configs, default=str))))
    except IncompatibleCheckpointError as error:
        if not train_cfg.restart_from_scratch:
            raise
        logging.warning("%s Starting over as asked (restart_from_scratch=True): deleting them.", error)
        checkpointer.delete_all()
        start_step, restored, record, masks, current["batches"] = 0, None, None, None, batch_iterator()
    batches = current["batches"]
    if restored is not None:
        logging.info("Resumed from %s at step %d.", model_dir / f"checkpoint_{start_step}", start_step)
        return restored, masks, start_step, record, batches
    if train_cfg.initial_checkpoint_path:
        initial = resolve_checkpoint(train_cfg.initial_checkpoint_path, "INITIAL_CHECKPOINT_PATH")
        _check_architecture(initial.parent, model_cfg, resuming=False)
        params = restore_params(str(initial), abstract_state.params)
        state = TrainState(state.step, params, jax.jit(tx.init, out_shardings=state_sharding.opt_state)(params))
    if pruning:
        masks = jax.jit(functools.partial(pruning_lib.initial_masks, cfg=pruning),
                        out_shardings=_shardings(abstract_masks))(state.params)
    return state, masks, 0, None, batches


def _global_batch(local: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """Assemble the global batch from every process's local rows."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


# (model with the run's sharded params, step, mesh) -> the summary (t5scale.evaluate.evaluate_model), None on the
# processes that do not write it.
TaskEvaluator = Callable[[nnx.Module, int, Any], "dict | None"]


def train(*, model_cfg: ModelConfig, data_cfg: DataConfig, optim_cfg: OptimConfig, mesh_cfg: MeshConfig,
          train_cfg: TrainConfig, gin_config: str = "", task_evaluator: TaskEvaluator | None = None) -> TrainResult:
    if train_cfg.task_eval_every and task_evaluator is None:
        raise ValueError("train_config.task_eval_every needs a task evaluator: run `t5scale finetune`, or pass "
                         "train(..., task_evaluator=...) (see t5scale.evaluate.evaluate_model).")
    # orbax wants absolute paths; gs:// ones already are.
    model_dir = epath.Path(train_cfg.model_dir if "://" in train_cfg.model_dir else
                           os.path.abspath(train_cfg.model_dir))
    configs = {"model": model_cfg.to_dict(), "data": dataclasses.asdict(data_cfg),
               "optim": dataclasses.asdict(optim_cfg), "mesh": dataclasses.asdict(mesh_cfg),
               "train": dataclasses.asdict(train_cfg)}
    mesh = make_mesh(mesh_cfg)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: T5(model_cfg, rngs=nnx.Rngs(0))), nnx.Param)
    tx = make_optimizer(optim_cfg)
    with mesh:
        state = _make_init_fn(model_cfg, tx, train_cfg.seed, mesh, mesh_cfg.rules)()
    state_sharding = _shardings(state)
    data_sharding = batch_sharding(mesh)

    checkpointer = Checkpointer(str(model_dir), keep=train_cfg.keep_checkpoints, keep_every=train_cfg.keep_every,
                                async_save=train_cfg.async_checkpoints)
    # Nothing is written to MODEL_DIR before the resume decision: a run that cannot resume leaves it as it was.
    try:
        state, masks, start_step, record, batches = _resume(checkpointer, state, configs, model_cfg, data_cfg,
                                                            train_cfg, tx, mesh, mesh_cfg.rules)
    except BaseException:
        checkpointer.close()
        raise
    _write_run_config(model_dir, configs, gin_config)
    metrics_lib.write_run_info(str(model_dir))

    masks_sharding = None if masks is None else _shardings(masks)
    train_step = jax.jit(make_train_step(graphdef, tx, z_loss=train_cfg.z_loss,
                                         microbatches=train_cfg.microbatches, dropout_seed=train_cfg.seed),
                         in_shardings=(state_sharding, data_sharding, masks_sharding),
                         out_shardings=(state_sharding, None), donate_argnums=0,
                         compiler_options=train_step_compiler_options())
    prune_now = None if masks is None else _make_mask_update(train_cfg.pruning, state_sharding, masks_sharding)
    eval_step = jax.jit(make_eval_step(graphdef, z_loss=train_cfg.z_loss),
                        in_shardings=(state_sharding.params, data_sharding))
    flops_per_step = data_cfg.batch_size * training_flops(
        model_cfg, data_cfg.task_feature_lengths["inputs"], data_cfg.task_feature_lengths["targets"]).total
    peak, peak_source = metrics_lib.peak_flops(train_cfg.peak_flops_per_device)
    logging.info("Peak for MFU: %s FLOP/s (%s).", f"{peak:.3g}" if peak else "none", peak_source)
    record = record or {}
    clock = metrics_lib.TrainingClock(record.get("train_seconds", 0.0), record.get("compile_seconds", 0.0))
    logger = metrics_lib.MetricsLogger(
        str(model_dir), flops_per_step=flops_per_step, learning_rate_fn=make_learning_rate_fn(optim_cfg),
        peak_flops=peak, total_steps=train_cfg.train_steps,
        start_step=start_step, progress_bar=train_cfg.progress_bar, clock=clock)

    def save(step: int) -> None:
        logger.check_finite()  # never commit a state reached through a NaN loss
        checkpointer.save(step, state, {"step": step, "train_seconds": clock.train_seconds,
                                        "compile_seconds": clock.compile_seconds}, batches.save, masks=masks)

    def task_eval(step: int) -> None:
        summary = task_evaluator(nnx.merge(graphdef, state.params), step, mesh)
        logger.write_task_eval(step, summary)
        task_evaluated.add(step)

    task_evaluated: set[int] = set()
    sigterm = _Sigterm()
    step, ended_by = start_step, "train_steps"
    try:
        profiler = StepProfiler(str(model_dir), start_step, train_cfg.profile_steps)
        while True:
            if step >= train_cfg.train_steps:
                break
            if train_cfg.flop_budget is not None and step * flops_per_step >= train_cfg.flop_budget:
                ended_by = "flop_budget"  # a function of the step: every host reaches it at the same one
                break
            local = ("sigterm" if sigterm.received else "time_budget" if train_cfg.time_budget_s is not None and
                     clock.train_seconds >= train_cfg.time_budget_s else None)
            if (stop := _stop_together(local)) is not None:
                ended_by = stop
                break
            profiler.maybe_start(step, state)
            clock.resume()  # from the first step on; paused below for compiling, evaluating and checkpointing
            if prune_now is not None and train_cfg.pruning.updates_masks_at(step):
                with jax.set_mesh(mesh):
                    state, masks = prune_now(state, masks, step)
            batch = _global_batch(next(batches), data_sharding)
            with jax.set_mesh(mesh):  # not `with mesh:`: the model's activation constraints read this one
                if step == start_step:  # compiled apart, timed, left out of training (the call finds it compiled)
                    with clock.compiling():
                        train_step.lower(state, batch, masks).compile()
                state, step_metrics = train_step(state, batch, masks)
            step += 1
            profiler.maybe_stop(step, state)
            logger.record(step, step_metrics)
            evaluate_now = bool(train_cfg.eval_every) and step % train_cfg.eval_every == 0
            task_evaluate_now = bool(train_cfg.task_eval_every) and step % train_cfg.task_eval_every == 0
            save_now = step % train_cfg.save_every == 0
            pause = evaluate_now or task_evaluate_now or save_now
            if step % train_cfg.log_every == 0 or pause:
                logger.flush(step)  # waits for the steps: the window (and the clock) ends before a pause
            if pause:
                with clock.paused():
                    if evaluate_now:
                        logger.write_eval(step, _evaluate(eval_step, state.params, data_cfg, train_cfg,
                                                          data_sharding, mesh))
                    if task_evaluate_now:
                        task_eval(step)
                    if save_now:
                        save(step)
        profiler.maybe_stop(step, state, force=True)  # the run ended inside the traced steps
        logger.flush(step)
        clock.pause()
        if step not in checkpointer.steps():
            save(step)
        if train_cfg.task_eval_every and step not in task_evaluated and step > start_step and ended_by != "sigterm":
            task_eval(step)  # the final state too (after its checkpoint); a preempted run leaves quickly instead
        checkpointer.wait()
    except metrics_lib.NonFiniteLossError:
        # Recorded, so that a sweep counts the run as diverged instead of retrying it forever.
        _write_train_end(model_dir, TrainResult(step=step, ended_by="nan", last_loss=None, model_dir=str(model_dir),
                                                start_step=start_step, train_seconds=clock.train_seconds,
                                                compile_seconds=clock.compile_seconds))
        raise
    finally:
        sigterm.restore()
        logger.close()
        checkpointer.close()
    result = TrainResult(step=step, ended_by=ended_by, last_loss=logger.last_loss, model_dir=str(model_dir),
                         target_tokens_per_s=logger.last_scalars.get("target_tokens_per_s"),
                         mfu=logger.last_scalars.get("mfu"), mfu_peak=peak_source, start_step=start_step,
                         train_seconds=clock.train_seconds, compile_seconds=clock.compile_seconds)
    _write_train_end(model_dir, result)
    return result


def _make_mask_update(pruning: PruningConfig, state_sharding, masks_sharding):
    """(state, masks, step) -> (state with the weights below the schedule's sparsity zeroed, new masks)."""
    def update(state: TrainState, masks, sparsity):
        masks = pruning_lib.update_masks(state.params, masks, sparsity, pruning.scope)
        return state.replace(params=pruning_lib.apply_masks(state.params, masks)), masks

    jitted = jax.jit(update, out_shardings=(state_sharding, masks_sharding), donate_argnums=(0, 1))

    def update_at(state: TrainState, masks, step: int):
        sparsity = pruning.sparsity_at(step)
        logging.info("Pruning: masks updated at step %d to sparsity %.4f (final %g at step %d).", step, sparsity,
                     pruning.final_sparsity, pruning.end_step)
        return jitted(state, masks, jnp.float32(sparsity))

    return update_at


def _write_train_end(model_dir: epath.Path, result: TrainResult) -> None:
    if jax.process_index() == 0:
        (model_dir / "train_end.json").write_text(json.dumps(dataclasses.asdict(result), indent=1) + "\n")


def _evaluate(eval_step, params, data_cfg: DataConfig, train_cfg: TrainConfig, sharding, mesh) -> dict:
    """Validation loss over the first `eval_batches` batches of the validation split (same every time)."""
    eval_cfg = dataclasses.replace(data_cfg, split="validation", shuffle=False, num_epochs=None)
    batches = BatchIterator(make_dataset(eval_cfg, jax.process_index(), jax.process_count()))
    sums = None
    for _ in range(train_cfg.eval_batches):
        with jax.set_mesh(mesh):
            out = eval_step(params, _global_batch(next(batches), sharding))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    tokens = max(float(sums["tokens"]), 1.0)
    return {"loss": float(sums["loss"]) / tokens, "accuracy": float(sums["correct"]) / tokens}
