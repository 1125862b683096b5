"""A model's flat parameters compressed by one Setting into the arrays that get stored, and back to float32.

    tensors, layout = compress_params(flat_params(model), Setting(bits=4, sparsity=0.5))
    approx = decompress_params(tensors, layout)       # same names and shapes as flat_params(model), float32

For each parameter `name`, `layout[name]` says how it is stored, and `tensors` holds:
- kept float:  `name`                          float32, as it was
- quantized:   `name/codes`, `name/scale`      codes packed two (4-bit) or four (2-bit) to a byte; int8 otherwise
- pruned:      + `name/mask`                   a bitmask, and the codes (or float32 `name/values`) of kept weights
                                                only, in row-major order
Pruning comes first, then quantization of what is left: pruned weights are zeros when the scale is computed, so
they never set it.
"""

from __future__ import annotations

import numpy as np

from t5scale.compress import packing
from t5scale.compress.prune import magnitude_masks
from t5scale.compress.quantize import dequantize, quantize
from t5scale.compress.settings import Setting
from t5scale.model.kernels import kernel_spec

FLOAT, QUANTIZED, PRUNED = "float", "quantized", "pruned"  # the layout's kinds; PRUNED: sparse, still float


def selected(flat: dict[str, np.ndarray], setting: Setting) -> list[str]:
    """Names of the parameters `setting` compresses: the kernels of its groups."""
    return [n for n in flat if (spec := kernel_spec(n)) is not None and spec.group in setting.groups]


def check_fits(shapes: dict[str, tuple[int, ...]], setting: Setting) -> None:
    """Refuse, before any work, a setting the model's shapes cannot take (a group size that does not divide)."""
    if setting.granularity != "group" or setting.bits is None:
        return
    for name in selected(shapes, setting):
        width = shapes[name][kernel_spec(name).contracting_axes[-1]]
        if width % setting.group_size:
            raise ValueError(f"Setting {setting.name}: group_size {setting.group_size} does not divide the "
                             f"contracted width {width} of {name}; choose a divisor of it.")


def compress_params(flat: dict[str, np.ndarray], setting: Setting) -> tuple[dict[str, np.ndarray], dict]:
    """Flat params (t5scale.model.layout.flat_params) -> (tensors to store, layout); see the module doc."""
    names = selected(flat, setting) if setting.bits is not None or setting.sparsity else []
    masks = magnitude_masks({n: flat[n] for n in names}, setting.sparsity, scope=setting.prune) \
        if setting.sparsity else {}
    tensors, layout, compressed = {}, {}, set(names)
    for name, value in flat.items():
        value = np.asarray(value, np.float32)
        if name not in compressed:
            tensors[name], layout[name] = value, {"kind": FLOAT}
            continue
        entry = {"shape": list(value.shape)}
        mask = masks.get(name)
        if mask is not None:
            value = np.where(mask, value, 0).astype(np.float32)
            tensors[f"{name}/mask"] = packing.pack_mask(mask)
        if setting.bits is None:
            entry["kind"] = PRUNED
            tensors[f"{name}/values"] = value[mask]
        else:
            entry.update(kind=QUANTIZED, bits=setting.bits, sparse=mask is not None)
            codes, scale = quantize(value, setting.bits, kernel_spec(name).contracting_axes,
                                    granularity=setting.granularity, group_size=setting.group_size)
            tensors[f"{name}/codes"] = packing.pack_codes(codes if mask is None else codes[mask], setting.bits)
            tensors[f"{name}/scale"] = scale
        layout[name] = entry
    return tensors, layout


def decompress_params(tensors: dict[str, np.ndarray], layout: dict) -> dict[str, np.ndarray]:
    """(tensors, layout) of `compress_params` -> float32 flat params, pruned weights 0."""
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
