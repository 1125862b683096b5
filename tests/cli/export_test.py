"""`t5scale export`: what it prints and writes, and one line (exit 2, no traceback) for each bad input."""

from __future__ import annotations

import json
import os

import pytest

from t5scale.cli.main import main
from tests.release.runs import make_model_dir

SMALL = ["--batch", "2", "--input_length", "16", "--output_length", "4", "--format", "jax", "--platforms", "cpu"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "run"
    make_model_dir(str(path))
    return str(path)


def fails_in_one_line(capsys, argv: list[str], expected: str) -> None:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("t5scale: error: ") and expected in lines[0], lines


def test_export_prints_what_it_wrote_and_refuses_to_replace_it_unasked(model_dir, tmp_path, capsys):
    folder = str(tmp_path / "t5")
    assert main(["export", model_dir, "--to", folder, *SMALL]) == 0
    out = capsys.readouterr().out
    files = json.loads((tmp_path / "t5" / "manifest.json").read_text())["files"]
    assert sorted(files) == ["decode.jax", "params.safetensors", "runner.py", "sentencepiece.model", "signature.json"]
    total = sum(f["bytes"] for f in files.values())
    assert out == (f"t5scale export: {folder}: greedy decoding of 2 x 16 -> 4 tokens; 6 files, {total:,} bytes "
                   "(manifest.json last)\n")
    signature = json.loads((tmp_path / "t5" / "signature.json").read_text())
    assert signature["shapes"] == {"batch": 2, "input_length": 16, "output_length": 4}
    assert signature["jax"]["platforms"] == ["cpu"]

    fails_in_one_line(capsys, ["export", model_dir, "--to", folder, *SMALL],
                      f"{folder} already holds an export; pass --overwrite to replace it.")
    assert main(["export", model_dir, "--to", folder, *SMALL, "--beam_size", "2", "--overwrite"]) == 0
    assert json.loads((tmp_path / "t5" / "signature.json").read_text())["decoding"] == {
        "method": "beam", "beam_size": 2, "alpha": 0.6}


@pytest.mark.parametrize("flags, expected", [
    (["--batch", "0"], "export: batch must be a positive integer, got 0."),
    (["--output_length", "-3"], "export: output_length must be a positive integer, got -3."),
    (["--platforms", "cpu,gpu"], "export: platforms must be some of cpu, cuda, rocm, tpu; gpu is not."),
])
def test_bad_settings_are_one_line(model_dir, tmp_path, capsys, flags, expected):
    fails_in_one_line(capsys, ["export", model_dir, "--to", str(tmp_path / "t5"), *SMALL, *flags], expected)
    assert not (tmp_path / "t5").exists()


def test_a_folder_with_other_files_is_refused_and_kept(model_dir, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    fails_in_one_line(capsys, ["export", model_dir, "--to", str(tmp_path), *SMALL, "--overwrite"],
                      f"{tmp_path} holds files that are not part of an export (notes.txt); export to an empty or new "
                      "folder.")
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    fails_in_one_line(capsys, ["export", str(tmp_path / "nowhere"), "--to", str(tmp_path / "t5"), *SMALL],
                      str(tmp_path / "nowhere"))
