"""Pareto membership on hand-made points: dominance both ways, ties, duplicates, one point, missing values."""

import pytest

from t5scale.analysis.pareto import frontier, mark_frontier


def test_dominated_points_are_off_the_frontier():
    # cost, quality: (1, 1) (2, 3) (3, 2) (4, 4) -> (3, 2) is dominated by (2, 3).
    assert frontier([1, 2, 3, 4], [1, 3, 2, 4]) == [True, True, False, True]


def test_equal_cost_keeps_only_the_better_and_equal_quality_only_the_cheaper():
    assert frontier([1, 1], [1, 2]) == [False, True]
    assert frontier([1, 2], [5, 5]) == [True, False]


def test_exact_duplicates_are_both_on_it_and_one_point_is_its_own_frontier():
    assert frontier([1, 1, 2], [3, 3, 1]) == [True, True, False]
    assert frontier([7], [0.5]) == [True]


def test_rows_are_marked_and_rows_without_values_are_left_out():
    rows = [{"name": "a", "params": 10, "q": 1.0}, {"name": "b", "params": 20, "q": 0.5},
            {"name": "c", "params": 30, "q": None}]
    assert [r["pareto"] for r in mark_frontier(rows, "params", "q")] == [True, False, None]
    with pytest.raises(ValueError, match="Unknown cost axis 'parameters'"):
        mark_frontier(rows, "parameters", "q")
    with pytest.raises(ValueError, match="No run has both 'params' and 'accuracy'"):
        mark_frontier(rows, "params", "accuracy")
