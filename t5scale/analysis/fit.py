"""Scaling-law fits, Chinchilla's approach 3 (Hoffmann et al. 2022, appendix D.2; see Epoch AI's replication,
arXiv 2404.10102, for how such fits go wrong):

    L(N)    = E + A / N^alpha
    L(N, D) = E + A / N^alpha + B / D^beta

written as log L = logsumexp(e, a - alpha log N, b - beta log D) with E = exp(e), A = exp(a), B = exp(b), fitted
by minimising the Huber loss (delta 1e-3) of log L_predicted - log L_observed with L-BFGS-B from a grid of
starting points (the best kept). Bootstrap intervals refit resampled points from the best full-data fit.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Sequence

import numpy as np
from scipy import optimize
from threadpoolctl import threadpool_limits

HUBER_DELTA = 1e-3
# Below this many runs per fitted parameter the bootstrap intervals are overconfident: with 4 runs for L(N)'s 3,
# 95% intervals held the true constants and a 10x extrapolation in only 26-28 of 40 seeded draws (5 runs: 36-38).
RUNS_PER_PARAMETER = 5 / 3
# Starting grid (log-space coefficients, exponents): coarser than Chinchilla's, enough for a few dozen runs.
GRID = {"e": (-1.0, 1.0), "a": (0.0, 6.0, 12.0), "alpha": (0.3, 1.0), "b": (0.0, 6.0, 12.0), "beta": (0.3, 1.0)}
BOUNDS = {"e": (-20, 20), "a": (-20, 60), "alpha": (0.0, 5.0), "b": (-20, 60), "beta": (0.0, 5.0)}


@dataclasses.dataclass(frozen=True)
class Fit:
    E: float
    A: float
    alpha: float
    B: float | None = None  # two-variable fits only
    beta: float | None = None
    objective: float = 0.0
    n_points: int = 0
    intervals: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)  # 95% bootstrap
    bootstrap: tuple["Fit", ...] = ()

    def predict(self, n, d=None) -> np.ndarray:
        loss = self.E + self.A / np.asarray(n, float) ** self.alpha
        if self.B is not None:
            if d is None:
                raise ValueError("This fit is L(N, D): give D too.")
            loss = loss + self.B / np.asarray(d, float) ** self.beta
        return loss

    def extrapolate(self, n, d=None) -> tuple[float, tuple[float, float]]:
        """The predicted loss at (n, d) and its 95% bootstrap interval."""
        value = float(self.predict(n, d))
        samples = [float(f.predict(n, d)) for f in self.bootstrap]
        low, high = np.percentile(samples, [2.5, 97.5]) if samples else (value, value)
        return value, (float(low), float(high))


def _objective(x: np.ndarray, log_n: np.ndarray, log_d: np.ndarray | None, log_loss: np.ndarray,
               delta: float = HUBER_DELTA) -> tuple[float, np.ndarray]:
    """Huber loss (over delta) of log L_predicted - log L, and its gradient in x = (e, a, alpha[, b, beta])."""
    terms = [np.full_like(log_n, x[0]), x[1] - x[2] * log_n]
    if log_d is not None:
        terms.append(x[3] - x[4] * log_d)
    terms = np.stack(terms)
    log_pred = np.logaddexp.reduce(terms, axis=0)
    residual = log_pred - log_loss
    small = np.abs(residual) <= delta
    # Divided by delta: the same minimum, but gradients of order one, so the optimizer does not stop early on a
    # flat objective (the pitfall Epoch AI's replication found in the original fit).
    value = np.sum(np.where(small, 0.5 * residual**2 / delta, np.abs(residual) - 0.5 * delta))
    slope = np.clip(residual / delta, -1.0, 1.0)  # d (huber / delta) / d residual
    weights = np.exp(terms - log_pred)  # d log_pred / d term
    grad = [np.sum(slope * weights[0]), np.sum(slope * weights[1]), -np.sum(slope * weights[1] * log_n)]
    if log_d is not None:
        grad += [np.sum(slope * weights[2]), -np.sum(slope * weights[2] * log_d)]
    return float(value), np.asarray(grad)


def _check(n, d, loss) -> None:
    n_params = 3 if d is None else 5
    arrays = [np.asarray(v, float) for v in (n, loss, *(() if d is None else (d,)))]
    if len({len(a) for a in arrays}) != 1:
        raise ValueError("fit: N, D and loss need one value per run each.")
    if any((a <= 0).any() or not np.isfinite(a).all() for a in arrays):
        raise ValueError("fit: N, D and losses must be positive and finite.")
    if len(arrays[0]) <= n_params:
        raise ValueError(f"fit: {len(arrays[0])} runs cannot pin down {n_params} parameters; need at least "
                         f"{n_params + 1}.")
    if np.ptp(arrays[1]) == 0:
        raise ValueError("fit: every run has the same loss; there is no trend to fit.")
    if np.ptp(arrays[0]) == 0 or (d is not None and np.ptp(arrays[2]) == 0):
        raise ValueError("fit: N (and D, for L(N, D)) must vary across runs.")


def _minimize(start, log_n, log_d, log_loss, names, polish: bool):
    options = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000} if polish else {}
    return optimize.minimize(_objective, np.asarray(start, float), args=(log_n, log_d, log_loss), jac=True,
                             method="L-BFGS-B", bounds=[BOUNDS[k] for k in names], options=options)


def _best_fit(log_n, log_d, log_loss, starts) -> tuple[np.ndarray, float]:
    """Every start with L-BFGS-B's default tolerances, then the best three polished with tight ones."""
    names = ["e", "a", "alpha", *([] if log_d is None else ["b", "beta"])]
    rough = sorted((_minimize(s, log_n, log_d, log_loss, names, polish=False) for s in starts), key=lambda r: r.fun)
    best = min((_minimize(r.x, log_n, log_d, log_loss, names, polish=True) for r in rough[:3]), key=lambda r: r.fun)
    return best.x, float(best.fun)


