"""A model's flat parameters compressed by one Setting into the arrays that get stored. Back to float32 is
`t5scale.weights.compressed_format.decompress_params`, whose doc lists what `tensors` and `layout` hold.

    tensors, layout = compress_params(flat_params(model), Setting(bits=4, sparsity=0.5))

Pruning comes first, then quantization of what is left: pruned weights are zeros when the scale is computed, so
they never set it.
"""

from __future__ import annotations

import numpy as np

from t5scale.compress.prune import magnitude_masks
from t5scale.compress.quantize import quantize
from t5scale.compress.settings import Setting
from t5scale.model.kernels import kernel_spec
from t5scale.weights import packing
from t5scale.weights.compressed_format import FLOAT, PRUNED, QUANTIZED


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
