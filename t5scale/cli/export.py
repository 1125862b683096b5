"""`t5scale export`: a serving artifact of a checkpoint that runs without t5scale (docs/export.md).

    t5scale export gs://bucket/releases/small-ft --to /models/t5 --batch 8 --input_length 512 --output_length 64
    t5scale export runs/ft --to /models/t5-beam --beam_size 4 --alpha 0.6 --format saved_model --overwrite
    t5scale export runs/ft --to /models/t5-sample --temperature 0.7 --top_p 0.9
"""

from __future__ import annotations

from t5scale.cli import common


def _arguments(parser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="what t5scale.load reads: a release, a MODEL_DIR or checkpoint_<N>, a compressed one")
    parser.add_argument("--to", required=True, metavar="DIR", help="the export folder (local or gs://)")
    parser.add_argument("--batch", type=int, default=8, help="rows per call of the fixed-shape program")
    parser.add_argument("--input_length", type=int, default=512, help="input tokens per row, EOS included")
    parser.add_argument("--output_length", type=int, default=64, help="generated tokens per row")
    parser.add_argument("--beam_size", type=int, default=1, help="1: greedy decoding; more: beam search")
    parser.add_argument("--alpha", type=float, default=0.6, help="beam search's length penalty (t5x's)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="> 0: sample at this temperature (the program then takes a seed); 0: greedy or beam")
    parser.add_argument("--top_k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    parser.add_argument("--top_p", type=float, default=1.0, help="sample within the top-p nucleus (1: all)")
    parser.add_argument("--format", default="both", choices=("jax", "saved_model", "both"),
                        help="jax.export program, TensorFlow SavedModel, or both")
    parser.add_argument("--platforms", default="cpu,cuda,tpu",
                        help="comma-separated platforms the program is lowered for (of cpu, cuda, rocm, tpu)")
    parser.add_argument("--vocabulary", default=None, metavar="PATH",
                        help="the sentencepiece model, when the checkpoint's own cannot be read")
    parser.add_argument("--overwrite", action="store_true", help="replace an export already at DIR")


@common.command("export", "write a serving artifact (jax.export program, TF SavedModel) of a checkpoint", _arguments)
def export(args, gin_files, bindings) -> dict:
    from t5scale.export import FORMATS, DecodeSettings
    from t5scale.export import export as write_export

    if gin_files or bindings:
        raise common.UsageError("export takes no gin flags: the shape and vocabulary come from the checkpoint; use "
                                "CHECKPOINT --to DIR and the flags of `t5scale export --help`.")
    settings = DecodeSettings(batch=args.batch, input_length=args.input_length, output_length=args.output_length,
                              beam_size=args.beam_size, alpha=args.alpha, temperature=args.temperature,
                              top_k=args.top_k, top_p=args.top_p,
                              platforms=tuple(p.strip() for p in args.platforms.split(",") if p.strip()))
    formats = FORMATS if args.format == "both" else (args.format,)
    manifest = write_export(args.checkpoint, args.to, settings, formats=formats, vocabulary=args.vocabulary,
                            overwrite=args.overwrite)
    files = manifest["files"]
    print(f"t5scale export: {args.to}: {settings.method} decoding of {settings.batch} x {settings.input_length} -> "
          f"{settings.output_length} tokens; {len(files) + 1} files, {sum(f['bytes'] for f in files.values()):,} "
          f"bytes (manifest.json last)")
    return manifest
