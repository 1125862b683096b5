"""The hand-written attention gradient against autodiff of the plain formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5scale.model.attention_core import dot_product_attention

B, N, L, M, H = 2, 3, 5, 7, 4


def plain_attention(q, k, v, bias, dropout_scale):
    logits = jnp.einsum("bnlh,bnmh->bnlm", q, k, preferred_element_type=jnp.float32) + bias
    weights = (jax.nn.softmax(logits, axis=-1) * dropout_scale).astype(v.dtype)
    out = jnp.einsum("bnlm,bnmh->bnlh", weights, v)
    return out.transpose(0, 2, 1, 3).reshape(B * L, N, H)  # token-major, as dot_product_attention returns


def inputs(bias_shape, dtype=jnp.float32):
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=shape), dtype) for shape in ((B, N, L, H), (B, N, M, H), (B, N, M, H)))
    bias = rng.normal(size=bias_shape).astype(np.float32)
    bias[..., -2:] = -1e10  # masked keys
    cotangent = jnp.asarray(rng.normal(size=(B * L, N, H)), dtype)
    return q, k, v, jnp.asarray(bias), cotangent


@pytest.mark.parametrize("bias_shape", [(B, N, L, M), (B, 1, L, M), (1, N, L, M), (N, L, M)])
@pytest.mark.parametrize("dropout", [False, True])
def test_value_and_gradients_match_autodiff(bias_shape, dropout):
    q, k, v, bias, cotangent = inputs(bias_shape)
    scale = jnp.ones(())
    if dropout:  # keep 0.75: weights dropped or scaled by 1/0.75
        scale = jnp.asarray(np.random.default_rng(1).random((B, N, L, M)) < 0.75) / 0.75

    def loss(attention, q, k, v, bias):
        return jnp.sum(attention(q, k, v, bias, scale) * cotangent)

    ours = jax.jit(jax.value_and_grad(lambda *a: loss(dot_product_attention, *a), argnums=(0, 1, 2, 3)))(q, k, v, bias)
    reference = jax.value_and_grad(lambda *a: loss(plain_attention, *a), argnums=(0, 1, 2, 3))(q, k, v, bias)
    np.testing.assert_allclose(ours[0], reference[0], rtol=1e-5)
    for name, got, expected in zip("q k v bias".split(), ours[1], reference[1]):
        assert got.shape == expected.shape, name
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=name)


def test_bfloat16_inputs_keep_their_dtype_and_stay_close():
    q, k, v, bias, cotangent = inputs((B, N, L, M), jnp.bfloat16)
    grads = jax.grad(lambda *a: jnp.sum(dot_product_attention(*a, jnp.ones(())) * cotangent).astype(jnp.float32),
                     argnums=(0, 1, 2))(q, k, v, bias)
    reference = jax.grad(lambda *a: jnp.sum(plain_attention(*a, jnp.ones(())) * cotangent).astype(jnp.float32),
                         argnums=(0, 1, 2))(q, k, v, bias)
    for got, expected in zip(grads, reference):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected, np.float32), rtol=0.05, atol=0.05)