def _as_fit(x: np.ndarray, objective: float, n_points: int, **extra) -> Fit:
    two = len(x) == 5
    return Fit(E=float(np.exp(x[0])), A=float(np.exp(x[1])), alpha=float(x[2]),
               B=float(np.exp(x[3])) if two else None, beta=float(x[4]) if two else None,
               objective=objective, n_points=n_points, **extra)


def fit_scaling_law(n: Sequence[float], loss: Sequence[float], d: Sequence[float] | None = None, *,
                    bootstrap: int = 200, seed: int = 0) -> Fit:
    """L(N) (or L(N, D) when `d` is given) fitted as the module doc says, with `bootstrap` resamples."""
    _check(n, d, loss)
    n_params = 3 if d is None else 5
    if len(n) < RUNS_PER_PARAMETER * n_params:
        logging.warning("fit: %d runs for %d parameters: its intervals cover the truth less often than they say "
                        "(docs/scaling.md); %d or more runs give intervals to trust.", len(n), n_params,
                        int(np.ceil(RUNS_PER_PARAMETER * n_params)))
    # One BLAS thread: L-BFGS-B's products over a handful of parameters are the slower for a thread pool (a fit
    # took 18x longer with the default pool on a busy 2-core machine).
    with threadpool_limits(1):
        return _fit(n, loss, d, bootstrap, seed)


def _fit(n, loss, d, bootstrap: int, seed: int) -> Fit:
    log_n, log_loss = np.log(np.asarray(n, float)), np.log(np.asarray(loss, float))
    log_d = None if d is None else np.log(np.asarray(d, float))
    names = ["e", "a", "alpha", *([] if d is None else ["b", "beta"])]
    x, objective = _best_fit(log_n, log_d, log_loss, itertools.product(*(GRID[k] for k in names)))
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
        pick = rng.integers(0, len(log_n), len(log_n))
        if np.ptp(log_n[pick]) == 0 or (log_d is not None and np.ptp(log_d[pick]) == 0):
            continue  # a resample without any spread in N (or D) says nothing about the exponent
        xb, fb = _best_fit(log_n[pick], None if log_d is None else log_d[pick], log_loss[pick], [x])
        samples.append(_as_fit(xb, fb, len(pick)))
    intervals = {}
    for name in ("E", "A", "alpha", *(() if d is None else ("B", "beta"))):
        values = [getattr(s, name) for s in samples]
        if values:
            intervals[name] = tuple(float(v) for v in np.percentile(values, [2.5, 97.5]))
    return _as_fit(x, objective, len(log_n), intervals=intervals, bootstrap=tuple(samples))
