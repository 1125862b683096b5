"""Pareto frontiers: minimise a cost (params, FLOPs, step time), maximise a quality (negative log-perplexity, a
downstream score).

A point is on the frontier unless another point dominates it: costs no more and is strictly better, or is
strictly cheaper and at least as good. So exact duplicates are both on it (neither dominates the other), and of
two points with equal quality the cheaper one alone is; a single point is its own frontier.
"""

from __future__ import annotations

from typing import Sequence

# Cost axes: a results-table column, and whether less is better for it (throughput: more is better).
COSTS = {"params": "params", "params_non_embedding": "params_non_embedding", "flops": "train_flops_per_example",
         "step_time": "step_time_s", "train_seconds": "train_seconds",
         "hbm": "plan_hbm_per_device"}  # from `t5scale results/pareto --plan plan.csv`


def frontier(costs: Sequence[float], qualities: Sequence[float]) -> list[bool]:
    """For each point, whether it is on the frontier (see the module doc for ties and duplicates)."""
    if len(costs) != len(qualities):
        raise ValueError(f"frontier: {len(costs)} costs but {len(qualities)} qualities.")
    points = list(zip(costs, qualities))

    def dominated(c, q):
        return any((c2 <= c and q2 > q) or (c2 < c and q2 >= q) for c2, q2 in points)

    return [not dominated(c, q) for c, q in points]


def mark_frontier(rows: list[dict], cost: str, quality: str) -> list[dict]:
    """Rows with `pareto` set (True/False; None for a row lacking either value), for `COSTS[cost]` vs quality."""
    column = cost_column(cost)
    usable = [i for i, row in enumerate(rows) if row.get(column) is not None and row.get(quality) is not None]
    if not usable:
        known = sorted({k for row in rows for k, v in row.items() if isinstance(v, (int, float))})
        raise ValueError(f"No run has both {column!r} and {quality!r}; numeric columns: {known}.")
    on = frontier([rows[i][column] for i in usable], [rows[i][quality] for i in usable])
    marked = [dict(row, pareto=None) for row in rows]
    for i, is_on in zip(usable, on):
        marked[i]["pareto"] = is_on
    return marked


def cost_column(cost: str) -> str:
    if cost not in COSTS:
        raise ValueError(f"Unknown cost axis {cost!r}; choose from {sorted(COSTS)}.")
    return COSTS[cost]
