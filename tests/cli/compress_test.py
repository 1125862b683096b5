"""`t5scale compress` end to end: two checkpoints (model sizes) x settings on `embedded_sst2`, through the real
evaluation, into folders, a table, results files and one figure; and one clear line for each bad input."""

import csv
import json
import os

import pytest

from t5scale.cli import common
from t5scale.cli.main import main
from t5scale.weights.load import PARAMS
from tests.compress.models import save_checkpoint
from tests.testing import random_model, tiny_config

TASK = "embedded_sst2"
EMBEDDED_VOCAB = 2176  # the embedded vocabulary's 2100 ids, padded to a multiple of 128
ARGS = ["--task", TASK, "--num_examples", "8", "--batch_size", "8"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    small = save_checkpoint(root / "small", random_model(tiny_config(vocab_size=EMBEDDED_VOCAB, name="t-small")), 4)
    large = save_checkpoint(root / "large", random_model(tiny_config(vocab_size=EMBEDDED_VOCAB, d_ff=72,
                                                                     name="t-large"), seed=1), 6)
    return small, large


def test_compress_writes_folders_bytes_metrics_a_table_and_a_figure(checkpoints, tmp_path, capsys):
    """Called as the demo calls it (keyword options; --split left to its default)."""
    small, large = checkpoints
    out = tmp_path / "compress"
    returned = common.run_command("compress", checkpoints=[str(small), str(large.parent)], task=TASK,
                                  output_dir=str(out), settings=["bits=4,sparsity=0.5"], num_examples=8, batch_size=8)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["setting"], r["params_bytes"]) for r in returned] == [(r["setting"], int(r["params_bytes"]))
                                                                      for r in rows]
    assert [(r["model"], r["setting"]) for r in rows] == [
        (m, s) for m in ("t-small", "t-large") for s in ("float32", "int4-sparse0.5")]
    for r in rows:
        folder = out / r["model"] / r["setting"]
        assert int(r["params_bytes"]) == os.path.getsize(folder / PARAMS)  # counted from the file written
        baseline = os.path.getsize(out / r["model"] / "float32" / PARAMS)
        assert float(r["bytes_ratio"]) == pytest.approx(int(r["params_bytes"]) / baseline)
        metrics = json.loads((folder / "eval" / "metrics.json").read_text())
        assert json.loads(r["metrics"]) == metrics["tasks"] and set(metrics["tasks"][TASK]) == {"accuracy"}
        assert float(r["score"]) == pytest.approx(metrics["tasks"][TASK]["accuracy"])
    assert [r["step"] for r in map(lambda r: json.loads((out / r["model"] / r["setting"] / "eval" /
                                                         "metrics.json").read_text()), rows)] == [4, 4, 6, 6]
    assert float(rows[1]["bytes_ratio"]) < 0.3
    assert (out / "accuracy_vs_bytes.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "results.json").read_text())[0]["setting"] == "float32"
    printed = capsys.readouterr().out
    assert "t-large  int4-sparse0.5" in printed and "of float32" in printed


def test_a_compressed_checkpoint_is_not_compressed_twice(tmp_path, capsys):
    """Refused in one line, from the command line or from code, before anything is loaded or written."""
    folder = tmp_path / "t-small" / "int8"
    folder.mkdir(parents=True)
    (folder / "compression.json").write_text(json.dumps({"format": "t5scale-compressed-v1", "source": "runs/x"}))
    with pytest.raises(ValueError, match="is already a compressed checkpoint; compress its source, runs/x, instead"):
        common.run_command("compress", checkpoints=[str(folder)], task=TASK, output_dir=str(tmp_path / "b"),
                           settings=["bits=8"])
    code = main(["compress", "--checkpoint", str(folder), "--output_dir", str(tmp_path / "b"), *ARGS])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "is already a compressed checkpoint" in err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("settings, culprit", [
    (["bits=8,groups=attention+ffn"], "Unknown parameter group 'ffn'; choose among attention, mlp, embedding."),
    (["bits=3"], "Unsupported bit width 3; choose among 8, 6, 4, 2 or float"),
    (["bits=8,sparsity=1.0"], "Sparsity 1.0 is outside [0, 1)"),
    (["bits=8", "bits=4,granularity=group,group_size=7"], "Setting int4-group7: group_size 7 does not divide the "
                                                          "contracted width 24 of"),
])
def test_bad_settings_are_one_line(checkpoints, tmp_path, capsys, settings, culprit):
    code = main(["compress", "--checkpoint", str(checkpoints[0]), "--output_dir", str(tmp_path), *ARGS,
                 "--settings", *settings])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and culprit in err and not list(tmp_path.iterdir())


def test_gin_flags_are_refused(checkpoints, capsys):
    code = main(["compress", "--checkpoint", str(checkpoints[0]), "--output_dir", "x", *ARGS, "--gin.EL=2"])
    assert code == 2 and "compress takes no gin flags" in capsys.readouterr().err
