"""`t5scale convert mtf|t5x SOURCE --to DEST`: a Mesh TF or t5x checkpoint -> an ordinary t5scale checkpoint
(`DEST/config.json` + `DEST/checkpoint_<N>/state`), which `t5scale finetune` warm-starts from.

    t5scale convert mtf gs://bucket/bi_v1_sm_l8_law_03-13-04-05 --to /tmp/small-nl8
    t5scale convert mtf /ckpts/run/model.ckpt-524288 --to /tmp/run
    t5scale convert t5x gs://bucket/t5_1_1_base/checkpoint_1000000 --to /tmp/base --shape v1_1-base
"""

from __future__ import annotations

from t5scale import config as config_lib
from t5scale.cli import common
from t5scale.model.flops import count_params

FORMATS = ("mtf", "t5x")


def _arguments(parser) -> None:
    parser.add_argument("format", choices=FORMATS, help="mtf: Mesh TensorFlow (release folder or model.ckpt-N "
                        "prefix); t5x: a checkpoint_<N> folder or a MODEL_DIR")
    parser.add_argument("source", help="local path or gs://")
    parser.add_argument("--to", required=True, dest="dest", help="the t5scale MODEL_DIR to write")
    parser.add_argument("--shape", default=None, help="t5x only: the shape name the checkpoint must have (e.g. "
                        "v1_1-base); the shape is read off the arrays either way")


@common.command("convert", "import a Mesh TF or t5x checkpoint as a t5scale checkpoint", _arguments)
def convert(args, gin_files, bindings) -> dict:
    from t5scale.convert.output import write_checkpoint

    if gin_files or bindings:
        raise common.UsageError("convert takes no gin flags: the shape comes from the checkpoint (and, for Mesh TF, "
                                "its operative_config.gin read as text).")
    if args.format == "mtf":
        if args.shape:
            raise common.UsageError("--shape is for t5x; a Mesh TF shape comes from operative_config.gin and the "
                                    "release table.")
        from t5scale.convert.mtf import from_mtf

        model, located = from_mtf(args.source)
        source, step = located.prefix, located.step
    else:
        from t5scale.convert.t5x import from_t5x

        expected = config_lib.shape(args.shape) if args.shape else None
        model, checkpoint, step = from_t5x(args.source, expected)
        source = str(checkpoint)
    path = write_checkpoint(model, args.dest, step, {"format": args.format, "source": source, "step": step})
    cfg = model.cfg
    print(f"t5scale: {source} -> {path} ({cfg.name}: {' '.join(f'{k}{v}' for k, v in cfg.operators().items())}, "
          f"{count_params(cfg).total:,} params); warm-start with "
          f"--gin.INITIAL_CHECKPOINT_PATH=\"'{path}'\"")
    return {"checkpoint": str(path), "model": cfg.to_dict(), "source": source, "step": step}
