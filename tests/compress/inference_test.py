"""Weights kept narrow in memory: int8 computes what the dequantized int8 checkpoint computes, W8A8 matches a numpy
reference product by product, bfloat16 stays close to float32, and greedy decoding runs on all of them."""

import jax.numpy as jnp
import numpy as np
import pytest

from t5scale.compress.compressed import compress_params
from t5scale.compress.inference import NarrowWeight, keep_weights_narrow
from t5scale.compress.settings import Setting
from t5scale.model.decoding import greedy_decode
from t5scale.model.layout import flat_params
from t5scale.weights.compressed_format import decompress_params
from t5scale.weights.load import model_from_flat
from tests.testing import forward, random_model, random_tokens, tiny_config

ENCODER, DECODER = random_tokens(np.random.default_rng(0), (2, 6)), random_tokens(np.random.default_rng(1), (2, 4))


def test_int8_in_memory_computes_what_the_dequantized_int8_checkpoint_computes():
    """Scanned: the stacked codes get a scale per layer and channel, as the checkpoint's per-layer matrices do."""
    model = random_model(tiny_config(scan_layers=True))
    narrow = keep_weights_narrow(model, "int8")
    dequantized = model_from_flat(model.cfg, decompress_params(*compress_params(flat_params(model), Setting(bits=8))))
    np.testing.assert_allclose(forward(narrow, ENCODER, DECODER), forward(dequantized, ENCODER, DECODER),
                               rtol=1e-5, atol=1e-5)
    codes = narrow.encoder.layers.mlp.wo.codes
    assert isinstance(codes, NarrowWeight) and codes[...].dtype == jnp.int8 and codes[...].shape == (2, 36, 24)


def test_int8_dynamic_is_the_w8a8_product_of_a_numpy_reference():
    model = random_model(tiny_config(scan_layers=False))
    out = keep_weights_narrow(model, "int8-dynamic").encoder.layers[0].attention.out  # "tnh,nhd->td"
    x = np.random.default_rng(2).standard_normal((3, 4, 5)).astype(np.float32)  # [t, NH, KV]
    x_scale = np.abs(x).max(axis=(1, 2), keepdims=True) / 127
    x_codes = np.round(x / x_scale).astype(np.int32)
    codes, scale = np.asarray(out.codes[...], np.int32), np.asarray(out.scale[...])  # [NH, KV, D], [D]
    want = np.einsum("tnh,nhd->td", x_codes, codes) * x_scale[:, :, 0] * scale
    np.testing.assert_allclose(out(jnp.asarray(x)), want, rtol=1e-5)
    kernel = model.encoder.layers[0].attention.out.kernel[...]
    assert np.abs(np.asarray(out(jnp.asarray(x))) - np.einsum("tnh,nhd->td", x, kernel)).max() < 0.05


def test_bfloat16_stays_close_to_float32_and_narrow_products_decode():
    model = random_model(tiny_config(num_encoder_layers=1, num_decoder_layers=1, scan_layers=False))
    start = np.zeros((2, 1), np.int32)
    reference = np.asarray(forward(model, ENCODER, start))
    for mode in ("int8-dynamic", "bfloat16"):  # "int8" runs the float32 code path on dequantized weights
        narrow = keep_weights_narrow(model, mode)
        logits = np.asarray(forward(narrow, ENCODER, start))
        tokens = np.asarray(greedy_decode(narrow, ENCODER, 3))
        np.testing.assert_array_equal(tokens[:, 0], logits[:, 0].argmax(-1))  # the cached step = the full decoder
        if mode == "bfloat16":
            assert narrow.decoder.layers[0].mlp.wi.codes[...].dtype == jnp.bfloat16
            # 8 mantissa bits: each product is off by ~2^-9 relative; through 2 layers, well under 1% of the range.
            assert np.abs(logits - reference).max() < 0.01 * np.abs(reference).max()


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="Unknown mode 'int4'; choose among int8, int8-dynamic, bfloat16"):
        keep_weights_narrow(random_model(tiny_config()), "int4")
