"""The `t5scale` command. The only module that imports gin: gin files and `--gin.X=V` flags configure plain
functions here, which hand frozen dataclasses to the library.

    t5scale shapes small small-el16 base-nl36 [--json]
    t5scale shapes --gin_file=gin/models/small.gin --gin.EL=16
    t5scale train --gin_file=gin/models/small.gin --gin_file=gin/runs/pretrain.gin --gin.MODEL_DIR="'/tmp/run'"
    t5scale finetune --gin_file=gin/runs/finetune.gin --gin.INITIAL_CHECKPOINT_PATH="'/tmp/run/checkpoint_1000'" ...
    t5scale eval --gin_file=gin/runs/eval.gin --gin.CHECKPOINT_PATH="'/tmp/ft/checkpoint_2000'" ...
    t5scale demo
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import sys
import time

import gin
from t5scale import config as config_lib
from t5scale.model.flops import PRETRAIN_LENGTHS, count_params, training_flops

GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin"
DEMO_SHAPES = ("tiny", "small", "small-el16", "small-nl16", "base", "base-nl36", "large", "v1_1-base")


class UsageError(Exception):
    """Bad command-line input; printed as one line, no traceback."""


# --- gin at the edge -------------------------------------------------------------------------------------------

def model_config(shape: str = "small", EL=None, DL=None, NL=None, DM=None, KV=None, NH=None, FF=None,  # noqa: N803
                 dropout_rate: float = 0.0, dtype: str = "float32", scan_layers: bool = True,
                 remat: str = "none") -> config_lib.ModelConfig:
    """A shape by name, then single operators (None keeps the shape's value). Bound by gin/models/*.gin."""
    operators = {k: v for k, v in dict(EL=EL, DL=DL, NL=NL, DM=DM, KV=KV, NH=NH, FF=FF).items() if v is not None}
    return config_lib.shape(shape, **operators, dropout_rate=dropout_rate, dtype=dtype, scan_layers=scan_layers,
                            remat=remat)


def _tolerate_namespace_packages() -> None:
    """gin also looks for `a/b.gin` inside a Python package `a`; when `a` resolves to a namespace package (any
    folder `a/` in the working directory, like the demo's `runs/`) its check raises TypeError instead of saying
    "not here". Make that check say "not here", so gin goes on to its search path."""
    from gin import config as gin_config
    from gin import resource_reader

    for i, (reader, exists) in enumerate(gin_config._FILE_READERS):
        if exists is resource_reader.system_path_file_exists:
            def exists_or_not(path, exists=exists):
                try:
                    return exists(path)
                except TypeError:
                    return False

            gin_config._FILE_READERS[i] = (reader, exists_or_not)


_tolerate_namespace_packages()


def parse_gin(gin_files: list[str], bindings: list[str]) -> None:
    """Parse gin files (later wins) then bindings, t5x style. Errors become one UsageError line.

    A macro set on the command line (`--gin.EL=16`) must be defined by a parsed gin file: gin itself would accept
    a misspelt macro and silently ignore it.
    """
    gin.clear_config()
    gin.add_config_file_search_path(str(GIN_DIR))
    for path in gin_files:
        if not (pathlib.Path(path).exists() or (GIN_DIR / path).exists()):
            raise UsageError(f"gin file {path!r} not found (searched ., {GIN_DIR}).")
    # gin logs every search-path miss of an include at ERROR level before it finds the file; real failures raise.
    logging.disable(logging.ERROR)
    try:
        try:
            gin.parse_config_files_and_bindings(gin_files, [], finalize_config=False)
        except Exception as error:  # gin raises many kinds; the user needs the message, not the stack.
            raise UsageError(f"bad gin file among {gin_files}: {_first_line(error)}") from None
        for binding in bindings:
            _parse_binding(binding)
    finally:
        logging.disable(logging.NOTSET)


def _parse_binding(binding: str) -> None:
    name = binding.split("=", 1)[0].strip()
    if "." not in name and "/" not in name and not _macro_defined(name):
        raise UsageError(f"--gin.{binding}: no gin file defines the macro {name!r} (misspelt?).")
    try:
        gin.parse_config(binding)
    except Exception as error:
        message = _first_line(error)
        if "malformed node" in message:
            message = "the value is not a Python literal (quote strings: --gin.MODEL_SHAPE=\"'small'\")"
        raise UsageError(f"--gin.{binding}: {message}") from None


def _macro_defined(name: str) -> bool:
    try:
        gin.query_parameter(f"{name}/macro.value")
        return True
    except ValueError:
        return False


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0].split(" In call to configurable")[0] if lines else type(error).__name__


