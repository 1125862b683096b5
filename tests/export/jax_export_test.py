"""The exported decode program takes the parameters as its argument: one program decodes any checkpoint of its
shape, exactly as t5scale's own decoding of that checkpoint, after a serialize/deserialize round trip."""

from __future__ import annotations

import jax
import numpy as np

from t5scale.export.jax_export import DecodeSettings, decode_function, export_decode, flat_params, io_signature
from t5scale.model import decoding
from tests.testing import random_model, random_tokens, tiny_config


def test_one_program_decodes_any_checkpoint_of_its_shape():
    cfg = tiny_config()
    first, second = random_model(cfg, seed=0), random_model(cfg, seed=1)
    settings = DecodeSettings(batch=3, input_length=8, output_length=5, platforms=("cpu",))
    decode, params = decode_function(first, settings)
    program = jax.export.deserialize(export_decode(decode, params, settings).serialize())
    tokens = random_tokens(np.random.default_rng(0), (3, 8))
    for model in (first, second):
        got = program.call(flat_params(model)[0], tokens)["tokens"]
        assert np.array_equal(got, decoding.greedy_decode(model, tokens, 5))
    assert not np.array_equal(decoding.greedy_decode(first, tokens, 5), decoding.greedy_decode(second, tokens, 5))


def test_signature_lists_the_fixed_shapes_of_beam_search():
    settings = DecodeSettings(batch=2, input_length=8, output_length=5, beam_size=3, platforms=("cpu",))
    decode, params = decode_function(random_model(tiny_config()), settings)
    inputs, outputs = io_signature(export_decode(decode, params, settings))
    assert inputs["tokens"] == {"shape": [2, 8], "dtype": "int32"}
    assert inputs["params"] == {"arrays": len(params), "dtypes": ["float32"]}
    assert outputs == {"tokens": {"shape": [2, 5], "dtype": "int32"}, "scores": {"shape": [2], "dtype": "float32"}}
