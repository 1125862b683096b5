"""Layers against plain-numpy references and T5's bucket formula worked by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from t5scale.model.layers import (
    NEG_INF,
    Attention,
    Mlp,
    RelativePositionBias,
    broadcast_batch,
    make_norm,
    relative_position_buckets,
    relu,
)
from tests.testing import kept_floats, tiny_config

# Legend: b batch 2, l query length 3, m key length 7, d model 24, n heads 4, h head dim 5, f d_ff 36.
B, L, M = 2, 3, 7


def bucket_of(relative: int, bidirectional: bool) -> int:
    """Bucket of one (key - query) offset, read off a table large enough to hold it."""
    size = abs(relative) + 1
    table = relative_position_buckets(size, size, bidirectional=bidirectional, num_buckets=32, max_distance=128)
    return int(table[size - 1, size - 1 + relative] if relative <= 0 else table[0, relative])


# T5's formula by hand: 32 buckets, max distance 128. Bidirectional: 16 per direction, 8 exact, then
# 8 + floor(log(n/8)/log(16) * 8); keys after the query add 16. Causal: 16 exact, then 16 + floor(log(n/16)/log(8)*16).
@pytest.mark.parametrize("relative, bidirectional, expected", [
    (0, True, 0), (-1, True, 1), (-7, True, 7), (-8, True, 8), (-16, True, 10), (-32, True, 12),
    (-127, True, 15), (-500, True, 15), (1, True, 17), (7, True, 23), (16, True, 26), (500, True, 31),
    (0, False, 0), (5, False, 0), (-1, False, 1), (-15, False, 15), (-16, False, 16), (-32, False, 21),
    (-64, False, 26), (-127, False, 31), (-1000, False, 31),
])
def test_relative_position_buckets_follow_t5s_formula(relative, bidirectional, expected):
    assert bucket_of(relative, bidirectional) == expected


def test_relative_bias_is_shared_table_indexed_by_bucket():
    cfg = tiny_config()
    bias_layer = RelativePositionBias(cfg, bidirectional=False, rngs=nnx.Rngs(0))
    table = np.asarray(bias_layer.rel_embedding[...])  # [n, buckets]
    bias = np.asarray(bias_layer(L, M))
    assert bias.shape == (1, cfg.num_heads, L, M)
    buckets = relative_position_buckets(L, M, bidirectional=False, num_buckets=32, max_distance=128)
    np.testing.assert_array_equal(bias[0], table[:, buckets])
    # One decoding position picks the matching row of the full table.
    row = np.asarray(bias_layer.at_position(jnp.int32(2), M))
    np.testing.assert_array_equal(row[0, :, 0], np.asarray(bias_layer(M, M))[0, :, 2])
    # Repeated per example when asked for a batch.
    np.testing.assert_array_equal(np.asarray(bias_layer(L, M, 3)), np.repeat(bias, 3, axis=0))


def test_broadcast_batch_matches_broadcast_to_in_value_and_gradient():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, L, M)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(B, 4, L, M)), jnp.float32)

    def loss(x, broadcast):
        return jnp.sum(weights * broadcast(x) ** 2)

    ours = jax.jit(jax.value_and_grad(lambda x: loss(x, lambda y: broadcast_batch(y, B))))(x)
    reference = jax.value_and_grad(lambda x: loss(x, lambda y: jnp.broadcast_to(y, (B, *y.shape))))(x)
    np.testing.assert_allclose(ours[0], reference[0], rtol=1e-6)
    np.testing.assert_allclose(ours[1], reference[1], rtol=1e-5, atol=1e-6)
    # the gradient is the sum over the batch: numpy check of the chain rule
    np.testing.assert_allclose(ours[1], np.sum(2 * np.asarray(weights) * np.asarray(x)[None], axis=0), rtol=1e-5)


def numpy_attention(x, kv, q_w, k_w, v_w, o_w, bias):
    q = np.einsum("bld,dnh->blnh", x, q_w)
    k = np.einsum("bmd,dnh->bmnh", kv, k_w)
    v = np.einsum("bmd,dnh->bmnh", kv, v_w)
    logits = np.einsum("blnh,bmnh->bnlm", q, k) + bias  # no 1/sqrt(h): folded into q_w
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("blnh,nhd->bld", np.einsum("bnlm,bmnh->blnh", weights, v), o_w)


@pytest.mark.parametrize("tied_kv", [False, True])
def test_attention_matches_numpy_einsum_reference(tied_kv):
    cfg = tiny_config(tied_kv=tied_kv)
    layer = Attention(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    x, kv = rng.normal(size=(B, L, 24)).astype(np.float32), rng.normal(size=(B, M, 24)).astype(np.float32)
    bias = rng.normal(size=(B, 4, L, M)).astype(np.float32)
    bias[1, :, :, 5:] = NEG_INF  # masked keys
    weights = {name: np.asarray(getattr(layer, name).kernel[...]) for name in ("query", "key", "out")}
    value = weights["key"] if tied_kv else np.asarray(layer.value.kernel[...])
    assert weights["query"].shape == (24, 4, 5) and weights["out"].shape == (4, 5, 24)
    expected = numpy_attention(x, kv, weights["query"], weights["key"], value, weights["out"], bias)
    np.testing.assert_allclose(layer(x, kv, bias, None), expected, rtol=1e-5, atol=1e-5)
    assert (layer.value is None) == tied_kv


def test_query_init_folds_in_the_head_scaling():
    cfg = tiny_config(d_model=256, d_kv=64, num_heads=8)
    layer = Attention(cfg, rngs=nnx.Rngs(0))
    # fan-in normal: std 1/sqrt(DM) for keys, and an extra 1/sqrt(KV) for queries.
    assert np.std(layer.key.kernel[...]) == pytest.approx(256 ** -0.5, rel=0.05)
    assert np.std(layer.query.kernel[...]) == pytest.approx(256 ** -0.5 * 64 ** -0.5, rel=0.05)


@pytest.mark.parametrize("activation", ["relu", "gated-gelu"])
def test_mlp_matches_numpy_reference(activation):
    cfg = tiny_config(activation=activation)
    mlp = Mlp(cfg, rngs=nnx.Rngs(1))
    x = np.random.default_rng(1).normal(size=(B, L, 24)).astype(np.float32)
    wo = np.asarray(mlp.wo.kernel[...])
    if activation == "relu":
        hidden = np.maximum(x @ np.asarray(mlp.wi.kernel[...]), 0)
    else:
        gate = x @ np.asarray(mlp.wi_0.kernel[...])
        gelu = 0.5 * gate * (1 + np.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate ** 3)))
        hidden = gelu * (x @ np.asarray(mlp.wi_1.kernel[...]))
    np.testing.assert_allclose(mlp(x, None), hidden @ wo, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation, hidden_arrays", [("relu", 1), ("gated-gelu", 3)])
def test_mlp_keeps_its_flattened_input_and_the_hidden_arrays_it_needs_for_its_gradient(activation, hidden_arrays):
    """relu: its output (the gradient's mask is read off it); gated-GELU: both projections' outputs and their
    product, the GELU recomputed."""
    mlp = Mlp(tiny_config(activation=activation), rngs=nnx.Rngs(1))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(B, L, 24)), jnp.float32)
    assert kept_floats(lambda mlp, x: jnp.sum(mlp(x, None)), mlp, x) == B * L * (24 + hidden_arrays * 36)


def test_rms_norm_has_no_mean_and_computes_in_float32():
    cfg = tiny_config(dtype="bfloat16")
    norm = make_norm(cfg, nnx.Rngs(0))
    norm.scale[...] = np.linspace(0.5, 2.0, 24, dtype=np.float32)
    x = np.random.default_rng(2).normal(3.0, 2.0, size=(B, L, 24)).astype(np.float32)
    expected = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * np.linspace(0.5, 2.0, 24)
    out = norm(jnp.asarray(x, jnp.bfloat16))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, expected, rtol=2e-2, atol=2e-2)  # input rounded to bf16 once


def test_rms_norm_gradients_match_flax_rms_norm():
    """The norm recomputed in the backward pass (it keeps only its input) has nnx.RMSNorm's gradients."""
    norm = make_norm(tiny_config(), nnx.Rngs(0))
    norm.scale[...] = np.linspace(0.5, 2.0, 24, dtype=np.float32)
    reference = nnx.RMSNorm(24, epsilon=1e-6, dtype=jnp.float32, rngs=nnx.Rngs(0))
    reference.scale[...] = norm.scale[...]
    x = jnp.asarray(np.random.default_rng(3).normal(size=(B, L, 24)), jnp.float32)
    cotangent = jnp.asarray(np.random.default_rng(4).normal(size=(B, L, 24)), jnp.float32)
    grads = [nnx.grad(lambda m, x: jnp.sum(m(x) * cotangent), argnums=(0, 1))(m, x) for m in (norm, reference)]
    np.testing.assert_allclose(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-6)  # d input
    np.testing.assert_allclose(grads[0][0]["scale"][...], grads[1][0]["scale"][...], rtol=1e-5, atol=1e-6)


def test_relu_matches_jax_relu_in_value_and_gradient():
    x = jnp.asarray([-2.0, -0.0, 0.0, 1e-30, 3.0])
    np.testing.assert_array_equal(relu(x), jax.nn.relu(x))
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(relu(x) * 2.0))(x), [0, 0, 0, 2, 2])
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(jax.nn.relu(x) * 2.0))(x), [0, 0, 0, 2, 2])