gin.external_configurable(model_config, "model_config", module=None)


def gin_model_config() -> config_lib.ModelConfig:
    return _call_configurable("model_config")


def _call_configurable(name: str):
    try:
        return gin.get_configurable(name)()
    except (ValueError, TypeError) as error:
        raise UsageError(_first_line(error)) from None


def _register_run_configurables() -> None:
    """The run's dataclasses, configurable by gin under t5x-like names (the library itself never sees gin)."""
    from t5scale.data.pipeline import DataConfig
    from t5scale.train.optim import OptimConfig
    from t5scale.train.partitioning import MeshConfig
    from t5scale.train.trainer import TrainConfig

    for cls, name in ((DataConfig, "data_config"), (OptimConfig, "optim_config"), (MeshConfig, "mesh_config"),
                      (TrainConfig, "train_config")):
        if name not in _REGISTERED:
            gin.external_configurable(cls, name, module=None)
            _REGISTERED.add(name)


_REGISTERED: set[str] = set()


def split_gin_flags(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Pull t5x-style `--gin_file=F` and `--gin.NAME=VALUE` out of argv: (rest, files, bindings)."""
    rest, files, bindings = [], [], []
    args = iter(argv)
    for arg in args:
        if arg.startswith("--gin_file"):
            files.append(arg.split("=", 1)[1] if "=" in arg else next(args, ""))
        elif arg.startswith("--gin."):
            if "=" not in arg:
                raise UsageError(f"{arg!r}: write gin bindings as --gin.NAME=VALUE.")
            bindings.append(arg[len("--gin."):])
        else:
            rest.append(arg)
    return rest, files, bindings


# --- commands --------------------------------------------------------------------------------------------------

def shape_row(cfg: config_lib.ModelConfig) -> dict:
    params, flops = count_params(cfg), training_flops(cfg, *PRETRAIN_LENGTHS)
    return {
        "name": cfg.name, **cfg.operators(), "activation": cfg.activation.value, "tied": cfg.tie_embeddings,
        "params_m": round(params.total / 1e6, 1),
        "train_gflops_per_example": round(flops.total / 1e9, 1),
        "gflops_split": {k: round(getattr(flops, k) / 1e9, 1) for k in ("encoder", "decoder", "attention",
                                                                          "logits")},
    }


def format_table(rows: list[dict]) -> str:
    columns = ["name", "EL", "DL", "DM", "KV", "NH", "FF", "params_m", "train_gflops_per_example"]
    headers = ["shape", "EL", "DL", "DM", "KV", "NH", "FF", "params (M)", "train GFLOPs/ex @512/114"]
    cells = [headers] + [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def cmd_shapes(args, gin_files, bindings) -> None:
    configs = [config_lib.shape(name) for name in args.names]
    if gin_files or bindings:
        parse_gin(gin_files, bindings)
        configs.append(gin_model_config())
    if not configs:
        raise UsageError("name at least one shape (e.g. `t5scale shapes small base-nl36`) or pass --gin_file.")
    rows = [shape_row(cfg) for cfg in configs]
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))


def cmd_train(args, gin_files, bindings) -> dict:
    """Pretrain: gin files + bindings -> the library's dataclasses -> t5scale.train.trainer.train."""
    _parse_run_gin("train", gin_files, bindings, "gin/models/small.gin and gin/runs/pretrain.gin")
    return _run_training(gin_model_config())


def cmd_finetune(args, gin_files, bindings) -> dict:
    """Fine-tune INITIAL_CHECKPOINT_PATH's model: its shape from its config.json, unless a models/*.gin is given."""
    _parse_run_gin("finetune", gin_files, bindings, "gin/runs/finetune.gin")
    from t5scale.train.checkpoints import resolve_checkpoint

    initial = _call_configurable("train_config").initial_checkpoint_path
    if not initial:
        raise UsageError("finetune needs --gin.INITIAL_CHECKPOINT_PATH=\"'MODEL_DIR/checkpoint_<step>'\".")
    if _macro_defined("MODEL_SHAPE"):
        return _run_training(gin_model_config())  # the trainer checks it against the checkpoint's shape
    saved = json.loads((resolve_checkpoint(initial).parent / "config.json").read_text())["model"]
    dropout_rate = gin.query_parameter("DROPOUT_RATE/macro.value") if _macro_defined("DROPOUT_RATE") else 0.1
    return _run_training(config_lib.ModelConfig.from_dict(saved).replace(dropout_rate=dropout_rate))


def _parse_run_gin(command: str, gin_files: list[str], bindings: list[str], example: str) -> None:
    if not gin_files:
        raise UsageError(f"{command} needs --gin_file=... (e.g. {example}).")
    _register_run_configurables()
    parse_gin(gin_files, bindings)


def _run_training(model_cfg: config_lib.ModelConfig) -> dict:
    from t5scale.data.tasks import get_task_or_mixture
    from t5scale.train import distributed
    from t5scale.train.trainer import train

    distributed.maybe_initialize()  # before anything asks JAX for devices

    data_cfg = _call_configurable("data_config")
    train_cfg = _call_configurable("train_config")
    provider = get_task_or_mixture(data_cfg.mixture_or_task_name)
    vocab_size = provider.output_features["targets"].vocabulary.vocab_size
    # The embedding covers the task's vocabulary, padded to a multiple of 128 (32100 -> 32128 for T5's).
    model_cfg = model_cfg.replace(vocab_size=-(-vocab_size // 128) * 128)
    print(f"t5scale: {model_cfg.name or 'a custom shape'} ({count_params(model_cfg).total / 1e6:.1f}M params) on "
          f"{data_cfg.mixture_or_task_name}, {train_cfg.train_steps} steps of {data_cfg.batch_size} -> "
          f"{train_cfg.model_dir}" + (f", from {train_cfg.initial_checkpoint_path}"
                                      if train_cfg.initial_checkpoint_path else ""))
    result = train(model_cfg=model_cfg, data_cfg=data_cfg, optim_cfg=_call_configurable("optim_config"),
                   mesh_cfg=_call_configurable("mesh_config"), train_cfg=train_cfg, gin_config=gin.config_str())
    print(f"stopped at step {result.step} ({result.ended_by}); last training loss {result.last_loss:.4f}; "
          f"checkpoints, config.json, metrics.jsonl and TensorBoard events in {result.model_dir}")
    if result.target_tokens_per_s:
        mfu = f"{result.mfu:.1%} ({result.mfu_peak})" if result.mfu is not None else f"unknown ({result.mfu_peak})"
        print(f"throughput over the last logged steps (at most {train_cfg.log_every}): "
              f"{result.target_tokens_per_s:,.0f} target tokens/s, MFU {mfu}")
    return dataclasses.asdict(result)


def cmd_eval(args, gin_files, bindings) -> dict:
    """A checkpoint on a task or mixture: per-task metrics and benchmark averages, as JSON and a table."""
    from t5scale.evaluate import EvalConfig, evaluate, format_table

    if "eval_config" not in _REGISTERED:
        gin.external_configurable(EvalConfig, "eval_config", module=None)
        _REGISTERED.add("eval_config")
    if not gin_files:
        raise UsageError("eval needs --gin_file=... (e.g. gin/runs/eval.gin).")
    parse_gin(gin_files, bindings)
    cfg = _call_configurable("eval_config")
    print(f"t5scale eval: {cfg.checkpoint_path} on {cfg.mixture_or_task_name} ({cfg.split})")
    summary = evaluate(cfg)
    print(format_table(summary))
    print(f"metrics: {cfg.output_dir}/metrics.json; predictions: {cfg.output_dir}/*.jsonl")
    return summary


def cmd_demo(args, gin_files, bindings) -> None:
    """Embedded default: the shape table, then pretrain -> fine-tune -> eval of a tiny shape on this machine."""
    print("t5scale demo 1/3: named shapes (params and training FLOPs from the config alone)\n")
    print(format_table([shape_row(config_lib.shape(name)) for name in DEMO_SHAPES]))
    model_dir = f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"

    print("\nt5scale demo 2/3: pretraining on span corruption of CPython's own prose (gin/runs/demo.gin)")
    result = cmd_train(args, ["runs/demo.gin", *gin_files], [f"MODEL_DIR='{model_dir}'", *bindings])
    losses = [json.loads(line)["loss"] for line in pathlib.Path(result["model_dir"], "metrics.jsonl").open()]
    print(f"training loss: first step {losses[0]:.3f}, last step {losses[-1]:.3f} "
          f"(mean of first 10 {sum(losses[:10]) / 10:.3f}, last 10 {sum(losses[-10:]) / 10:.3f})")

    print("\nt5scale demo 3/3: fine-tuning it on embedded_sst2, SST-2's format on sentences of CPython's docs "
          "(gin/runs/demo_finetune.gin), then evaluating")
    finetuned = f"{model_dir}/finetune"
    cmd_finetune(args, ["runs/demo_finetune.gin"], [f"MODEL_DIR='{finetuned}'",
                                                    f"INITIAL_CHECKPOINT_PATH='{model_dir}'"])
    cmd_eval(args, ["runs/eval.gin"], [f"CHECKPOINT_PATH='{finetuned}'", "MIXTURE_OR_TASK_NAME='embedded_sst2'",
                                       f"EVAL_OUTPUT_DIR='{finetuned}/eval'"])
    from t5scale.data.finetune_tasks import demo_examples

    labels = [example["label"] for example in demo_examples("validation")]
    majority = 100 * max(labels.count(0), labels.count(1)) / len(labels)
    print(f"(always answering the more frequent label would score {majority:.2f})")
    print(f"TensorBoard: tensorboard --logdir {model_dir}")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t5scale", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    shapes = commands.add_parser("shapes", help="operators, params and training FLOPs of named shapes")
    shapes.add_argument("names", nargs="*", help="shape names, e.g. small-el16 base-nl36 v1_1-base")
    shapes.add_argument("--json", action="store_true", help="print JSON instead of a table")
    shapes.set_defaults(run=cmd_shapes)
    train = commands.add_parser("train", help="pretrain (t5x style: --gin_file=... --gin.MACRO=value)")
    train.set_defaults(run=cmd_train)
    finetune = commands.add_parser("finetune", help="fine-tune a checkpoint (--gin_file=gin/runs/finetune.gin)")
    finetune.set_defaults(run=cmd_finetune)
    evaluate = commands.add_parser("eval", help="metrics of a checkpoint on tasks (--gin_file=gin/runs/eval.gin)")
    evaluate.set_defaults(run=cmd_eval)
    demo = commands.add_parser("demo", help="shape table; pretrain, fine-tune, eval a tiny shape here")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        rest, gin_files, bindings = split_gin_flags(sys.argv[1:] if argv is None else argv)
        args = make_parser().parse_args(rest)
        args.run(args, gin_files, bindings)
    except (UsageError, ValueError, NotImplementedError, FileNotFoundError) as error:
        print(f"t5scale: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        if type(error).__name__ != "NonFiniteLossError":
            raise
        print(f"t5scale: error: {error}", file=sys.stderr)
        return 3
    return 0


def entry_point() -> None:
    """The `t5scale` command: first restart with malloc tuned for XLA's per-step temporaries (t5scale.malloc)."""
    from t5scale.malloc import reexec_with_reused_memory

    reexec_with_reused_memory()
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
