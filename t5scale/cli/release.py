"""`t5scale release`: publish a checkpoint as a self-contained, checksummed bundle (local or gs://) that
`t5scale.load` opens.

    t5scale release runs/ft --to gs://bucket/releases/small-ft            # MODEL_DIR: its newest checkpoint
    t5scale release runs/ft/checkpoint_2000 --to /tmp/rel --dtype bfloat16
    t5scale release runs/compress/small/bits=8 --to gs://bucket/releases/small-ft-int8 --overwrite
"""

from __future__ import annotations

from t5scale.cli import common


def _arguments(parser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="a MODEL_DIR (its newest checkpoint), MODEL_DIR/checkpoint_<N>, or a compressed one")
    parser.add_argument("--to", required=True, metavar="DEST", help="gs://bucket/name or a local folder")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="how to store the params (a compressed checkpoint stays compressed)")
    parser.add_argument("--vocabulary", default=None, metavar="PATH",
                        help="the sentencepiece model, when the run's own cannot be read (e.g. a local copy of "
                             "T5's)")
    parser.add_argument("--metrics", default=None, metavar="PATH",
                        help="eval metrics.json to bundle (default: CHECKPOINT's eval/metrics.json if any)")
    parser.add_argument("--overwrite", action="store_true", help="replace a release already at DEST")


@common.command("release", "publish a checkpoint as a checksummed bundle (gs:// or local) for t5scale.load",
                _arguments)
def release(args, gin_files, bindings) -> dict:
    from t5scale.release import release as publish_release

    if gin_files or bindings:
        raise common.UsageError("release takes no gin flags: the shape and vocabulary come from the checkpoint's "
                                "run; use CHECKPOINT --to DEST.")
    manifest = publish_release(args.checkpoint, args.to, dtype=args.dtype, vocabulary=args.vocabulary,
                               metrics=args.metrics, overwrite=args.overwrite)
    files = manifest["files"]
    print(f"t5scale release: {args.to}: {len(files) + 1} files, {sum(f['bytes'] for f in files.values()):,} "
          f"bytes (manifest.json last); load it with t5scale.load({args.to!r})")
    return manifest
