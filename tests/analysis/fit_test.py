"""Scaling-law fits recover known constants from noisy points within their bootstrap intervals; degenerate
input is a clear error, not a wild fit."""

import numpy as np
import pytest

from t5scale.analysis.fit import fit_scaling_law

# Chinchilla's published fit (Hoffmann et al. 2022): E 1.69, A 406.4, alpha 0.34, B 410.7, beta 0.28.
TRUE = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}


def test_one_variable_fit_recovers_the_constants_and_extrapolates():
    n = np.geomspace(1e6, 1e9, 10)
    loss = (2.0 + 300.0 / n**0.3) * np.exp(np.random.default_rng(0).normal(0, 0.003, n.size))
    fit = fit_scaling_law(n, loss, bootstrap=100)
    for name, value in {"E": 2.0, "A": 300.0, "alpha": 0.3}.items():
        low, high = fit.intervals[name]
        assert low <= value <= high, (name, fit.intervals)
    assert fit.alpha == pytest.approx(0.3, rel=0.05) and fit.E == pytest.approx(2.0, rel=0.02)
    value, (low, high) = fit.extrapolate(1e10)
    assert low <= 2.0 + 300.0 / 1e10**0.3 <= high and low < value < high


def test_two_variable_fit_recovers_chinchillas_constants_within_intervals():
    n, d = np.geomspace(1e6, 1e9, 6).repeat(3), np.tile([1e8, 1e9, 1e10], 6)
    clean = TRUE["E"] + TRUE["A"] / n ** TRUE["alpha"] + TRUE["B"] / d ** TRUE["beta"]
    loss = clean * np.exp(np.random.default_rng(0).normal(0, 0.003, n.size))
    fit = fit_scaling_law(n, loss, d, bootstrap=40)
    for name, value in TRUE.items():
        low, high = fit.intervals[name]
        assert low <= value <= high, (name, fit.intervals)
    assert fit.alpha == pytest.approx(TRUE["alpha"], rel=0.03)
    np.testing.assert_allclose(fit.predict(n, d), clean, rtol=0.01)


@pytest.mark.parametrize("n, loss, message", [
    ([1e6, 1e7, 1e8], [3.0, 2.5, 2.2], "3 runs cannot pin down 3 parameters"),
    ([1e6, 1e7, 1e8, 1e9], [2.5, 2.5, 2.5, 2.5], "the same loss"),
    ([1e6, 1e6, 1e6, 1e6], [3.0, 2.5, 2.2, 2.1], "must vary"),
    ([1e6, 1e7, 1e8, 1e9], [3.0, float("nan"), 2.2, 2.1], "positive and finite"),
    ([1e6, 1e7, 1e8], [3.0, 2.5], "one value per run"),
])
def test_degenerate_input_is_a_clear_error(n, loss, message):
    with pytest.raises(ValueError, match=message):
        fit_scaling_law(n, loss, bootstrap=0)
