"""Loading a model from any t5scale checkpoint: a compressed folder (local or gs://) or an ordinary one.

A compressed checkpoint (written by `t5scale.compress.checkpoint.save_compressed`) is a folder:
    params.safetensors   the arrays of `t5scale.compress.compressed` (codes, scales, bitmasks, float tensors) and, in
                         the header's metadata, the layout that says how each parameter is stored
    config.json          {"model": ModelConfig fields}, as in a MODEL_DIR, so the shape is known
    compression.json     the setting, the source checkpoint and its step; written last: it marks a complete folder

    model, checkpoint, step = load_any("runs/ft")             # MODEL_DIR, checkpoint_<N>, or a compressed folder
"""

from __future__ import annotations

import json

import numpy as np
from etils import epath
from safetensors import numpy as safetensors_numpy

from t5scale.config import ModelConfig
from t5scale.weights.compressed_format import decompress_params

PARAMS, CONFIG, COMPRESSION = "params.safetensors", "config.json", "compression.json"
FORMAT = "t5scale-compressed-v1"
LAYOUT_KEY = "t5scale_layout"  # params.safetensors' metadata entry holding the layout, as JSON


def is_compressed(path: str) -> bool:
    return (epath.Path(path) / COMPRESSION).exists()


def read_compressed(directory: str) -> tuple[ModelConfig, dict[str, np.ndarray], dict]:
    """(model config, float32 flat params dequantized, compression.json) of a compressed checkpoint."""
    directory = epath.Path(directory)
    info = json.loads((directory / COMPRESSION).read_text())
    if info.get("format") != FORMAT:
        raise ValueError(f"{directory} holds compressed format {info.get('format')!r}; this t5scale reads {FORMAT}.")
    data = (directory / PARAMS).read_bytes()
    tensors = safetensors_numpy.load(data)
    layout = json.loads(_metadata(data)[LAYOUT_KEY])
    cfg = ModelConfig.from_dict(json.loads((directory / CONFIG).read_text())["model"])
    return cfg, decompress_params(tensors, layout), info


def _metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file's header (8-byte little-endian length, then JSON)."""
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + length])["__metadata__"]


def model_from_flat(cfg: ModelConfig, flat: dict[str, np.ndarray]):
    from t5scale import abstract_model
    from t5scale.model.layout import load_flat_params

    model = abstract_model(cfg)
    load_flat_params(model, flat)
    return model


def load_any(path: str, *, mesh=None, rules: str = "t5x", **config_changes):
    """(T5, checkpoint path, step) from a compressed folder (weights dequantized to float32) or a t5scale checkpoint
    (`MODEL_DIR/checkpoint_<N>` or a MODEL_DIR: its newest). With a `mesh`, the parameters come back placed on it by
    the `rules`; a t5scale checkpoint is then read shard by shard, each host the shards its devices hold.
    `config_changes` as in `load_model` (dtype, dropout)."""
    from t5scale.train.checkpoints import load_model
    from t5scale.train.partitioning import place_on_mesh

    if is_compressed(path):
        cfg, flat, info = read_compressed(path)
        model = model_from_flat(cfg.replace(**config_changes), flat)
        if mesh is not None:
            place_on_mesh(model, mesh, rules)
        return model, epath.Path(path), int(info["step"])
    model, checkpoint = load_model(path, mesh=mesh, rules=rules, **config_changes)
    return model, checkpoint, int(checkpoint.name.removeprefix("checkpoint_"))
