"""Dot-product attention with a hand-written gradient.

Same function as `softmax(q k^T + bias) * dropout_scale @ v`; the backward pass is written out so that every
matrix product contracts its first operand's last axis. XLA's CPU backend runs only such products in YNNPACK;
the transposed ones autodiff produces (dK = dS^T Q, dV = P^T dO) ran in slower Eigen kernels. Here the small
operand (Q or dO, [b, n, l, h]) is transposed instead, and an optimization barrier keeps XLA from folding that
transpose back into the product. The softmax gradient uses rowsum(dP * P) = rowsum(dO * O), which needs no pass
over the [b, n, l, m] probabilities. The output comes token-major, [b*l, n, h], the layout the output projection
reads, so the array the backward pass keeps (O) is the projection's input too: one saved copy, not two.

Einsum legend: b batch, n heads, l query length, m key length, h head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array,
                          dropout_scale: jax.Array) -> jax.Array:
    """q [b, n, l, h], k/v [b, n, m, h], bias and dropout_scale (0 or 1/keep per weight, or a scalar 1)
    broadcastable to [b, n, l, m] -> token-major [b*l, n, h]. Logits and softmax in float32, products in q's
    dtype."""
    return _forward(q, k, v, bias, dropout_scale)[0]


def _to_tokens(x: jax.Array) -> jax.Array:
    """[b, n, l, h] -> [b*l, n, h]."""
    batch, heads, length, head_dim = x.shape
    return x.transpose(0, 2, 1, 3).reshape(batch * length, heads, head_dim)


def heads_major(x: jax.Array, batch: int) -> jax.Array:
    """Token-major [b*l, n, h] (a projection's output) -> [b, n, l, h]. Attention works heads-major: the batched
    matmuls want (b, n) in front, XLA's CPU backward ran ~2.5% faster for the explicit transposes, and the decoding
    cache then needs none per step."""
    return x.reshape(batch, -1, *x.shape[1:]).transpose(0, 2, 1, 3)


def _forward(q, k, v, bias, dropout_scale):
    logits = jnp.einsum("bnlh,bnmh->bnlm", q, k, preferred_element_type=jnp.float32) + bias
    probs = jax.nn.softmax(logits, axis=-1)
    out = _to_tokens(jnp.einsum("bnlm,bnmh->bnlh", (probs * dropout_scale).astype(v.dtype), v))
    return out, (q, k, v, bias, dropout_scale, probs, out)


def _transposed(x: jax.Array) -> jax.Array:
    """x with its last two axes swapped, materialised (not folded into the next product)."""
    return jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


def _sum_to_shape(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Undo broadcasting: sum x over the axes that `shape` broadcast (missing leading axes and size-1 axes)."""
    x = jnp.sum(x, axis=tuple(range(x.ndim - len(shape))))
    axes = tuple(i for i, size in enumerate(shape) if size == 1 and x.shape[i] != 1)
    return jnp.sum(x, axis=axes, keepdims=True) if axes else x


def _backward(residuals, d_out):
    q, k, v, bias, dropout_scale, probs, out = residuals
    row = heads_major(jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True),
                      q.shape[0])  # [b, n, l, 1]
    d_out = heads_major(d_out, q.shape[0])
    weights = (probs * dropout_scale).astype(v.dtype)
    d_v = jnp.swapaxes(_transposed(d_out) @ weights, -1, -2)  # ([b,n,h,l] @ [b,n,l,m])^T = P^T dO
    d_weights = jnp.einsum("bnlh,bnmh->bnlm", d_out, v, preferred_element_type=jnp.float32) * dropout_scale
    d_logits = probs * (d_weights - row)
    d_q = jnp.einsum("bnlm,bnmh->bnlh", d_logits.astype(q.dtype), k)
    d_k = jnp.swapaxes(_transposed(q) @ d_logits.astype(q.dtype), -1, -2)  # dS^T Q
    return d_q, d_k, d_v, _sum_to_shape(d_logits, bias.shape).astype(bias.dtype), None


dot_product_attention.defvjp(_forward, _backward)
