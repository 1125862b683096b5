"""Accuracy against bytes: one curve per model size, the frontier over all of them (Train Large, Then Compress's
figure). Takes the rows of `t5scale.compress.study` and a path; computes nothing but the drawing."""

from __future__ import annotations

import io

from etils import epath

from t5scale.compress.study import frontier


def plot_accuracy_vs_bytes(rows: list[dict], path: str, *, quality_label: str = "score"):
    """Draws the figure into `path` (PNG) and returns it (a matplotlib Figure)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    labels = []
    for model in dict.fromkeys(r["model"] for r in rows):
        points = [r for r in rows if r["model"] == model]
        # The line joins the size's own best points (its frontier); the settings it beats are markers only, so the
        # line does not zigzag through every setting in order of bytes.
        own = frontier(points)
        line, = axes.plot([r["params_bytes"] for r in own], [r["score"] for r in own], "o-", label=model)
        axes.plot([r["params_bytes"] for r in points], [r["score"] for r in points], "o", color=line.get_color(),
                  alpha=0.6)
        # Only the points the line joins are named, settings that tie exactly under one label: naming every
        # setting piled labels onto each other where settings take nearly the same bytes and score (the table
        # names them all).
        names = {}
        for r in own:
            names.setdefault((r["params_bytes"], r["score"]), []).append(r["setting"])
        for xy, settings in names.items():
            labels.append(axes.annotate(", ".join(settings), xy, fontsize=6, xytext=(3, 3),
                                        textcoords="offset points", color=line.get_color(), in_layout=False))
    best = frontier(rows)
    axes.step([r["params_bytes"] for r in best], [r["score"] for r in best], "k--", where="post", linewidth=1,
              label="frontier (all sizes)")
    axes.set_xscale("log")
    axes.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _human_bytes(x)))
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("bytes of the stored parameters (log scale)")
    axes.set_ylabel(quality_label)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    _dodge(figure, labels)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=150)
    epath.Path(path).write_bytes(buffer.getvalue())
    return figure


def _dodge(figure, labels) -> None:
    """Moves each label down, a line at a time, until it overlaps no label placed before it (highest first)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw_without_rendering()  # the constrained layout places the axes: labels' boxes are final after it
    placed = []
    for label in sorted(labels, key=lambda a: -a.xy[1]):
        box = label.get_window_extent(renderer)
        while any(box.overlaps(other) for other in placed):
            x, y = label.xyann
            label.xyann = (x, y - 7)  # points; the labels are 6-point text
            box = label.get_window_extent(renderer)
        placed.append(box)


def _human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n:g} B"
