"""The encoder-decoder: layouts agree, packing and caching change nothing, sharding names are complete."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from t5scale import abstract_model
from t5scale.model.layout import flat_params, load_flat_params
from t5scale.sharding import LOGICAL_AXES, RULE_SETS, logical_axis_rules
from tests.testing import forward, kept_floats, random_model, random_tokens, tiny_config

# Legend: batch 2, encoder length 9, decoder length 6 (tiny_config: EL 2, DL 3, DM 24, KV 5, NH 4, FF 36).
B, S, T = 2, 9, 6


def batch(seed=0):
    rng = np.random.default_rng(seed)
    encoder_tokens = random_tokens(rng, (B, S))
    encoder_tokens[1, 6:] = 0  # padding
    decoder_tokens = random_tokens(rng, (B, T))
    decoder_tokens[:, 0] = 0  # decoder start
    return encoder_tokens, decoder_tokens


def copy_of(model, **cfg_changes):
    """A model with other layout/compute settings holding the same weights."""
    other = abstract_model(model.cfg.replace(**cfg_changes))
    load_flat_params(other, flat_params(model))
    return other


@pytest.mark.parametrize("activation", ["relu", "gated-gelu"])
def test_scanned_and_unrolled_stacks_compute_the_same_function(activation):
    cfg = tiny_config(activation=activation, tie_embeddings=activation == "relu", dropout_rate=0.3)
    scanned = random_model(cfg)
    unrolled = copy_of(scanned, scan_layers=False)
    x, y = batch()
    np.testing.assert_allclose(forward(scanned, x, y), forward(unrolled, x, y), rtol=1e-5, atol=1e-5)
    # Dropout too: both stacks give layer i the same key.
    key = jax.random.key(7, impl="rbg")  # rbg: far cheaper to compile on CPU than threefry
    train_scanned = forward(scanned, x, y, dropout_rng=key)
    train_unrolled = forward(unrolled, x, y, dropout_rng=key)
    np.testing.assert_allclose(train_scanned, train_unrolled, rtol=1e-5, atol=1e-5)
    assert not np.allclose(train_scanned, forward(scanned, x, y), atol=1e-3)


def test_a_partly_unrolled_scan_computes_the_same_function_on_the_same_parameters():
    scanned = random_model(tiny_config(dropout_rate=0.3))  # 2 encoder layers, 3 decoder: 2 does not divide 3
    unrolled_by_two = copy_of(scanned, scan_unroll=2)
    x, y = batch()
    key = jax.random.key(7, impl="rbg")
    np.testing.assert_allclose(forward(scanned, x, y, dropout_rng=key), forward(unrolled_by_two, x, y, dropout_rng=key),
                               rtol=1e-5, atol=1e-5)


def loss_and_grads(model, x, y):
    def loss_fn(model):
        logits = model(x, y)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3])

    return nnx.jit(nnx.value_and_grad(loss_fn))(model)


@pytest.mark.parametrize("remat, scan_layers", [("full", True), ("dots", False)])
def test_remat_changes_neither_loss_nor_gradients(remat, scan_layers):
    plain = random_model(tiny_config(scan_layers=scan_layers), seed=0)
    rematted = copy_of(plain, remat=remat)
    x, y = batch()
    loss, grads = loss_and_grads(plain, x, y)
    loss_r, grads_r = loss_and_grads(rematted, x, y)
    assert loss == pytest.approx(float(loss_r), rel=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_block_keeps_each_activation_once_for_its_backward_pass():
    """Exactly what the backward pass needs, once each: a second copy (a norm's output next to the projection's
    flattened input, or the attention's output next to the output projection's) was ~20% of T5-small's train-step
    temporaries. The relu's gradient is read off its output (a boolean mask at most)."""
    from t5scale.model.t5 import DecoderBlock, EncoderBlock

    cfg = tiny_config()
    d, n, h, f = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff
    rng = np.random.default_rng(0)
    x, encoded = (jnp.asarray(rng.normal(size=(B, length, d)), jnp.float32) for length in (T, S))
    encoder_block, decoder_block = EncoderBlock(cfg, rngs=nnx.Rngs(0)), DecoderBlock(cfg, rngs=nnx.Rngs(0))

    def loss(block, *inputs):
        return jnp.sum(block(*inputs, None)[0] if isinstance(block, DecoderBlock) else block(*inputs, None))

    # Encoder (its input is an argument): the MLP's input, the two norms' outputs, q, k, v, the attention output,
    # the relu output; and the [n, S, S] probabilities.
    assert kept_floats(loss, encoder_block, encoded, jnp.zeros((B, n, S, S))) == (
        B * S * (3 * d + 4 * n * h + f) + B * n * S * S)
    # Decoder: the inputs of cross-attention and the MLP, three norms' outputs; q, k, v and the output of
    # self-attention; q and the output of cross-attention; the relu output; both attentions' probabilities; and
    # the encoded sequence's keys and values and its flattened copy (the key and value projections' input).
    assert kept_floats(loss, decoder_block, x, encoded, jnp.zeros((B, n, T, T)), jnp.zeros((B, 1, T, S))) == (
        B * T * (5 * d + 6 * n * h + f) + B * n * T * (T + S) + B * S * (d + 2 * n * h))


