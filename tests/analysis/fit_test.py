"""Scaling-law fits recover known constants from noisy points within bootstrap intervals of bounded width, which
cover the truth about as often as they say over many seeded draws; too few runs for trustworthy intervals is said;
degenerate input is a clear error, not a wild fit."""

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
    assert high - low < 0.05 * value  # not wide enough to hold anything
    assert fit.intervals["alpha"][1] - fit.intervals["alpha"][0] < 0.1 and fit.intervals["E"][1] < 2.2


def test_two_variable_fit_recovers_chinchillas_constants_within_intervals():
    n, d = np.geomspace(1e6, 1e9, 6).repeat(3), np.tile([1e8, 1e9, 1e10], 6)
    clean = TRUE["E"] + TRUE["A"] / n ** TRUE["alpha"] + TRUE["B"] / d ** TRUE["beta"]
    loss = clean * np.exp(np.random.default_rng(0).normal(0, 0.003, n.size))
    fit = fit_scaling_law(n, loss, d, bootstrap=40)
    for name, value in TRUE.items():
        low, high = fit.intervals[name]
        assert low <= value <= high, (name, fit.intervals)
    assert fit.alpha == pytest.approx(TRUE["alpha"], rel=0.03)
    for name, value in TRUE.items():
        low, high = fit.intervals[name]
        assert high - low < 0.5 * value, (name, fit.intervals)
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


# Measured on this machine (L(N) over 1e6..1e9, 1% log-normal noise, 40 seeded draws; how many of the 40 95%
# intervals held the truth for E, A, alpha and L(1e10), 10x beyond the largest run): 10 runs with the default 200
# resamples 40, 38, 38, 40; 10 runs with 40 resamples 38, 37, 37, 38; 8 runs 38, 37, 37, 39; 5 runs 38, 36, 36, 38;
# 4 runs only 28, 26, 27, 28 (docs/scaling.md).
@pytest.mark.slow  # 40 fits of 40 resamples: about a minute
def test_intervals_cover_the_truth_as_often_as_they_say_over_40_draws():
    n = np.geomspace(1e6, 1e9, 10)
    true = {"E": 2.0, "A": 300.0, "alpha": 0.3}
    clean = true["E"] + true["A"] / n ** true["alpha"]
    at_10x = true["E"] + true["A"] / 1e10 ** true["alpha"]
    covered, widths = {k: 0 for k in (*true, "L(1e10)")}, {k: [] for k in (*true, "L(1e10)")}
    for seed in range(40):
        loss = clean * np.exp(np.random.default_rng(1000 + seed).normal(0, 0.01, n.size))
        fit = fit_scaling_law(n, loss, bootstrap=40, seed=seed)
        intervals = {**fit.intervals, "L(1e10)": fit.extrapolate(1e10)[1]}
        for name, value in {**true, "L(1e10)": at_10x}.items():
            low, high = intervals[name]
            covered[name] += low <= value <= high
            widths[name].append((high - low) / value)
    assert all(count >= 32 for count in covered.values()), covered  # at least 80% at 95% nominal
    # Relative widths (median over the draws), about twice what was measured: an interval that holds everything fails.
    bounds = {"E": 0.5, "A": 2.5, "alpha": 0.5, "L(1e10)": 0.2}
    assert all(np.median(widths[name]) < bound for name, bound in bounds.items()), \
        {name: np.median(w) for name, w in widths.items()}


def test_a_fit_from_too_few_runs_says_its_intervals_are_not_to_be_trusted(caplog):
    n = np.geomspace(1e6, 1e9, 4)
    fit_scaling_law(n, 2.0 + 300.0 / n**0.3, bootstrap=2)
    assert "4 runs for 3 parameters" in caplog.text and "cover the truth less often" in caplog.text
    caplog.clear()
    n = np.geomspace(1e6, 1e9, 6)
    fit_scaling_law(n, 2.0 + 300.0 / n**0.3, bootstrap=2)
    assert not caplog.text
