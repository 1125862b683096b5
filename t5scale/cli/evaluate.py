"""`t5scale eval`: metrics of a checkpoint on tasks, as JSON and a table.

    t5scale eval --gin_file=runs/eval.gin --gin.CHECKPOINT_PATH="'/tmp/ft/checkpoint_2000'" \
        --gin.MIXTURE_OR_TASK_NAME="'glue_v002_proportional'" --gin.EVAL_OUTPUT_DIR="'/tmp/ft/eval'"

Like `t5scale train`, every host of a multi-host run runs the same command: the parameters are placed on the mesh
(`mesh_config.*`), each host decodes its share of every batch, and process 0 writes the metrics.
"""

from __future__ import annotations

from t5scale import storage
from t5scale.cli import common


@common.command("eval", "metrics of a checkpoint on tasks (--gin_file=runs/eval.gin --gin.CHECKPOINT_PATH=...)")
def evaluate(args, gin_files, bindings) -> dict:
    from t5scale.data.registry import get_task_or_mixture
    from t5scale.data.tasks import remote_inputs
    from t5scale.evaluate import EvalConfig, format_table
    from t5scale.evaluate import evaluate as evaluate_checkpoint
    from t5scale.train import distributed
    from t5scale.train.partitioning import MeshConfig

    common.configurable(EvalConfig, "eval_config")
    common.configurable(MeshConfig, "mesh_config")
    if not gin_files:
        raise common.UsageError("eval needs --gin_file=... (e.g. runs/eval.gin).")
    common.parse_gin(gin_files, bindings)
    cfg = common.call_configurable("eval_config")
    storage.check_reachable([*remote_inputs(get_task_or_mixture(cfg.mixture_or_task_name)),
                             storage.Remote("CHECKPOINT_PATH", cfg.checkpoint_path, "dir"),
                             storage.Remote("EVAL_OUTPUT_DIR", cfg.output_dir, "output")])
    distributed.maybe_initialize()  # before anything asks JAX for devices
    print(f"t5scale eval: {cfg.checkpoint_path} on {cfg.mixture_or_task_name} ({cfg.split})")
    summary = evaluate_checkpoint(cfg, common.call_configurable("mesh_config"))
    if summary is not None:  # process 0
        print(format_table(summary))
        print(f"metrics: {cfg.output_dir}/metrics.json; predictions: {cfg.output_dir}/*.jsonl")
    return summary
