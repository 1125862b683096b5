"""Symmetric weight quantization, arrays in and arrays out, through qwix's array-level `quantize`.

    codes, scale = quantize(kernel, bits=4, contracting_axes=(0,))   # per output channel
    approx = dequantize(codes, scale)                                  # float32, |kernel - approx| <= scale / 2
(`dequantize` is `t5scale.weights.compressed_format`'s: reading a checkpoint needs it, not qwix.)

qwix's convention: scale = max|w| / (2^(b-1) - 1/2) over the reduced axes, codes = round(w / scale) clipped to
[-2^(b-1), 2^(b-1) - 1]. The extra half step lets the largest weights use the outermost codes fully (at 2 bits that
is the four levels {-2, -1, 0, 1}, where max|w| / (2^(b-1) - 1) would waste one on a ternary grid); every weight is
within half a step of its code. An all-zero channel gets scale 1 and codes 0.

Granularity: "channel" (one scale per output channel: reduce over the contracting axes), "tensor" (one scale), or
"group" (one per output channel and per `group_size` consecutive entries of the last contracting axis). `keep_axes`
are never reduced: a scanned stack [L, ...] passes (0,) to get a scale per layer.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import qwix

BITS = (8, 6, 4, 2)
GRANULARITIES = ("channel", "tensor", "group")
# qwix's names for the integer widths: int6 and int2 are emulated in int8 / int4 storage.
_QTYPES = {8: jnp.int8, 6: "int6", 4: jnp.int4, 2: "int2"}


def check_bits(bits: int) -> int:
    if bits not in BITS:
        raise ValueError(f"Unsupported bit width {bits!r}; choose among {', '.join(map(str, BITS))}.")
    return bits


def quantize(w: np.ndarray, bits: int, contracting_axes: tuple[int, ...], *, granularity: str = "channel",
             group_size: int | None = None, keep_axes: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """w (float) -> (int8 codes of w's shape, float32 scale broadcastable to it, 1 on reduced axes)."""
    check_bits(bits)
    contracting = tuple(a % w.ndim for a in contracting_axes)
    keep = tuple(a % w.ndim for a in keep_axes)
    tiled = None
    if granularity == "channel":
        channelwise = tuple(a for a in range(w.ndim) if a not in contracting)
    elif granularity == "tensor":
        channelwise = keep
    elif granularity == "group":
        axis = contracting[-1]
        if not group_size or w.shape[axis] % group_size:
            raise ValueError(f"group_size {group_size!r} must divide the contracted axis of every quantized matrix; "
                             f"one here has {w.shape[axis]} (shape {w.shape}).")
        channelwise = tuple(a for a in range(w.ndim) if a != axis)
        tiled = {axis: group_size}
    else:
        raise ValueError(f"Unknown granularity {granularity!r}; choose among {', '.join(GRANULARITIES)}.")
    codes, scale = _qwix_quantize(jnp.asarray(w, jnp.float32), bits, channelwise, tuple((tiled or {}).items()))
    return np.asarray(codes).astype(np.int8), np.asarray(scale, np.float32)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _qwix_quantize(w: jax.Array, bits: int, channelwise: tuple[int, ...], tiled: tuple[tuple[int, int], ...]):
    # One compiled program per shape and setting: run eagerly, qwix's dozen small ops each compile on their own.
    q = qwix.quantize(w, _QTYPES[bits], channelwise_axes=channelwise, tiled_axes=dict(tiled) or None)
    return q.qvalue, q.scale
