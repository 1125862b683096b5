"""`t5scale shapes`: operators, params and FLOPs of named shapes, as a table or JSON."""

import json

import pytest

from t5scale.cli.main import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_shapes_json_gives_operators_params_and_flops(capsys):
    code, out, _ = run(capsys, "shapes", "small", "small-el16", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["small", "small-el16"]
    assert (rows[0]["EL"], rows[1]["EL"]) == (6, 16)
    assert rows[0]["params_m"] == 60.5 and rows[1]["params_m"] == 92.0  # the release table's counts
    assert rows[0]["train_gflops_per_example"] == pytest.approx(sum(rows[0]["gflops_split"].values()), abs=0.2)


def test_shapes_table_has_one_row_per_shape(capsys):
    code, out, _ = run(capsys, "shapes", "base", "large-nh8-nl32")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 4  # header, rule, two rows
    assert lines[2].split()[:7] == ["base", "12", "12", "768", "64", "12", "3072"]
    assert lines[3].split()[7] == "771.3"


def test_gin_files_and_operator_macros_pick_a_shape(capsys):
    code, out, _ = run(capsys, "shapes", "--gin_file=models/small.gin", "--gin.EL=16", "--json")
    assert code == 0 and json.loads(out)[0]["name"] == "small-el16"
    code, out, _ = run(capsys, "shapes", "--gin_file", "gin/models/t5_1_1_base.gin", "--gin.NL=4", "--json")
    row = json.loads(out)[0]
    assert (row["name"], row["EL"], row["DL"], row["activation"]) == ("v1_1-base-nl4", 4, 4, "gated-gelu")
    # Later files and bindings win.
    code, out, _ = run(capsys, "shapes", "--gin_file=models/small.gin", "--gin_file=models/base.gin",
                       "--gin.MODEL_SHAPE='large-nh8'", "--json")
    assert json.loads(out)[0]["name"] == "large-nh8"


def test_no_shape_at_all_is_one_line(capsys):
    code, out, err = run(capsys, "shapes")
    assert code == 2 and out == "" and err == "t5scale: error: name at least one shape (e.g. `t5scale shapes " \
                                               "small base-nl36`) or pass --gin_file.\n"
