"""Figures are written as real PNG files, locally or wherever epath writes, with every panel and point."""

import numpy as np

from t5scale.analysis import plots
from t5scale.analysis.fit import fit_scaling_law

PNG = b"\x89PNG\r\n\x1a\n"


def rows():
    return [{"name": f"r{i}", "shape": f"s{i}", "params": p, "train_flops_per_example": 10 * p,
             "neg_log_perplexity": q} for i, (p, q) in enumerate([(1e5, -5.0), (2e5, -4.5), (4e5, -4.7)])]


def test_pareto_fit_and_curves_figures_are_pngs(tmp_path):
    pareto = plots.pareto_png(rows(), ["params", "flops"], "neg_log_perplexity", str(tmp_path / "a" / "p.png"))
    n = np.geomspace(1e5, 1e7, 6)
    fit = fit_scaling_law(n, 2 + 50 / n**0.3, bootstrap=10)
    fitted = plots.fit_png(n, 2 + 50 / n**0.3, fit, str(tmp_path / "f.png"), extrapolate_to=1e8)
    curves = plots.curves_png({"r0": {"step": [1, 2], "loss": [5, 4], "train_seconds": [1, 2], "flops": [1e9, 2e9]}},
                              str(tmp_path / "c.png"))
    for path in (pareto, fitted, curves):
        data = path.read_bytes()
        assert data[:8] == PNG and len(data) > 10_000  # axes, points and text, not an empty canvas
