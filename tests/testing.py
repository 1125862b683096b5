"""Shared tiny configs and helpers for the tests.

Tiny shapes use a different size on every axis so a transposed axis fails loudly:
EL 2, DL 3, DM 24, KV 5, NH 4 (attention dim 20 != DM), FF 36, vocab 64.
"""

from __future__ import annotations

import pathlib

import numpy as np
from flax import nnx

from t5scale.config import ModelConfig

REPO = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


def tiny_config(**overrides) -> ModelConfig:
    fields = dict(num_encoder_layers=2, num_decoder_layers=3, d_model=24, d_kv=5, num_heads=4, d_ff=36,
                  vocab_size=64, name="test-tiny")
    fields.update(overrides)
    return ModelConfig(**fields)


def random_tokens(rng: np.random.Generator, shape: tuple[int, ...], vocab_size: int = 64) -> np.ndarray:
    """Token ids in [2, vocab): never padding (0) or EOS (1)."""
    return rng.integers(2, vocab_size, shape).astype(np.int32)


def random_model(cfg: ModelConfig, seed: int = 0):
    """A model with random weights, fast: numpy fills an abstract model (T5's jitted random init costs ~10 s of
    XLA compilation per model on a small CPU). Norm scales near 1, weights ~ N(0, 1/fan_in)."""
    from t5scale import abstract_model
    from t5scale.model.layout import load_flat_params, param_shapes

    rng = np.random.default_rng(seed)
    model = abstract_model(cfg)
    params = {}
    for name, shape in param_shapes(model).items():
        if len(shape) == 1:
            params[name] = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name == "token_embedder/embedding":
            params[name] = rng.standard_normal(shape)
        else:
            params[name] = rng.standard_normal(shape) / np.sqrt(shape[0])
    load_flat_params(model, params)
    return model


@nnx.jit
def forward(model, encoder_tokens, decoder_tokens, **kwargs):
    """Jitted `model(...)`: un-jitted calls re-trace every scanned stack and make tests slow."""
    return model(encoder_tokens, decoder_tokens, **kwargs)


def assert_imported_like_the_reference(model, variant: str, ref: dict) -> None:
    """An imported parity fixture (tests/fixtures/{hf,mtf}): its shape has EL != DL and NH*KV != DM, v1.0 is ReLU with
    tied embeddings and v1.1 gated-GELU untied, and its logits are the reference implementation's to 1e-4."""
    import numpy as np

    from t5scale.config import Activation

    cfg = model.cfg
    assert cfg.num_encoder_layers != cfg.num_decoder_layers and cfg.attention_dim != cfg.d_model
    assert cfg.activation is (Activation.RELU if variant == "v1_0" else Activation.GATED_GELU)
    assert cfg.tie_embeddings == (variant == "v1_0")
    logits = forward(model, ref["encoder_input_tokens"], ref["decoder_input_tokens"])
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=1e-4)


def assert_cached_decoding_like_the_reference(model, ref: dict) -> None:
    """Decoding the reference's decoder inputs one token at a time through the cache gives its logits (1e-4)."""
    import jax
    import numpy as np

    x, y = ref["encoder_input_tokens"], ref["decoder_input_tokens"]
    cache = model.init_cache(model.encode(x), x, max_decode_len=y.shape[1])
    step = jax.jit(lambda m, token, c: m.decode_step(token, c))
    for position in range(y.shape[1]):
        logits, cache = step(model, y[:, position], cache)
        np.testing.assert_allclose(logits, ref["logits"][:, position], atol=1e-4, rtol=1e-4)


def kept_floats(fn, *args) -> int:
    """Float elements autodiff keeps from fn's forward pass for its backward pass, not counting fn's arguments
    (parameters and inputs) and scalars."""
    import jax.numpy as jnp
    from jax._src.ad_checkpoint import saved_residuals  # what jax.ad_checkpoint.print_saved_residuals prints

    return sum(aval.size for aval, source in saved_residuals(fn, *args)
               if not source.startswith("from the argument") and aval.ndim and jnp.issubdtype(aval.dtype,
                                                                                             jnp.floating))
