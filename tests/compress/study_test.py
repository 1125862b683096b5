"""The study's pieces that need no evaluation: the score, the frontier (ties defined), the table and the figure.
The study end to end runs through the CLI in tests/cli/compress_test.py."""

import pytest

from t5scale.compress.plot import plot_accuracy_vs_bytes
from t5scale.compress.study import StudyConfig, format_table, frontier, score


def row(model, setting, params_bytes, value):
    return {"model": model, "setting": setting, "params_bytes": params_bytes, "bytes_ratio": 1.0, "score": value}


ROWS = [row("big", "float32", 400, 90.0), row("big", "int8", 100, 89.0), row("big", "int4", 50, 80.0),
        row("small", "float32", 100, 85.0), row("small", "int8", 25, 84.0), row("small", "int4", 50, 80.0),
        row("small", "int2", 13, 50.0)]


def test_the_frontier_keeps_what_nothing_cheaper_or_equal_beats_and_keeps_exact_ties():
    on = [(r["model"], r["setting"]) for r in frontier(ROWS)]
    # small/float32 (100, 85) loses to big/int8 (100, 89): as costly and better; both int4 rows (50, 80) lose to
    # small/int8 (25, 84): cheaper and better. Alone, the two int4 rows tie exactly, and both stay.
    assert on == [("small", "int2"), ("small", "int8"), ("big", "int8"), ("big", "float32")]
    assert [(r["model"], r["setting"]) for r in frontier([ROWS[2], ROWS[5]])] == [("big", "int4"), ("small", "int4")]


def test_the_score_averages_within_each_task_then_across_tasks():
    assert score({"a": {"accuracy": 80.0, "f1": 90.0}, "b": {"accuracy": 70.0}}) == pytest.approx(77.5)


def test_the_table_marks_the_frontier_and_the_figure_is_a_png(tmp_path):
    table = format_table(ROWS).splitlines()
    assert table[0].split() == ["model", "setting", "params", "bytes", "of", "float32", "score", "frontier"]
    assert table[2].split()[-1] == "*" and table[5].split()[-1] != "*"  # big/float32 on it, small/float32 not
    plot_accuracy_vs_bytes(ROWS, str(tmp_path / "figure.png"))
    assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_study_needs_a_checkpoint():
    with pytest.raises(ValueError, match="at least one checkpoint"):
        StudyConfig(checkpoints=(), task="t", output_dir="o", settings=())
