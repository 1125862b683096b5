"""The figure names only the points on each size's own curve (its frontier), exact ties under one label, and no
two labels overlap."""

import csv

from matplotlib.backends.backend_agg import FigureCanvasAgg

from t5scale.compress.plot import plot_accuracy_vs_bytes
from tests.testing import REPO


def row(model, setting, params_bytes, value):
    return {"model": model, "setting": setting, "params_bytes": params_bytes, "score": value}


ROWS = [row("big", "float32", 400, 90.0), row("big", "int8", 100, 89.0), row("big", "int4", 50, 80.0),
        row("big", "int8-sparse0.5", 60, 70.0),
        row("small", "float32", 100, 85.0), row("small", "int8", 25, 84.0), row("small", "int4", 50, 80.0),
        row("small", "int2", 13, 50.0), row("small", "int4-sparse0.75", 13, 50.0),
        row("small", "int4-sparse0.5", 30, 60.0)]


def test_only_each_sizes_own_frontier_points_are_labelled(tmp_path):
    figure = plot_accuracy_vs_bytes(ROWS, str(tmp_path / "figure.png"))
    labels = sorted((text.get_text(), tuple(text.xy)) for text in figure.axes[0].texts)
    # By hand: big/int8-sparse0.5 (60, 70) loses to big/int4 (50, 80), cheaper and better; small/int4 (50, 80) and
    # small/int4-sparse0.5 (30, 60) lose to small/int8 (25, 84). small/int2 and small/int4-sparse0.75 tie exactly
    # and share one label. Rows of the other size never hide a point: small/float32 (100, 85) is labelled though
    # big/int8 (100, 89) beats it.
    assert labels == sorted([("float32", (400, 90.0)), ("int8", (100, 89.0)), ("int4", (50, 80.0)),
                             ("float32", (100, 85.0)), ("int8", (25, 84.0)), ("int2, int4-sparse0.75", (13, 50.0))])
    assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_two_labels_overlap_on_the_rows_a_real_study_wrote(tmp_path):
    # The rows `make compress-study` wrote (512 training examples): without moving labels apart, int4-sparse0.75 of
    # the pruned 1.20M ran into int4-sparse0.5 of the dense one, and three labels piled up near 1.3-1.8 MB.
    with open(REPO / "docs" / "figures" / "compress-study-train512.csv") as f:
        rows = [{**r, "params_bytes": int(r["params_bytes"]), "score": float(r["score"])} for r in csv.DictReader(f)]
    figure = plot_accuracy_vs_bytes(rows, str(tmp_path / "figure.png"))
    renderer = FigureCanvasAgg(figure).get_renderer()
    boxes = [text.get_window_extent(renderer) for text in figure.axes[0].texts]
    assert len(boxes) == 14  # by hand from the file: 5 + 5 dense frontier points, 2 + 2 pruned
    assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]
