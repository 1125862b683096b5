"""A T5 whose matmul weights stay narrow in memory, for decoding speed: greedy decoding reads every weight once per
generated token (benchmarks/decode_throughput.py).

    fast = keep_weights_narrow(model, "int8-dynamic")   # every kernel and the embedding; per-channel scales
    tokens = greedy_decode(fast, inputs, 114)

Modes:
- "int8": int8 codes, dequantized to float32 inside the program before each product (weights only).
- "int8-dynamic": int8 codes, and each product's input quantized to int8 per token on the fly (absmax / 127):
  an int8 x int8 product accumulated in int32, rescaled by both scales (W8A8, what qwix calls dynamic-range
  quantization). The activations' rounding adds error of its own.
- "bfloat16": bfloat16 weights, products of bfloat16 inputs accumulated in float32.
What XLA's CPU backend does with each (docs/compression.md): the dequantization of "int8" does not depend on the
decoding step, so XLA hoists it out of the loop, and the loop reads float32 weights; the other two modes' products
read their narrow weights directly.

The model's projections (`nnx.Einsum`) and embedding (`nnx.Embed`) are swapped for modules holding codes and
scales; norms, relative bias and the decoding cache are unchanged, so `t5scale.model.decoding` runs it as it is.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5scale.compress.quantize import quantize
from t5scale.model.kernels import kernel_spec
from t5scale.model.layout import LAYERS_KEY

INT8, INT8_DYNAMIC, BFLOAT16 = "int8", "int8-dynamic", "bfloat16"
MODES = (INT8, INT8_DYNAMIC, BFLOAT16)


class NarrowWeight(nnx.Variable):
    """Codes (int8) or a bfloat16 copy of a weight, or a scale: state, but not a trainable Param."""


def _narrow(kernel: jax.Array, contracting: tuple[int, ...], stacked: bool, mode: str):
    """(codes, per-output-channel scale or None); a scanned stack [L, ...] gets a scale per layer and channel.
    The scale comes back without the contracted axes: [*kept] (or [L, *kept]), to multiply products with."""
    if mode == BFLOAT16:
        return kernel.astype(jnp.bfloat16), None
    shift = 1 if stacked else 0
    axes = tuple(a + shift for a in contracting)
    codes, scale = quantize(np.asarray(kernel), 8, axes, keep_axes=(0,) if stacked else ())
    return jnp.asarray(codes), jnp.asarray(scale.squeeze(axes))


def _quantize_per_token(x: jax.Array, contracted: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """x -> (int8 codes, float32 scale with the contracted axes dropped): absmax / 127 over those axes."""
    scale = jnp.max(jnp.abs(x), axis=contracted, keepdims=True) / 127.0
    scale = jnp.where(scale == 0, 1.0, scale)
    return jnp.round(x / scale).astype(jnp.int8), scale.squeeze(contracted)


def _trailing(scale: jax.Array, rank: int) -> jax.Array:
    """A per-token scale [*batch] shaped to multiply a product [*batch, *kept] of rank `rank`."""
    return scale.reshape(scale.shape + (1,) * (rank - scale.ndim))


class NarrowEinsum(nnx.Module):
    def __init__(self, einsum: nnx.Einsum, codes: jax.Array, scale: jax.Array | None, mode: str):
        inputs, rest = einsum.einsum_str.replace(" ", "").split(",")
        kernel, output = rest.split("->")
        kept = "".join(c for c in kernel if c in output)
        if not output.endswith(kept):  # the per-channel scale multiplies the product's trailing axes
            raise ValueError(f"{einsum.einsum_str}: the kernel's output axes must come last.")
        self.einsum_str = einsum.einsum_str
        self.contracted = tuple(i for i, c in enumerate(inputs) if c in kernel and c not in output)
        self.dtype = einsum.dtype or jnp.float32
        self.mode = mode
        self.codes = NarrowWeight(codes)
        self.scale = None if scale is None else NarrowWeight(scale)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        if self.mode == BFLOAT16:
            return jnp.einsum(self.einsum_str, inputs.astype(jnp.bfloat16), self.codes[...],
                              preferred_element_type=jnp.float32).astype(self.dtype)
        if self.mode == INT8:
            weight = self.codes[...].astype(self.dtype) * jnp.expand_dims(self.scale[...], self._scale_axes())
            return jnp.einsum(self.einsum_str, inputs.astype(self.dtype), weight)
        codes, token_scale = _quantize_per_token(inputs.astype(jnp.float32), self.contracted)
        product = jnp.einsum(self.einsum_str, codes, self.codes[...], preferred_element_type=jnp.int32)
        product = product.astype(jnp.float32) * _trailing(token_scale, product.ndim) * self.scale[...]
        return product.astype(self.dtype)

    def _scale_axes(self) -> tuple[int, ...]:
        """Where the contracted axes go back into the scale to broadcast it against the kernel."""
        kernel = self.einsum_str.replace(" ", "").split(",")[1].split("->")[0]
        output = self.einsum_str.split("->")[1]
        return tuple(i for i, c in enumerate(kernel) if c not in output)


class NarrowEmbed(nnx.Module):
    """The token embedding, one scale per row (token); `attend` is the tied output layer, contracted over D.

    Held transposed, [D, V]: against a [V, D] table XLA's CPU backend hoisted a transposed copy out of the decoding
    loop for the output-layer product (the embedding twice in memory); against [D, V] the product reads it as it is.
    """

    def __init__(self, embed: nnx.Embed, codes: jax.Array, scale: jax.Array | None, mode: str):
        self.dtype = embed.dtype or jnp.float32
        self.mode = mode
        self.codes_dv = NarrowWeight(codes.T)
        self.scale = None if scale is None else NarrowWeight(scale)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        codes = self.codes_dv[...]
        if codes.dtype == jnp.bfloat16:  # XLA's CPU gather upcast bfloat16 tables to a float32 copy; 16-bit ints not
            rows = jax.lax.bitcast_convert_type(jnp.take(jax.lax.bitcast_convert_type(codes, jnp.uint16), inputs,
                                                         axis=1), jnp.bfloat16)
        else:
            rows = jnp.take(codes, inputs, axis=1)
        rows = jnp.moveaxis(rows, 0, -1).astype(self.dtype)
        return rows if self.scale is None else rows * jnp.take(self.scale[...], inputs, axis=0)[..., None]

    def attend(self, query: jax.Array) -> jax.Array:
        """query [..., D] -> logits [..., V]."""
        spec = "...d,dv->...v"
        if self.mode == BFLOAT16:
            return jnp.einsum(spec, query.astype(jnp.bfloat16), self.codes_dv[...], preferred_element_type=jnp.float32)
        if self.mode == INT8:
            weight = self.codes_dv[...].astype(self.dtype) * self.scale[...]
            return jnp.einsum(spec, query.astype(self.dtype), weight)
        codes, token_scale = _quantize_per_token(query.astype(jnp.float32), (query.ndim - 1,))
        product = jnp.einsum(spec, codes, self.codes_dv[...], preferred_element_type=jnp.int32).astype(jnp.float32)
        return product * token_scale[..., None] * self.scale[...]


def keep_weights_narrow(model: nnx.Module, mode: str = INT8) -> nnx.Module:
    """A copy of `model` with every kernel and the embedding held narrow (see the module doc for the modes)."""
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; choose among {', '.join(MODES)}.")
    model = nnx.clone(model)
    swaps = []
    for path, module in nnx.iter_modules(model):
        names = [str(p) for p in path]
        if isinstance(module, nnx.Einsum):
            spec, weight, make = kernel_spec("/".join(names + ["kernel"])), module.kernel[...], NarrowEinsum
        elif isinstance(module, nnx.Embed):
            spec, weight, make = kernel_spec("/".join(names + ["embedding"])), module.embedding[...], NarrowEmbed
        else:
            continue
        if spec is None:
            raise ValueError(f"{'/'.join(names)} is not in t5scale.model.kernels' table.")
        stacked = LAYERS_KEY in names and model.cfg.scan_layers
        swaps.append((path, make(module, *_narrow(weight, spec.contracting_axes, stacked, mode), mode)))
    for path, replacement in swaps:
        parent = model
        for key in path[:-1]:
            parent = parent[key] if isinstance(key, int) else getattr(parent, key)
        if isinstance(path[-1], int):
            parent[path[-1]] = replacement
        else:
            setattr(parent, path[-1], replacement)
    return model
