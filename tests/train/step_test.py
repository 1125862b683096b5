"""t5scale.train.step: the token-weighted loss with z-loss, gradient accumulation, dropout keys, the eval step.

The train steps use SGD with learning rate 1, so `params - new_params` is exactly the gradient the step computed
(Adafactor is nearly invariant to the gradient's scale and would hide a wrong normalisation).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from t5scale.train.step import (
    TrainState,
    cross_entropy,
    make_eval_step,
    make_train_step,
    train_step_compiler_options,
)
from tests.testing import forward, random_model, random_tokens, tiny_config

CFG = tiny_config(num_encoder_layers=1, num_decoder_layers=1, scan_layers=False)  # the fastest to compile
SGD = optax.sgd(1.0)
Z_LOSS = 1e-2  # large enough to matter at these tolerances


def reference_cross_entropy(logits, targets, weights, z_loss):
    """numpy, float64: log-softmax loss + z_loss * logZ^2, summed with the token weights."""
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    log_z = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[..., 0]
    nll = log_z - np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0]
    weights = np.asarray(weights, np.float64)
    return {"loss": np.sum((nll + z_loss * log_z**2) * weights), "z_loss": np.sum(z_loss * log_z**2 * weights),
            "correct": np.sum((logits.argmax(-1) == targets) * weights), "tokens": weights.sum()}


def make_batch(seed=0):
    """4 rows with 5, 1, 3 and 0 real target tokens (trailing padding has weight 0): microbatches of 2 rows hold
    6 and 3 tokens, of 1 row 5, 1, 3, 0 -- a per-microbatch mean would differ from the full-batch mean."""
    rng = np.random.default_rng(seed)
    lengths = np.array([5, 1, 3, 0])
    weights = (np.arange(5)[None] < lengths[:, None]).astype(np.float32)
    targets = random_tokens(rng, (4, 5)) * (weights > 0)
    return {"encoder_input_tokens": random_tokens(rng, (4, 7)),
            "decoder_input_tokens": np.concatenate([np.zeros((4, 1), np.int32), targets[:, :-1]], 1),
            "decoder_target_tokens": targets.astype(np.int32), "decoder_loss_weights": weights}


@pytest.fixture(scope="module")
def model():
    return random_model(CFG)


@pytest.fixture(scope="module")
def state(model):
    _, params = nnx.split(model, nnx.Param)
    return TrainState(jnp.zeros((), jnp.int32), params, SGD.init(params))


@functools.cache
def train_step(microbatches, dropout_rate=0.0):
    graphdef, _ = nnx.split(random_model(CFG.replace(dropout_rate=dropout_rate)), nnx.Param)
    return jax.jit(make_train_step(graphdef, SGD, z_loss=Z_LOSS, microbatches=microbatches, dropout_seed=7))


@pytest.fixture(scope="module")
def eval_step(model):
    return jax.jit(make_eval_step(nnx.split(model, nnx.Param)[0], z_loss=Z_LOSS))


def reference_sums(model, batch):
    logits = forward(model, batch["encoder_input_tokens"], batch["decoder_input_tokens"])
    return reference_cross_entropy(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"], Z_LOSS)


def flat(params):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])


@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_cross_entropy_sums_match_a_numpy_log_softmax_reference(z_loss):
    rng = np.random.default_rng(0)
    logits = 3 * rng.standard_normal((3, 5, 11)).astype(np.float32)
    targets = rng.integers(0, 11, (3, 5)).astype(np.int32)
    targets[:, :2] = logits[:, :2].argmax(-1)  # some correct predictions
    weights = rng.choice([0.0, 0.5, 1.0], (3, 5)).astype(np.float32)
    got = cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), z_loss)
    want = reference_cross_entropy(logits, targets, weights, z_loss)
    assert want["correct"] > 0 and (z_loss == 0) == (want["z_loss"] == 0)
    for key in want:
        np.testing.assert_allclose(float(got[key]), want[key], rtol=1e-5, err_msg=key)


def test_step_loss_is_the_sum_over_real_target_tokens_divided_by_their_number(model, state):
    batch = make_batch()
    new_state, metrics = train_step(1)(state, batch)
    want = reference_sums(model, batch)
    assert int(new_state.step) == 1 and float(metrics["tokens"]) == want["tokens"] == 9
    for key, total in [("loss", "loss"), ("z_loss", "z_loss"), ("accuracy", "correct")]:
        np.testing.assert_allclose(float(metrics[key]), want[total] / 9, rtol=1e-5, err_msg=key)


def test_step_gradient_is_that_of_the_mean_loss_over_real_tokens(state, eval_step):
    # With SGD(1) the step moved the params by -g; a central difference of the eval mean loss along g must be |g|^2.
    batch = make_batch()
    new_state, metrics = train_step(1)(state, batch)
    g = jax.tree.map(jnp.subtract, state.params, new_state.params)
    np.testing.assert_allclose(float(metrics["grad_norm"]), np.linalg.norm(flat(g)), rtol=1e-5)

    def mean_loss(eps):
        sums = eval_step(jax.tree.map(lambda p, d: p + eps * d, state.params, g), batch)
        return float(sums["loss"]) / float(sums["tokens"])

    eps = 1e-2 / float(metrics["grad_norm"]) ** 2
    slope = (mean_loss(eps) - mean_loss(-eps)) / (2 * eps)
    assert slope == pytest.approx(float(metrics["grad_norm"]) ** 2, rel=2e-2)


@pytest.mark.parametrize("microbatches", [2, 4])
def test_accumulated_microbatches_give_the_full_batch_loss_and_update(state, microbatches):
    batch = make_batch()
    full_state, full = train_step(1)(state, batch)
    accumulated_state, accumulated = train_step(microbatches)(state, batch)
    for key in full:
        np.testing.assert_allclose(float(accumulated[key]), float(full[key]), rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(flat(accumulated_state.params), flat(full_state.params), rtol=1e-5, atol=1e-7)


def test_tokens_with_weight_zero_change_neither_the_loss_nor_the_update(state):
    batch = make_batch()
    padded = dict(batch, decoder_target_tokens=np.where(batch["decoder_loss_weights"] > 0,
                                                        batch["decoder_target_tokens"], 63).astype(np.int32))
    padded["decoder_input_tokens"] = np.concatenate([padded["decoder_input_tokens"][:, :1],
                                                     padded["decoder_target_tokens"][:, :-1]], 1)
    assert not np.array_equal(padded["decoder_target_tokens"], batch["decoder_target_tokens"])
    clean_state, clean = train_step(1)(state, batch)
    padded_state, with_padding = train_step(1)(state, padded)
    np.testing.assert_allclose(float(with_padding["loss"]), float(clean["loss"]), rtol=1e-6)
    np.testing.assert_allclose(flat(padded_state.params), flat(clean_state.params), rtol=1e-6, atol=1e-8)


def test_dropout_is_on_and_its_key_depends_only_on_the_step(state):
    batch = make_batch()
    step = train_step(1, dropout_rate=0.3)
    first_state, first = step(state, batch)
    again_state, again = step(state, batch)  # no hidden RNG state: the same state and batch, the same masks
    assert float(again["loss"]) == float(first["loss"])
    np.testing.assert_array_equal(flat(again_state.params), flat(first_state.params))
    _, at_5 = step(state.replace(step=jnp.int32(5)), batch)  # another step, other masks
    _, no_dropout = train_step(1)(state, batch)
    losses = [float(first["loss"]), float(at_5["loss"]), float(no_dropout["loss"])]
    assert min(abs(a - b) for i, a in enumerate(losses) for b in losses[i + 1:]) > 1e-3, losses


def test_eval_step_sums_are_cross_entropy_on_the_models_logits(model, state, eval_step):
    batch = make_batch(seed=1)
    sums = eval_step(state.params, batch)
    want = reference_sums(model, batch)
    assert set(sums) == set(want)
    for key in want:
        np.testing.assert_allclose(float(sums[key]), want[key], rtol=1e-5, err_msg=key)


def test_on_a_cpu_the_train_step_compiles_with_a_scheduler_that_needs_fewer_temporaries():
    """The trainer's compiler options (this jaxlib knows them) keep fewer temporaries alive than XLA's default."""
    assert jax.default_backend() == "cpu"
    cfg = tiny_config(num_encoder_layers=2, num_decoder_layers=2)
    model = random_model(cfg)
    graphdef, params = nnx.split(model, nnx.Param)
    state = TrainState(jnp.zeros((), jnp.int32), params, SGD.init(params))
    rng = np.random.default_rng(0)
    batch = {"encoder_input_tokens": random_tokens(rng, (4, 64)), "decoder_input_tokens": random_tokens(rng, (4, 16)),
             "decoder_target_tokens": random_tokens(rng, (4, 16)),
             "decoder_loss_weights": np.ones((4, 16), np.float32)}
    step = make_train_step(graphdef, SGD, z_loss=Z_LOSS, microbatches=1, dropout_seed=0)
    temporaries = [jax.jit(step, compiler_options=options).lower(state, batch).compile().memory_analysis()
                   .temp_size_in_bytes for options in (None, train_step_compiler_options())]
    assert temporaries[1] < 0.9 * temporaries[0]