def test_packed_batch_gives_the_same_logits_as_unpacked_examples():
    model = random_model(tiny_config(), seed=0)
    rng = np.random.default_rng(3)
    lengths = [(5, 4), (3, 2)]  # (inputs, targets) of two examples
    examples = [(random_tokens(rng, (1, s)), random_tokens(rng, (1, t))) for s, t in lengths]
    # Packed: both examples in one row, then padding; segment ids 1, 2, and 0 on padding.
    packed_x, packed_y = np.zeros((1, 10), np.int32), np.zeros((1, 8), np.int32)
    seg_x, seg_y = np.zeros((1, 10), np.int32), np.zeros((1, 8), np.int32)
    sx = sy = 0
    for segment, (x, y) in enumerate(examples, start=1):
        packed_x[0, sx:sx + x.shape[1]], seg_x[0, sx:sx + x.shape[1]] = x, segment
        packed_y[0, sy:sy + y.shape[1]], seg_y[0, sy:sy + y.shape[1]] = y, segment
        sx, sy = sx + x.shape[1], sy + y.shape[1]
    packed = forward(model, packed_x, packed_y, encoder_segment_ids=seg_x, decoder_segment_ids=seg_y)
    sy = 0
    for x, y in examples:
        alone = forward(model, x, y)
        np.testing.assert_allclose(packed[:, sy:sy + y.shape[1]], alone, rtol=1e-5, atol=1e-5)
        sy += y.shape[1]


def test_segment_ids_must_come_in_pairs():
    model = random_model(tiny_config(), seed=0)
    x, y = batch()
    with pytest.raises(ValueError, match="both encoder_segment_ids and decoder_segment_ids"):
        model(x, y, encoder_segment_ids=np.ones_like(x))


@pytest.mark.parametrize("scan_layers", [True, False])
def test_one_token_at_a_time_decoding_equals_the_full_pass(scan_layers):
    model = random_model(tiny_config(scan_layers=scan_layers, activation="gated-gelu"), seed=0)
    x, y = batch()
    full = forward(model, x, y)
    cache = model.init_cache(model.encode(x), x, max_decode_len=T + 2)  # room to spare: unused slots masked
    step = jax.jit(lambda m, token, c: m.decode_step(token, c))
    for position in range(T):
        logits, cache = step(model, y[:, position], cache)
        np.testing.assert_allclose(logits, full[:, position], rtol=1e-5, atol=1e-5)
    assert int(cache.index) == T


def test_bfloat16_compute_keeps_float32_params_and_tracks_float32_logits():
    model = random_model(tiny_config(), seed=0)
    bf16 = copy_of(model, dtype="bfloat16")
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
    x, y = batch()
    ref, low = forward(model, x, y), forward(bf16, x, y)
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, ref, atol=0.1 * float(np.abs(ref).max()))
    assert (low.argmax(-1) == ref.argmax(-1)).mean() > 0.9


@pytest.mark.parametrize("scan_layers", [True, False])
def test_every_parameter_has_logical_names_matching_its_rank_and_a_rule(scan_layers):
    model = abstract_model(tiny_config(scan_layers=scan_layers, tie_embeddings=False, activation="gated-gelu"))
    names_used = set()
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        names = variable.get_metadata()["out_sharding"]
        assert len(names) == len(variable.get_value().shape), path
        assert ("layers" in names) == (scan_layers and "layers" in path), path
        names_used.update(names)
    assert names_used <= set(LOGICAL_AXES)
    for rule_set in RULE_SETS:
        assert names_used <= {name for name, _ in logical_axis_rules(rule_set)}


def test_parameter_axes_carry_the_right_sizes():
    """A transposed annotation (e.g. ('mlp', 'embed') on wi) would pair a name with the wrong size."""
    cfg = tiny_config(scan_layers=True, tie_embeddings=False)
    sizes = {"embed": cfg.d_model, "mlp": cfg.d_ff, "heads": cfg.num_heads, "kv": cfg.d_kv,
             "vocab": cfg.vocab_size, "relpos_buckets": cfg.relative_buckets}
    for path, variable in nnx.to_flat_state(nnx.state(abstract_model(cfg), nnx.Param)):
        for name, size in zip(variable.get_metadata()["out_sharding"], variable.get_value().shape):
            expected = {"encoder": cfg.num_encoder_layers, "decoder": cfg.num_decoder_layers}.get(path[0])
            assert size == (expected if name == "layers" else sizes[name]), (path, name)
