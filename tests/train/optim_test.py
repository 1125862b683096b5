"""t5scale.train.optim: T5's learning-rate schedules and its Adafactor, checked against the paper's formulas and a
numpy Adafactor written from Shazeer & Stern (2018) as Mesh TensorFlow runs it for T5."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5scale.train.optim import OptimConfig, Schedule, make_learning_rate_fn, make_optimizer


@pytest.mark.parametrize("step, lr", [(0, 0.01), (1, 0.01), (10_000, 0.01), (40_000, 0.005), (1_000_000, 0.001)])
def test_rsqrt_schedule_is_constant_through_warmup_then_one_over_sqrt_step(step, lr):
    assert float(make_learning_rate_fn(OptimConfig())(step)) == pytest.approx(lr, rel=1e-6)


def test_rsqrt_warmup_steps_set_where_the_decay_begins():
    lr_fn = make_learning_rate_fn(OptimConfig(learning_rate=2.0, warmup_steps=100))
    assert float(lr_fn(50)) == float(lr_fn(100)) == pytest.approx(0.2)
    assert float(lr_fn(400)) == pytest.approx(0.1)


def test_linear_warmup_cosine_rises_linearly_then_decays_to_zero():
    lr_fn = make_learning_rate_fn(OptimConfig(schedule="linear_warmup_cosine", learning_rate=1e-3,
                                              warmup_steps=10, decay_steps=110))
    assert [float(lr_fn(s)) for s in (0, 5, 10)] == pytest.approx([0.0, 5e-4, 1e-3])
    assert float(lr_fn(60)) == pytest.approx(5e-4)  # half way down the cosine
    assert float(lr_fn(110)) == pytest.approx(0.0, abs=1e-12)


def test_defaults_are_t5_pretraining_adafactor():
    cfg = OptimConfig()
    assert (cfg.schedule, cfg.learning_rate, cfg.warmup_steps) == (Schedule.RSQRT, 1.0, 10_000)
    assert (cfg.decay_rate, cfg.clipping_threshold, cfg.multiply_by_parameter_scale) == (0.8, 1.0, True)
    assert cfg.momentum is None and cfg.weight_decay_rate is None


def reference_adafactor(params, grads_per_step, lr_fn, decay_rate=0.8, clip=1.0, eps=1e-30):
    """Adafactor as T5 trains with it: factored second moments for matrices whose two dims are >= 128, update
    clipping by RMS, relative step size (times max(RMS(param), 1e-3)), no momentum."""
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    moments = {}
    for step, grads in enumerate(grads_per_step):
        beta2 = 1.0 - (step + 1.0) ** -decay_rate  # 0 at the first step: the moments start as that step's g^2
        for name, g in grads.items():
            g = np.asarray(g, np.float64)
            g2 = g * g + eps
            if g.ndim == 2 and min(g.shape) >= 128:
                row, col = moments.get(name, (0.0, 0.0))
                row = beta2 * row + (1 - beta2) * g2.mean(axis=1)
                col = beta2 * col + (1 - beta2) * g2.mean(axis=0)
                moments[name] = (row, col)
                v = np.outer(row, col) / row.mean()  # the rank-1 estimate of E[g^2]
            else:
                v = beta2 * moments.get(name, 0.0) + (1 - beta2) * g2
                moments[name] = v
            u = g / np.sqrt(v)
            u /= max(1.0, np.sqrt(np.mean(u * u)) / clip)
            scale = max(np.sqrt(np.mean(params[name] ** 2)), 1e-3)
            params[name] = params[name] - lr_fn(step) * scale * u
    return params, moments


def test_adafactor_matches_the_reference_over_steps_with_factored_and_full_moments():
    rng = np.random.default_rng(0)
    # kernel: both dims >= 128, factored; narrow: one dim < 128, full moments; bias: a vector, full moments.
    shapes = {"kernel": (128, 160), "narrow": (64, 256), "bias": (7,)}
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(3)]
    cfg = OptimConfig(warmup_steps=1)  # lr 1/sqrt(max(step, 1)): a different lr every step
    tx = make_optimizer(cfg)
    state, current = tx.init(params), jax.tree.map(jnp.asarray, params)
    for g in grads:
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, current)
        current = jax.tree.map(jnp.add, current, updates)
    expected, moments = reference_adafactor(params, grads, lambda s: 1.0 / np.sqrt(max(s, 1)))
    for name in shapes:
        np.testing.assert_allclose(np.asarray(current[name]), expected[name], rtol=2e-5, atol=1e-6)
    factored = state[0]
    assert factored.v_row["kernel"].shape == (128,) and factored.v_col["kernel"].shape == (160,)
    assert factored.v["kernel"].shape == (1,)  # no full second moment kept for a factored matrix
    np.testing.assert_allclose(factored.v_row["kernel"], moments["kernel"][0], rtol=1e-5)
    np.testing.assert_allclose(factored.v_col["kernel"], moments["kernel"][1], rtol=1e-5)
    assert factored.v["narrow"].shape == (64, 256) and factored.v_row["narrow"].shape == (1,)
    np.testing.assert_allclose(factored.v["narrow"], moments["narrow"], rtol=1e-5)


def test_unknown_schedule_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"schedule='cosine'; choose one of \['rsqrt', 'constant', "):
        OptimConfig(schedule="cosine")
