"""Models and checkpoints the compression tests share: a tiny T5 trained for a few seconds, and t5scale checkpoints
written without the trainer (the params an orbax checkpoint holds, plus the MODEL_DIR's config.json)."""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from t5scale.config import ModelConfig
from tests.testing import random_model, random_tokens, tiny_config

COPY_BATCH, COPY_LEN = 16, 7
TRAIN_BATCHES = 4  # few enough to fit in 200 steps: the model becomes confident on them


def copy_batch(seed: int, vocab_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(encoder tokens, decoder inputs, targets) of the copy task: the target is the input."""
    tokens = random_tokens(np.random.default_rng(seed), (COPY_BATCH, COPY_LEN), vocab_size)
    return tokens, np.pad(tokens[:, :-1], ((0, 0), (1, 0))), tokens


@functools.cache
def trained_tiny_flat() -> tuple[ModelConfig, dict]:
    """A tiny T5 trained on the copy task until it mostly copies (Adam, 200 steps): weights with a trained model's
    spread, not a random init's. Flat params (t5scale.model.layout) so each test builds its own model."""
    from t5scale.model.layout import flat_params

    cfg = tiny_config(scan_layers=False)
    model = random_model(cfg, seed=1)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, encoder, decoder, targets):
        def loss_fn(model):
            logits = model(encoder, decoder)
            return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    for i in range(200):
        step(model, optimizer, *map(jnp.asarray, copy_batch(i % TRAIN_BATCHES)))
    return cfg, flat_params(model)


def save_checkpoint(model_dir: pathlib.Path, model, step: int) -> pathlib.Path:
    """MODEL_DIR/checkpoint_<step>/state holding {"params": ...} and MODEL_DIR/config.json, as the trainer writes."""
    path = (model_dir / f"checkpoint_{step}").resolve()
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path / "state", {"params": nnx.state(model, nnx.Param)})
    (model_dir / "config.json").write_text(json.dumps({"model": model.cfg.to_dict()}))
    jax.effects_barrier()
    return path
