"""A compressed checkpoint's stored arrays back to float32: the reading side of `t5scale.compress.compressed`.

    approx = decompress_params(tensors, layout)       # same names and shapes as flat_params(model), float32

For each parameter `name`, `layout[name]` says how it is stored, and `tensors` holds:
- kept float:  `name`                          float32, as it was
- quantized:   `name/codes`, `name/scale`      codes packed two (4-bit) or four (2-bit) to a byte; int8 otherwise
- pruned:      + `name/mask`                   a bitmask, and the codes (or float32 `name/values`) of kept weights
                                                only, in row-major order
"""

from __future__ import annotations

import numpy as np

from t5scale.weights import packing

FLOAT, QUANTIZED, PRUNED = "float", "quantized", "pruned"  # the layout's kinds; PRUNED: sparse, still float


def dequantize(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Codes [..] and a scale of the same rank whose every axis divides the codes' one -> float32 weights."""
    expanded = scale
    for axis, (n, s) in enumerate(zip(codes.shape, scale.shape)):
        if s != n and s != 1:
            expanded = np.repeat(expanded, n // s, axis=axis)
    return codes.astype(np.float32) * expanded


def decompress_params(tensors: dict[str, np.ndarray], layout: dict) -> dict[str, np.ndarray]:
    """(tensors, layout) of `t5scale.compress.compressed.compress_params` -> float32 flat params, pruned weights 0."""
    return {name: _decompress(name, entry, tensors) for name, entry in layout.items()}


def _decompress(name: str, entry: dict, tensors: dict[str, np.ndarray]) -> np.ndarray:
    if entry["kind"] == FLOAT:
        return np.asarray(tensors[name], np.float32)
    shape = tuple(entry["shape"])
    mask = packing.unpack_mask(tensors[f"{name}/mask"], shape) if f"{name}/mask" in tensors else None
    if entry["kind"] == PRUNED:
        out = np.zeros(shape, np.float32)
        out[mask] = tensors[f"{name}/values"]
        return out
    count = int(mask.sum()) if mask is not None else int(np.prod(shape))
    kept = packing.unpack_codes(tensors[f"{name}/codes"], entry["bits"], count)
    codes = kept.reshape(shape) if mask is None else np.zeros(shape, np.int8)
    if mask is not None:
        codes[mask] = kept
    return dequantize(codes, tensors[f"{name}/scale"])
