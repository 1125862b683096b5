"""The `t5scale` entry point. Importing the command modules registers their commands (see `common.command`).

    t5scale shapes small small-el16 base-nl36 [--json]
    t5scale train --gin_file=models/small.gin --gin_file=runs/pretrain.gin --gin.MODEL_DIR="'/tmp/run'"
    t5scale finetune --gin_file=runs/finetune.gin --gin.INITIAL_CHECKPOINT_PATH="'/tmp/run/checkpoint_1000'" ...
    t5scale eval --gin_file=runs/eval.gin --gin.CHECKPOINT_PATH="'/tmp/ft/checkpoint_2000'" ...
    t5scale infer --checkpoint /tmp/ft --input_file inputs.jsonl --output_dir /tmp/ft/infer
    t5scale demo

Gin files resolve by their short names (`models/small.gin`) from the installed package, from any directory.
"""

from __future__ import annotations

import sys

from t5scale.cli import common, compress, convert, demo, evaluate, export, infer, plan, release, shapes, study, train  # noqa: F401  (each registers its commands)

# As `t5scale --help` lists them: the data flow.
ORDER = ("shapes", "plan", "train", "finetune", "eval", "infer", "sweep", "results", "pareto", "curves", "fit",
         "compress", "release", "export", "convert", "demo")
DESCRIPTION = ("Train T5 encoder-decoders of any shape, measure which shapes are worth it, ship them compressed. "
               "Gin flags t5x style: --gin_file=models/small.gin (repeatable, later wins), --gin.MACRO=value.")


def main(argv: list[str] | None = None) -> int:
    return common.run(sys.argv[1:] if argv is None else argv, DESCRIPTION, ORDER)


def entry_point() -> None:
    """The `t5scale` command: first restart with malloc tuned for XLA's per-step temporaries (t5scale.malloc)."""
    from t5scale.malloc import reexec_with_reused_memory

    reexec_with_reused_memory()
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
