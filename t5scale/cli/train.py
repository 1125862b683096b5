"""`t5scale train` (pretraining) and `t5scale finetune`: gin files + bindings -> the library's dataclasses ->
`t5scale.train.trainer.train`.

    t5scale train --gin_file=models/small.gin --gin_file=runs/pretrain.gin --gin.MODEL_DIR="'gs://bucket/small'"
    t5scale finetune --gin_file=runs/finetune.gin --gin.MODEL_DIR="'/tmp/ft'" \
        --gin.INITIAL_CHECKPOINT_PATH="'/tmp/run/checkpoint_1000'"
"""

from __future__ import annotations

import dataclasses
import json

import gin
from t5scale import storage
from t5scale.cli import common
from t5scale.config import ModelConfig
from t5scale.model.flops import count_params

FINETUNE_DROPOUT = 0.1  # T5's fine-tuning dropout, when no gin file sets DROPOUT_RATE


def _parse_run_gin(command: str, gin_files: list[str], bindings: list[str], example: str) -> None:
    if not gin_files:
        raise common.UsageError(f"{command} needs --gin_file=... (e.g. {example}).")
    common.register_run_configurables()
    common.parse_gin(gin_files, bindings)


@common.command("train", "pretrain (t5x style: --gin_file=models/small.gin --gin_file=runs/pretrain.gin "
                "--gin.MODEL_DIR=...)")
def train(args, gin_files, bindings) -> dict:
    _parse_run_gin("train", gin_files, bindings, "models/small.gin and runs/pretrain.gin")
    return run_training(common.gin_model_config())


@common.command("finetune", "fine-tune a checkpoint (--gin_file=runs/finetune.gin "
                "--gin.INITIAL_CHECKPOINT_PATH=...)")
def finetune(args, gin_files, bindings) -> dict:
    """INITIAL_CHECKPOINT_PATH's model: its shape from its config.json, unless a models/*.gin is given."""
    _parse_run_gin("finetune", gin_files, bindings, "runs/finetune.gin")
    initial = common.call_configurable("train_config").initial_checkpoint_path
    if not initial:
        raise common.UsageError("finetune needs --gin.INITIAL_CHECKPOINT_PATH=\"'MODEL_DIR/checkpoint_<step>'\".")
    if common.macro_defined("MODEL_SHAPE"):
        return run_training(common.gin_model_config())  # the trainer checks it against the checkpoint's shape
    storage.check_reachable([storage.Remote("INITIAL_CHECKPOINT_PATH", initial, "dir")])
    from t5scale.train.checkpoints import resolve_checkpoint

    saved = json.loads((resolve_checkpoint(initial, "INITIAL_CHECKPOINT_PATH").parent / "config.json").read_text())
    dropout_rate = common.macro_value("DROPOUT_RATE", FINETUNE_DROPOUT)
    return run_training(ModelConfig.from_dict(saved["model"]).replace(dropout_rate=dropout_rate))


def _task_evaluator(data_cfg, train_cfg):
    """For train_config.task_eval_every: t5scale.evaluate on the run's task (validation split; each feature's longest
    example, as `t5scale eval`; the training batch size, which the data axis divides, unless `eval_config.*` binds
    them), into MODEL_DIR/task_eval/."""
    if not train_cfg.task_eval_every:
        return None
    from t5scale.evaluate import evaluate_model

    cfg = common.call_configurable(
        "eval_config", checkpoint_path=train_cfg.model_dir, mixture_or_task_name=data_cfg.mixture_or_task_name,
        output_dir=f"{train_cfg.model_dir.rstrip('/')}/task_eval",
        **({} if common.is_bound("eval_config.batch_size") else {"batch_size": data_cfg.batch_size}))

    def evaluate(model, step: int, mesh):
        return evaluate_model(model, step, cfg, checkpoint=f"{train_cfg.model_dir}/checkpoint_{step}", mesh=mesh)

    return evaluate


def run_training(model_cfg: ModelConfig) -> dict:
    """Train with the parsed gin configuration; every gs:// path is checked before anything is written."""
    from t5scale.data.registry import get_task_or_mixture
    from t5scale.data.tasks import remote_inputs
    from t5scale.train import distributed
    from t5scale.train.trainer import train as train_loop

    data_cfg = common.call_configurable("data_config")
    train_cfg = common.call_configurable("train_config")
    provider = get_task_or_mixture(data_cfg.mixture_or_task_name)
    storage.check_reachable([
        *remote_inputs(provider, data_cfg.tfds_data_dir),
        storage.Remote("MODEL_DIR", train_cfg.model_dir, "output"),
        *([storage.Remote("INITIAL_CHECKPOINT_PATH", train_cfg.initial_checkpoint_path, "dir")]
          if train_cfg.initial_checkpoint_path else []),
    ])
    distributed.maybe_initialize()  # before anything asks JAX for devices

    vocab_size = provider.output_features["targets"].vocabulary.vocab_size
    # The embedding covers the task's vocabulary, padded to a multiple of 128 (32100 -> 32128 for T5's).
    model_cfg = model_cfg.replace(vocab_size=-(-vocab_size // 128) * 128)
    print(f"t5scale: {model_cfg.name or 'a custom shape'} ({count_params(model_cfg).total / 1e6:.1f}M params) on "
          f"{data_cfg.mixture_or_task_name}, {train_cfg.train_steps} steps of {data_cfg.batch_size} -> "
          f"{train_cfg.model_dir}" + (f", from {train_cfg.initial_checkpoint_path}"
                                      if train_cfg.initial_checkpoint_path else ""))
    result = train_loop(model_cfg=model_cfg, data_cfg=data_cfg, optim_cfg=common.call_configurable("optim_config"),
                        mesh_cfg=common.call_configurable("mesh_config"), train_cfg=train_cfg,
                        gin_config=gin.config_str(), task_evaluator=_task_evaluator(data_cfg, train_cfg))
    # No loss when no step ran: a rerun of a finished run (its budget already spent) resumes and stops at once.
    last_loss = f"{result.last_loss:.4f}" if result.last_loss is not None else "none (no step ran: already finished)"
    print(f"stopped at step {result.step} ({result.ended_by}); last training loss {last_loss}; "
          f"checkpoints, config.json, metrics.jsonl and TensorBoard events in {result.model_dir}")
    if result.target_tokens_per_s:
        mfu = f"{result.mfu:.1%} ({result.mfu_peak})" if result.mfu is not None else f"unknown ({result.mfu_peak})"
        print(f"throughput over the last logged steps (at most {train_cfg.log_every}): "
              f"{result.target_tokens_per_s:,.0f} target tokens/s, MFU {mfu}")
    return dataclasses.asdict(result)
