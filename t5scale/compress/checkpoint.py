"""Compressed checkpoints written to disk (local or gs://), and their bytes. Reading them back (`load_any`,
`read_compressed`) and the folder's layout are `t5scale.weights.load`'s: below `evaluate`, which reads them too.

safetensors stores raw little-endian bytes after a JSON header, uncompressed, so the bytes on disk are the arrays'
bytes plus a header; the float32 baseline is written the same way (`Setting(bits=None)`).
"""

from __future__ import annotations

import json

import numpy as np
from etils import epath
from safetensors import numpy as safetensors_numpy

from t5scale.compress.settings import Setting
from t5scale.config import ModelConfig
from t5scale.weights.load import COMPRESSION, CONFIG, FORMAT, LAYOUT_KEY, PARAMS


def save_compressed(directory: str, cfg: ModelConfig, tensors: dict[str, np.ndarray], layout: dict,
                    setting: Setting, source: str, step: int) -> epath.Path:
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / COMPRESSION).unlink(missing_ok=True)  # incomplete until rewritten below
    arrays = {name: np.ascontiguousarray(value) for name, value in tensors.items()}
    (directory / PARAMS).write_bytes(safetensors_numpy.save(arrays, metadata={LAYOUT_KEY: json.dumps(layout)}))
    (directory / CONFIG).write_text(json.dumps({"model": cfg.to_dict()}, indent=1) + "\n")
    (directory / COMPRESSION).write_text(json.dumps(
        {"format": FORMAT, "setting": setting.to_dict(), "source": str(source), "step": step}, indent=1) + "\n")
    return directory


def stored_bytes(directory: str) -> dict[str, int]:
    """{"params": size of params.safetensors, "total": every file of the folder} in bytes, as on disk."""
    directory = epath.Path(directory)
    sizes = {p.name: p.stat().length for p in directory.iterdir() if p.is_file()}
    return {"params": sizes[PARAMS], "total": sum(sizes.values())}
