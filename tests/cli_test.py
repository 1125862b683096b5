"""The `t5scale` command: shapes table/JSON, gin in t5x style, one-line errors."""

import json
import subprocess
import sys

import pytest

from t5scale import cli
from tests.testing import REPO


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_shapes_json_gives_operators_params_and_flops(capsys):
    code, out, _ = run(capsys, "shapes", "small", "small-el16", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["small", "small-el16"]
    assert (rows[0]["EL"], rows[1]["EL"]) == (6, 16)
    assert rows[0]["params_m"] == 60.5 and rows[1]["params_m"] == 92.0
    assert rows[0]["train_gflops_per_example"] == pytest.approx(sum(rows[0]["gflops_split"].values()), abs=0.2)


def test_shapes_table_has_one_row_per_shape(capsys):
    code, out, _ = run(capsys, "shapes", "base", "large-nh8-nl32")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 4  # header, rule, two rows
    assert lines[2].split()[:7] == ["base", "12", "12", "768", "64", "12", "3072"]
    assert lines[3].split()[7] == "771.3"


def test_gin_files_and_operator_macros_pick_a_shape(capsys):
    code, out, _ = run(capsys, "shapes", "--gin_file=gin/models/small.gin", "--gin.EL=16", "--json")
    assert code == 0 and json.loads(out)[0]["name"] == "small-el16"
    code, out, _ = run(capsys, "shapes", "--gin_file", "gin/models/t5_1_1_base.gin", "--gin.NL=4", "--json")
    row = json.loads(out)[0]
    assert (row["name"], row["EL"], row["DL"], row["activation"]) == ("v1_1-base-nl4", 4, 4, "gated-gelu")
    # Later files and bindings win.
    code, out, _ = run(capsys, "shapes", "--gin_file=gin/models/small.gin", "--gin_file=gin/models/base.gin",
                       "--gin.MODEL_SHAPE='large-nh8'", "--json")
    assert json.loads(out)[0]["name"] == "large-nh8"


@pytest.mark.parametrize("argv, culprit", [
    (["shapes", "smal-el16"], "Unknown shape 'smal-el16'"),
    (["shapes", "--gin_file=gin/models/small.gin", "--gin.ELL=16"], "no gin file defines the macro 'ELL'"),
    (["shapes", "--gin_file=gin/models/small.gin", "--gin.EL=abc"], "--gin.EL=abc: the value is not a Python"),
    (["shapes", "--gin_file=gin/models/small.gin", "--gin.model_config.foo=1"], "have a parameter named 'foo'"),
    (["shapes", "--gin_file=gin/models/nope.gin"], "gin file 'gin/models/nope.gin' not found"),
    (["shapes", "--gin_file=gin/models/small.gin", "--gin.MODEL_SHAPE='base-sh'"], "'sh' (shared heads)"),
    (["shapes"], "name at least one shape"),
])
def test_bad_input_is_one_line_naming_the_culprit(capsys, argv, culprit):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("t5scale: error: ") and culprit in err


def test_module_entry_point_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "t5scale", "shapes", "tiny", "--json"], cwd=tmp_path,
                            capture_output=True, text=True, check=True)
    assert json.loads(result.stdout)[0]["params_m"] == 15.6


def test_gin_files_cover_every_base_size():
    names = {path.stem for path in (REPO / "gin" / "models").glob("*.gin")}
    assert {"tiny", "mini", "small", "base", "large", "xl", "xxl"} <= names
    assert {f"t5_1_1_{size}" for size in ("small", "base", "large", "xl", "xxl")} <= names


def test_gin_includes_work_with_folders_of_the_same_names_in_the_working_directory(capsys, tmp_path, monkeypatch):
    """`make demo` leaves runs/ in the repository; gin used to crash on include 'runs/...' from there."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m t5scale` or pytest put the working directory first
    code, out, err = run(capsys, "shapes", "--gin_file=models/small.gin", "--gin.EL=16", "--json")
    assert code == 0, err
    assert json.loads(out)[0]["name"] == "small-el16"
