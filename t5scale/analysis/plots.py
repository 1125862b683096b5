"""Figures as PNG files (matplotlib, no display): Pareto frontiers, convergence curves, scaling-law fits."""

from __future__ import annotations

from typing import Sequence

import matplotlib
import matplotlib.ticker
from etils import epath

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from t5scale.analysis import pareto  # noqa: E402

LABELS = {"params": "parameters", "params_non_embedding": "non-embedding parameters",
          "train_flops_per_example": "training FLOPs per example", "step_time_s": "step time (s, compile excluded)",
          "train_seconds": "training wall-clock (s, compile excluded)",
          "neg_log_perplexity": "negative log-perplexity (higher is better)"}


def _label(column: str) -> str:
    return LABELS.get(column, column)


def pareto_png(rows: list[dict], costs: Sequence[str], quality: str, path: str) -> epath.Path:
    """One panel per cost axis: every run a labelled point, the frontier a line, log-x."""
    fig, axes = plt.subplots(1, len(costs), figsize=(5.5 * len(costs), 4.5), squeeze=False)
    for ax, cost in zip(axes[0], costs):
        marked = [r for r in pareto.mark_frontier(rows, cost, quality) if r["pareto"] is not None]
        column = pareto.cost_column(cost)
        for row in marked:
            ax.scatter(row[column], row[quality], color="C3" if row["pareto"] else "C0", zorder=3)
            ax.annotate(row["shape"] or row["name"], (row[column], row[quality]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        front = sorted((r[column], r[quality]) for r in marked if r["pareto"])
        ax.plot(*zip(*front), color="C3", drawstyle="steps-post", label="Pareto frontier")
        ax.set_xscale("log")
        ax.set(xlabel=_label(column), ylabel=_label(quality))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def curves_png(curves: dict[str, dict[str, np.ndarray]], path: str) -> epath.Path:
    """Validation loss against steps, training seconds and training FLOPs; one line per run."""
    axes_of = (("step", "steps"), ("train_seconds", "training wall-clock (s, compile excluded)"),
               ("flops", "training FLOPs"))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for name, curve in sorted(curves.items()):
        for ax, (key, _) in zip(axes, axes_of):
            ax.plot(curve[key], curve["loss"], marker=".", label=name)
    for ax, (key, label) in zip(axes, axes_of):
        ax.set(xlabel=label, ylabel="validation loss (nats per target token)")
        ax.set_xscale("log" if key == "flops" else "linear")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def fit_png(n: Sequence[float], loss: Sequence[float], fit, path: str, *, x_label: str = "parameters",
            extrapolate_to: float | None = None) -> epath.Path:
    """The runs and the fitted L(N) on log-log axes, extended to `extrapolate_to` with its interval."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(n, loss, color="C0", zorder=3, label="runs")
    grid = np.geomspace(min(n), max(max(n), extrapolate_to or 0), 100)
    ax.plot(grid, fit.predict(grid), color="C3",
            label=f"L = {fit.E:.3g} + {fit.A:.3g} / N^{fit.alpha:.3g}")
    if extrapolate_to:
        value, (low, high) = fit.extrapolate(extrapolate_to)
        ax.errorbar([extrapolate_to], [value], yerr=[[value - low], [high - value]], fmt="s", color="C3",
                    capsize=4, label=f"extrapolated: {value:.3g} [{low:.3g}, {high:.3g}]")
    ax.set(xscale="log", yscale="log", xlabel=x_label, ylabel="validation loss")
    for formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):  # losses span < a decade
        formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: str) -> epath.Path:
    for ax in fig.axes:  # log axes label their minor ticks too, which overlap
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with path.open("wb") as f:  # local or gs://
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path
