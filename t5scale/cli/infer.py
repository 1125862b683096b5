"""`t5scale infer`: decode (or score) a whole dataset into JSONL shards, resumably (t5x's infer.py).

    t5scale infer --checkpoint runs/ft --input_file questions.jsonl --input_field question --output_dir runs/ft/out
    t5scale infer --gin_file=runs/infer.gin --gin.CHECKPOINT_PATH="'gs://b/ft'" \
        --gin.MIXTURE_OR_TASK_NAME="'glue_sst2_v002'" --gin.INFER_OUTPUT_DIR="'gs://b/ft/infer'"

Without --gin_file, runs/infer.gin. A flag wins over the gin binding of the same field. Like `t5scale eval`, every
host of a multi-host run runs the same command: each decodes its share of every batch and process 0 writes.
"""

from __future__ import annotations

from t5scale.cli import common

# flag -> InferConfig field; None (a flag left out) keeps gin's value.
FLAGS = {"checkpoint": "checkpoint_path", "output_dir": "output_dir", "task": "mixture_or_task_name",
         "tfds_name": "tfds_name", "input_file": "input_file", "split": "split", "input_field": "input_field",
         "id_field": "id_field", "target_field": "target_field", "num_examples": "num_examples", "mode": "mode",
         "batch_size": "batch_size", "beam_size": "beam_size", "shards": "shards",
         "rows_per_shard": "rows_per_shard", "vocabulary": "vocabulary", "narrow": "narrow",
         "temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "seed": "seed"}


def _arguments(parser) -> None:
    parser.add_argument("--checkpoint", help="MODEL_DIR, checkpoint_<N>, compressed checkpoint or release "
                        "(or --gin.CHECKPOINT_PATH)")
    parser.add_argument("--output_dir", help="where the predictions-*.jsonl shards go (or --gin.INFER_OUTPUT_DIR)")
    parser.add_argument("--task", help="seqio task or mixture (or --gin.MIXTURE_OR_TASK_NAME)")
    parser.add_argument("--tfds_name", help="a TFDS dataset, e.g. glue/sst2:2.0.0 (with --input_field)")
    parser.add_argument("--input_file", help="comma-separated files or globs, local or gs://: .jsonl, .tsv, or "
                        "plain text (one input a line)")
    parser.add_argument("--split", help="of the task or TFDS dataset (default test)")
    parser.add_argument("--input_field", help="JSONL key or TFDS feature of the inputs (default inputs); TSV: a "
                        "column number (default 0)")
    parser.add_argument("--id_field", help="written with each row as its id")
    parser.add_argument("--target_field", help="the targets --mode score scores")
    parser.add_argument("--num_examples", type=int, help="the first N inputs only")
    parser.add_argument("--mode", choices=("predict", "score"), help="predict (default) or score given targets")
    parser.add_argument("--batch_size", type=int, help="global batch (or --gin.BATCH_SIZE; default 32)")
    parser.add_argument("--beam_size", type=int, help="1: greedy (default)")
    parser.add_argument("--temperature", type=float, help="> 0: sample instead of greedy decoding (default 0)")
    parser.add_argument("--top_k", type=int, help="sample among the k most likely tokens (default 0: all)")
    parser.add_argument("--top_p", type=float, help="sample within the nucleus of probability p (default 1: all)")
    parser.add_argument("--seed", type=int, help="sampling seed; a row draws from it and its index (default 0)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--shards", type=int, help="this many output shards")
    group.add_argument("--rows_per_shard", type=int, help="rows per output shard (default 4096)")
    parser.add_argument("--vocabulary", help="a sentencepiece model, for a checkpoint that names none")
    parser.add_argument("--narrow", choices=("int8", "int8-dynamic", "bfloat16"),
                        help="hold the weights narrow while decoding (one device)")


@common.command("infer", "decode or score a dataset into JSONL shards (--checkpoint ... --input_file ... "
                "--output_dir ...)", _arguments)
def infer(args, gin_files, bindings) -> dict | None:
    from t5scale import storage
    from t5scale.infer.run import InferConfig
    from t5scale.infer.run import infer as run_inference
    from t5scale.train import distributed
    from t5scale.train.partitioning import MeshConfig

    common.configurable(InferConfig, "infer_config")
    common.configurable(MeshConfig, "mesh_config")
    flags = {field: getattr(args, flag) for flag, field in FLAGS.items() if getattr(args, flag, None) is not None}
    if "shards" in flags:
        flags["rows_per_shard"] = None
    # Flags as gin bindings after the user's: they win, and a field they set is no longer %gin.REQUIRED.
    common.parse_gin(gin_files or ["runs/infer.gin"],
                     [*bindings, *(f"infer_config.{field}={value!r}" for field, value in flags.items())])
    cfg = common.call_configurable("infer_config")
    storage.check_reachable([storage.Remote("CHECKPOINT_PATH", cfg.checkpoint_path, "dir"),
                             storage.Remote("INFER_OUTPUT_DIR", cfg.output_dir, "output")])
    distributed.maybe_initialize()  # before anything asks JAX for devices
    source = cfg.mixture_or_task_name or cfg.tfds_name or cfg.input_file
    print(f"t5scale infer: {cfg.checkpoint_path} on {source} ({cfg.mode})")
    summary = run_inference(cfg, common.call_configurable("mesh_config"))
    if summary is not None:  # process 0
        skipped = f"; {summary['skipped_shards']} shard(s) were already done" if summary["skipped_shards"] else ""
        print(f"infer: {summary['summary']}{skipped}")
        print(f"predictions: {cfg.output_dir}/predictions-*-of-{summary['shards']:05d}.jsonl")
    return summary
