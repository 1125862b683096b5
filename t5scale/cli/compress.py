"""`t5scale compress`: compress fine-tuned checkpoints several ways, store each as a small checkpoint, evaluate it on
a task, and tabulate and plot accuracy against bytes (one curve per checkpoint, the frontier over all).

    t5scale compress --checkpoint runs/small/ft runs/base/ft --task glue_mnli_v002 --output_dir runs/compress \
        --settings bits=8 bits=4 bits=8,sparsity=0.5 bits=8,groups=attention+mlp

A setting is key=value pairs (t5scale.compress.settings): bits 8/6/4/2/float, sparsity in [0, 1), groups among
attention+mlp+embedding, granularity channel/tensor/group (+ group_size), prune matrix/global. Every checkpoint is
also stored and evaluated as float32, the baseline of the bytes ratio. From code (the demo):
`common.run_command("compress", checkpoints=[...], task=..., output_dir=..., settings=[...])`; options left out take
the defaults below.
"""

from __future__ import annotations

from t5scale.cli import common

DEFAULTS = {"settings": ["bits=8", "bits=8,groups=attention+mlp", "bits=4", "bits=4,groups=attention+mlp"],
            "split": "validation", "batch_size": 32, "num_examples": None}


def _arguments(parser) -> None:
    parser.add_argument("--checkpoint", dest="checkpoints", nargs="+", required=True, metavar="PATH",
                        help="MODEL_DIRs or MODEL_DIR/checkpoint_<N>, one per model size")
    parser.add_argument("--task", required=True, help="seqio task or mixture to evaluate on, e.g. embedded_sst2")
    parser.add_argument("--output_dir", required=True, help="where the compressed checkpoints and results go")
    parser.add_argument("--settings", nargs="+", default=DEFAULTS["settings"], metavar="SPEC",
                        help="e.g. bits=8 bits=4,sparsity=0.5 bits=4,groups=attention+mlp,granularity=tensor "
                             f"(default: {' '.join(DEFAULTS['settings'])})")
    parser.add_argument("--split", default=DEFAULTS["split"])
    parser.add_argument("--batch_size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--num_examples", type=int, default=DEFAULTS["num_examples"],
                        help="evaluate only the first N examples of each task (default: all)")


@common.command("compress", "quantize / prune checkpoints, store them small, evaluate: accuracy vs bytes",
                _arguments)
def compress(args, gin_files, bindings) -> list[dict]:
    from t5scale import storage
    from t5scale.compress.plot import plot_accuracy_vs_bytes
    from t5scale.compress.settings import parse_setting
    from t5scale.compress.study import StudyConfig, format_table, run_study
    from t5scale.data.registry import get_task_or_mixture
    from t5scale.data.tasks import remote_inputs

    if gin_files or bindings:
        raise common.UsageError("compress takes no gin flags: the shapes come from the checkpoints' config.json; "
                                "use --checkpoint, --task, --output_dir, --settings.")
    options = {**DEFAULTS, **{k: v for k, v in vars(args).items() if k not in ("command", "run")}}
    settings = tuple(parse_setting(spec) for spec in options["settings"])
    cfg = StudyConfig(checkpoints=tuple(options["checkpoints"]), task=options["task"],
                      output_dir=options["output_dir"], settings=settings, split=options["split"],
                      batch_size=options["batch_size"], num_examples=options["num_examples"])
    storage.check_reachable([*remote_inputs(get_task_or_mixture(cfg.task)),
                             *(storage.Remote("--checkpoint", path, "dir") for path in cfg.checkpoints),
                             storage.Remote("--output_dir", cfg.output_dir, "output")])
    print(f"t5scale compress: {len(cfg.checkpoints)} checkpoint(s) x float32 + {len(settings)} setting(s) "
          f"({', '.join(s.name for s in settings)}), evaluated on {cfg.task} ({cfg.split})")
    rows = run_study(cfg)
    metrics = sorted({name for row in rows for values in row["metrics"].values() for name in values})
    plot_accuracy_vs_bytes(rows, f"{cfg.output_dir}/accuracy_vs_bytes.png",
                           quality_label=f"{cfg.task}: mean of {', '.join(metrics)}")
    print(f"score: {cfg.task}'s {' and '.join(metrics)}" + (" (their mean)" if len(metrics) > 1 else ""))
    print(format_table(rows))
    print(f"results: {cfg.output_dir}/results.csv, results.json; figure: {cfg.output_dir}/accuracy_vs_bytes.png")
    return rows
