"""One-shot magnitude pruning: the sparsity is exact, the largest weights are the ones kept, per matrix or global."""

import numpy as np
import pytest

from t5scale.compress.prune import magnitude_masks


@pytest.fixture
def weights():
    rng = np.random.default_rng(0)
    return {"a": rng.standard_normal((6, 5)), "b": 100 + rng.random((4, 3, 7)), "c": np.ones((3, 3))}


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_per_matrix_sparsity_is_exact_and_keeps_the_largest(weights, sparsity):
    masks = magnitude_masks(weights, sparsity)
    for name, w in weights.items():
        mask = masks[name]
        assert mask.shape == w.shape
        assert (~mask).sum() == round(sparsity * w.size), name  # exact, even for "c" where every |w| ties
        if 0 < mask.sum() < w.size and name != "c":
            assert np.abs(w[mask]).min() > np.abs(w[~mask]).max()


def test_global_sparsity_is_exact_over_all_matrices_with_one_threshold(weights):
    masks = magnitude_masks(weights, 0.5, scope="global")
    total = sum(w.size for w in weights.values())
    assert sum((~m).sum() for m in masks.values()) == round(0.5 * total)
    kept = np.concatenate([np.abs(weights[n][masks[n]]) for n in weights])
    dropped = np.concatenate([np.abs(weights[n][~masks[n]]) for n in weights])
    assert kept.min() >= dropped.max()
    # One threshold, not one per matrix: the small matrices go entirely (39 weights), then 23 of the large one's 84.
    assert not masks["a"].any() and not masks["c"].any() and masks["b"].sum() == 84 - 23


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5])
def test_sparsity_outside_zero_one_is_refused(weights, sparsity):
    with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
        magnitude_masks(weights, sparsity)


def test_unknown_scope_is_refused(weights):
    with pytest.raises(ValueError, match="choose among matrix, global"):
        magnitude_masks(weights, 0.5, scope="row")
