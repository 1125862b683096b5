"""T5 building blocks: relative position buckets and bias, attention, MLP.

Parameter names follow T5X's T5.1.1 network (`query/kernel`, `mlp/wi_0/kernel`, `rel_embedding`, ...), so
conversion from and to other checkpoints is one explicit name map (see `t5scale.convert`).

Einsum legend: b batch, l query length, m key length, d d_model (DM), n heads (NH), h head dim (KV),
f d_ff (FF), v vocab.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5scale.config import ModelConfig
from t5scale.model.attention_core import dot_product_attention, heads_major
from t5scale.sharding import EMBED, HEADS, KV, MLP, RELPOS_BUCKETS

NEG_INF = -1e10  # added to masked attention logits; finite so fully-masked rows stay NaN-free

def logical(*names: str) -> dict:
    """Parameter metadata: logical axis names only. Placement on a mesh happens later, by the trainer's rules
    (t5scale.sharding), so no mesh is needed to build a model."""
    return {"out_sharding": names, "eager_sharding": False}


# T5 initialisers (Mesh TF / t5x): unit-variance fan-in normals. The 1/sqrt(KV) attention scaling is folded into
# the query init rather than applied at run time.
_fan_in = functools.partial(jax.nn.initializers.variance_scaling, 1.0, "fan_in")


def relative_position_buckets(query_len: int, key_len: int, *, bidirectional: bool, num_buckets: int,
                              max_distance: int) -> np.ndarray:
    """T5's bucket of (key position - query position) for every pair: int32 [query_len, key_len].

    Half the buckets hold exact distances, the rest grow logarithmically up to max_distance, beyond which all
    distances share the last bucket. Bidirectional (encoder) splits the buckets between past and future; causal
    (decoder) gives every future position bucket 0. Computed in numpy: it depends on static shapes only.
    """
    relative = np.arange(key_len)[None, :] - np.arange(query_len)[:, None]
    n = -relative
    bucket = np.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        bucket += (n < 0) * num_buckets
        n = np.abs(n)
    else:
        n = np.maximum(n, 0)
    max_exact = num_buckets // 2
    # float32 like the reference implementations, so bucket boundaries land on the same integers.
    log_ratio = np.log(np.maximum(n, 1).astype(np.float32) / max_exact) / np.float32(np.log(max_distance / max_exact))
    large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(np.int32)
    large = np.minimum(large, num_buckets - 1)
    return (bucket + np.where(n < max_exact, n, large)).astype(np.int32)


class RelativePositionBias(nnx.Module):
    """One learned scalar per (head, bucket), shared by every layer of a stack; none in cross-attention."""

    def __init__(self, cfg: ModelConfig, *, bidirectional: bool, rngs: nnx.Rngs, table: nnx.Param | None = None):
        """`table`: another stack's rel_embedding to read through (the `sh` variant shares it), else a new one."""
        self.bidirectional = bidirectional
        self.num_buckets = cfg.relative_buckets
        self.max_distance = cfg.relative_max_distance
        init = jax.nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
        self.rel_embedding = table if table is not None else nnx.Param(
            init(rngs.params(), (cfg.num_heads, cfg.relative_buckets), cfg.param_dtype),
            **logical(HEADS, RELPOS_BUCKETS),
        )

    def _buckets(self, query_len: int, key_len: int) -> np.ndarray:
        return relative_position_buckets(query_len, key_len, bidirectional=self.bidirectional,
                                         num_buckets=self.num_buckets, max_distance=self.max_distance)

    def __call__(self, query_len: int, key_len: int, batch: int = 1) -> jax.Array:
        """Bias for queries at positions 0..query_len-1, repeated for each example: float32 [batch, n, l, m]."""
        table = self.rel_embedding[...].astype(jnp.float32)[:, self._buckets(query_len, key_len)]
        return broadcast_batch(table, batch)

    def at_position(self, position: jax.Array, key_len: int) -> jax.Array:
        """Bias for one query at a traced `position` (incremental decoding): float32 [1, n, 1, m]."""
        row = jax.lax.dynamic_slice_in_dim(jnp.asarray(self._buckets(key_len, key_len)), position, 1)
        return self.rel_embedding[...].astype(jnp.float32)[:, row][None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def broadcast_batch(x: jax.Array, batch: int) -> jax.Array:
    """x -> [batch, *x.shape], like jnp.broadcast_to, with the gradient summed over the batch by a contraction.

    Why: XLA's CPU backend (YNNPACK fusions) sums over a leading axis ~50x slower than it contracts it with a
    vector of ones; summing the relative-bias gradient over the batch took ~4% of a T5-small train step.
    A contraction shards like the sum it replaces (a partial sum per device, then an all-reduce).
    """
    return jnp.broadcast_to(x, (batch, *x.shape))


def _broadcast_batch_fwd(x: jax.Array, batch: int) -> tuple[jax.Array, None]:
    return broadcast_batch(x, batch), None


def _broadcast_batch_bwd(batch: int, _, grad: jax.Array) -> tuple[jax.Array]:
    return (jnp.einsum("b,b...->...", jnp.ones((batch,), grad.dtype), grad),)


broadcast_batch.defvjp(_broadcast_batch_fwd, _broadcast_batch_bwd)


@jax.custom_vjp
def relu(x: jax.Array) -> jax.Array:
    """max(x, 0) whose gradient is read off its output, which the next projection keeps for its own gradient.

    jax.nn.relu's gradient keeps a boolean mask of x > 0 and a zeros array of x's shape besides: in a scanned
    stack the zeros are a real loop input, 33 MB for T5-small's encoder at 8 x 512.
    """
    return jnp.maximum(x, 0)


def _relu_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    y = jnp.maximum(x, 0)
    return y, y


def _relu_bwd(y: jax.Array, grad: jax.Array) -> tuple[jax.Array]:
    return (jnp.where(y > 0, grad, 0),)


relu.defvjp(_relu_fwd, _relu_bwd)


def mask_to_bias(mask: jax.Array) -> jax.Array:
    """bool [b, l, m] (True: may attend) -> additive float32 bias [b, 1, l, m]."""
    return jnp.where(mask, 0.0, NEG_INF).astype(jnp.float32)[:, None]


def _projection(cfg: ModelConfig, spec: str, shape: tuple[int, ...], names: tuple[str, ...],
                init, rngs: nnx.Rngs) -> nnx.Einsum:
    return nnx.Einsum(spec, shape, dtype=cfg.dtype, param_dtype=cfg.param_dtype, kernel_init=init, rngs=rngs,
                      kernel_metadata=logical(*names))


def tokens(x: jax.Array) -> jax.Array:
    """[b, l, ...] -> [b*l, ...]: the projections' specs start with t (token).

    One token axis instead of (b, l) makes each weight gradient a contraction over one axis: with two, XLA's CPU
    backend copied transposed activations before every MLP weight gradient (T5-small train step: 5.45 -> 5.2 s).
    Flatten an input once for all the projections that read it: autodiff saves each flattened copy separately.
    """
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


class Attention(nnx.Module):
    """Multi-head dot-product attention without biases or 1/sqrt(KV) scaling (T5)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        n, h, d = cfg.num_heads, cfg.d_kv, cfg.d_model
        in_init = _fan_in("normal", in_axis=0, out_axis=(1, 2))
        query_init = lambda *a: in_init(*a) / np.sqrt(h).astype(np.float32)  # noqa: E731  (scaling folded in)
        self.query = _projection(cfg, "td,dnh->tnh", (d, n, h), (EMBED, HEADS, KV), query_init, rngs)
        self.key = _projection(cfg, "td,dnh->tnh", (d, n, h), (EMBED, HEADS, KV), in_init, rngs)
        # skv variant: one projection serves as key and value.
        self.value = None if cfg.tied_kv else _projection(cfg, "td,dnh->tnh", (d, n, h), (EMBED, HEADS, KV),
                                                          in_init, rngs)
        self.out = _projection(cfg, "tnh,nhd->td", (n, h, d), (HEADS, KV, EMBED),
                               _fan_in("normal", in_axis=(0, 1), out_axis=2), rngs)
        self.dropout = nnx.Dropout(cfg.dropout_rate)
        self.dtype = cfg.dtype

    def project_query(self, x: jax.Array) -> jax.Array:
        """[b, l, d] -> queries [b, n, l, h]."""
        return self._query_heads(tokens(x), x.shape[0])

    def project_kv(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[b, m, d] -> keys, values [b, n, m, h]."""
        return self._kv_heads(tokens(x), x.shape[0])

    def _query_heads(self, x_tokens: jax.Array, batch: int) -> jax.Array:
        """[b*l, d] -> [b, n, l, h]."""
        return heads_major(self.query(x_tokens), batch)

    def _kv_heads(self, x_tokens: jax.Array, batch: int) -> tuple[jax.Array, jax.Array]:
        k = heads_major(self.key(x_tokens), batch)
        return k, (k if self.value is None else heads_major(self.value(x_tokens), batch))

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array,
               rngs: nnx.Rngs | None) -> jax.Array:
        """q [b, n, l, h], k/v [b, n, m, h], bias broadcastable to [b, n, l, m] -> [b, l, d]."""
        if rngs is None or self.dropout.rate == 0:
            dropout_scale = jnp.ones((), jnp.float32)
        else:  # 0 or 1/keep for every attention weight
            shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
            dropout_scale = self.dropout(jnp.ones(shape, jnp.float32), deterministic=False, rngs=rngs)
        out = self.out(dot_product_attention(q, k, v, bias, dropout_scale))  # [b*l, d]
        return out.reshape(q.shape[0], q.shape[2], -1)

    def __call__(self, x: jax.Array, kv_input: jax.Array, bias: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        x_tokens = tokens(x)
        kv_tokens = x_tokens if kv_input is x else tokens(kv_input)
        return self.attend(self._query_heads(x_tokens, x.shape[0]), *self._kv_heads(kv_tokens, kv_input.shape[0]),
                           bias, rngs)


@jax.checkpoint
def _gated_gelu(gate: jax.Array, linear: jax.Array) -> jax.Array:
    """gelu(gate) * linear, recomputed from its two inputs in the backward pass: autodiff of the tanh-approximate
    GELU kept five [t, f] intermediates, and the product its GELU factor, besides the inputs."""
    return jax.nn.gelu(gate, approximate=True) * linear


class Mlp(nnx.Module):
    """v1.0: wo(relu(wi x)). v1.1: wo(gelu(wi_0 x) * wi_1 x). Dropout on the hidden activations."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.d_ff
        init = _fan_in("truncated_normal")
        make_wi = lambda: _projection(cfg, "td,df->tf", (d, f), (EMBED, MLP), init, rngs)  # noqa: E731
        if cfg.is_gated:
            self.wi_0, self.wi_1 = make_wi(), make_wi()
        else:
            self.wi = make_wi()
        self.wo = _projection(cfg, "tf,fd->td", (f, d), (MLP, EMBED), init, rngs)
        self.dropout = nnx.Dropout(cfg.dropout_rate)
        self.gated = cfg.is_gated

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        x_tokens = tokens(x)
        if self.gated:  # tanh-approximate GELU, as t5x and HF's gelu_new
            hidden = _gated_gelu(self.wi_0(x_tokens), self.wi_1(x_tokens))
        else:
            hidden = relu(self.wi(x_tokens))
        hidden = self.dropout(hidden, deterministic=rngs is None, rngs=rngs)
        return self.wo(hidden).reshape(x.shape)


class RMSNorm(nnx.RMSNorm):
    """nnx.RMSNorm recomputed from its input in the backward pass (one elementwise pass over [..., D]).

    Autodiff of nnx.RMSNorm saves three [..., D] float32 arrays per norm (its input, the squares, its output)
    besides the next projection's own copy of the output; recomputing saves the input alone.
    """

    @nnx.remat
    def __call__(self, x: jax.Array) -> jax.Array:
        return super().__call__(x)


def make_norm(cfg: ModelConfig, rngs: nnx.Rngs) -> RMSNorm:
    """RMSNorm: no mean subtraction, no bias, computed in float32 whatever the compute dtype."""
    return RMSNorm(cfg.d_model, epsilon=cfg.layer_norm_eps, dtype=jnp.float32, param_dtype=cfg.param_dtype,
                   rngs=rngs, scale_metadata=logical(EMBED))
