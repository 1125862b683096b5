"""One-shot magnitude pruning to an exact sparsity, per matrix or with one threshold across matrices.

    masks = magnitude_masks({"a": wa, "b": wb}, 0.5)                 # each matrix keeps its largest half
    masks = magnitude_masks({"a": wa, "b": wb}, 0.5, scope="global")  # the largest half of all their weights

Exactly round(sparsity * size) weights are pruned (ties in |w| broken by position, so the count is exact even on
repeated values). Matrices are whatever the caller passes: compression passes each layer's kernel on its own, so a
scanned stack is never thresholded as one matrix unless the scope is global. Gradual pruning while training (the
cubic schedule) is `t5scale.train.pruning`, which counts the same way.
"""

from __future__ import annotations

import numpy as np

from t5scale.train.pruning import SCOPES, check_scope, check_sparsity

__all__ = ["SCOPES", "check_sparsity", "magnitude_masks"]


def _smallest(magnitudes: np.ndarray, count: int) -> np.ndarray:
    """bool mask over flat `magnitudes`, True on the `count` smallest (stable: earlier position wins a tie)."""
    pruned = np.zeros(magnitudes.size, bool)
    pruned[np.argsort(magnitudes, kind="stable")[:count]] = True
    return pruned


def magnitude_masks(weights: dict[str, np.ndarray], sparsity: float, *, scope: str = "matrix"
                    ) -> dict[str, np.ndarray]:
    """{name: bool mask of the weight's shape, True where the weight is kept}."""
    check_sparsity(sparsity)
    check_scope(scope)
    if scope == "matrix":
        return {name: ~_smallest(np.abs(w).reshape(-1), round(sparsity * w.size)).reshape(w.shape)
                for name, w in weights.items()}
    names = list(weights)
    magnitudes = np.concatenate([np.abs(weights[n]).reshape(-1) for n in names])
    kept = ~_smallest(magnitudes, round(sparsity * magnitudes.size))
    bounds = np.cumsum([0] + [weights[n].size for n in names])
    return {n: kept[bounds[i]:bounds[i + 1]].reshape(weights[n].shape) for i, n in enumerate(names)}