def test_dropout_needs_a_key_and_is_reproducible():
    cfg = tiny_config(dropout_rate=0.5)
    mlp = Mlp(cfg, rngs=nnx.Rngs(0))
    x = jnp.ones((B, L, 24))
    deterministic = mlp(x, None)
    first = mlp(x, nnx.Rngs(dropout=jax.random.key(3)))
    again = mlp(x, nnx.Rngs(dropout=jax.random.key(3)))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, deterministic)


def attention_weight_scales(rate, rngs, batch=4, length=50):
    """The dropout scale the attention layer applied to every weight, read off its output: queries of zero give
    uniform weights 1/m over m = h keys, values are the identity over keys, and the output projection writes head
    n, slot h to feature n*h_dim + h. Returns [b, n, l, m] (1 without dropout)."""
    cfg = tiny_config(dropout_rate=rate)
    layer = Attention(cfg, rngs=nnx.Rngs(0))
    n, h = cfg.num_heads, cfg.d_kv
    out = np.zeros((n, h, cfg.d_model), np.float32)
    for head in range(n):
        out[head, :, head * h:(head + 1) * h] = np.eye(h)
    layer.out.kernel[...] = out
    q = jnp.zeros((batch, n, length, h))
    k = jnp.zeros((batch, n, h, h))
    v = jnp.broadcast_to(jnp.eye(h), (batch, n, h, h))
    y = np.asarray(layer.attend(q, k, v, jnp.zeros(()), rngs))  # [b, l, d]
    return y[..., : n * h].reshape(batch, length, n, h).transpose(0, 2, 1, 3) * h


def test_attention_weight_dropout_is_on_with_a_key_off_without_and_scales_kept_weights_by_one_over_keep():
    np.testing.assert_allclose(attention_weight_scales(0.3, None), 1.0, rtol=1e-6)  # no key: no dropout
    np.testing.assert_allclose(attention_weight_scales(0.0, nnx.Rngs(dropout=1)), 1.0, rtol=1e-6)  # rate 0
    scales = attention_weight_scales(0.3, nnx.Rngs(dropout=1))
    dropped = np.isclose(scales, 0.0, atol=1e-6)
    np.testing.assert_allclose(scales[~dropped], 1 / 0.7, rtol=1e-5)  # kept weights scaled by 1/keep
    assert dropped.mean() == pytest.approx(0.3, abs=0.03)  # 4,000 weights
    again = attention_weight_scales(0.3, nnx.Rngs(dropout=1))
    other = attention_weight_scales(0.3, nnx.Rngs(dropout=2))
    np.testing.assert_array_equal(scales, again)  # the key decides the mask
    assert not np.array_equal(scales, other)
