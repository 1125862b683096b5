"""`t5scale shapes`: operators, parameters and training FLOPs of named shapes, from the config alone.

    t5scale shapes small small-el16 base-nl36 [--json]
    t5scale shapes --gin_file=models/small.gin --gin.EL=16
"""

from __future__ import annotations

import json

from t5scale import config as config_lib
from t5scale.cli import common
from t5scale.model.flops import PRETRAIN_LENGTHS, count_params, training_flops


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


def _arguments(parser) -> None:
    parser.add_argument("names", nargs="*", help="shape names, e.g. small-el16 base-nl36 v1_1-base")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


@common.command("shapes", "operators, params and training FLOPs of named shapes", _arguments)
def shapes(args, gin_files, bindings) -> list[dict]:
    configs = [config_lib.shape(name) for name in args.names]
    if gin_files or bindings:
        common.parse_gin(gin_files, bindings)
        configs.append(common.gin_model_config())
    if not configs:
        raise common.UsageError("name at least one shape (e.g. `t5scale shapes small base-nl36`) or pass "
                                "--gin_file.")
    rows = [shape_row(cfg) for cfg in configs]
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return rows
