"""t5scale.train.checkpoints: finding the checkpoint a path means (the run tests cover saving and restoring)."""

import pytest

from t5scale.train.checkpoints import STATE, resolve_checkpoint


def make_checkpoints(model_dir, *steps):
    for step in steps:
        (model_dir / f"checkpoint_{step}" / STATE).mkdir(parents=True)


def test_a_model_dir_means_its_newest_checkpoint_by_step_number(tmp_path):
    make_checkpoints(tmp_path, 2, 10, 9)
    (tmp_path / "checkpoint_11").mkdir()  # not finished: no state in it
    assert resolve_checkpoint(str(tmp_path)) == tmp_path / "checkpoint_10"
    assert resolve_checkpoint(str(tmp_path / "checkpoint_2")) == tmp_path / "checkpoint_2"


def test_a_relative_path_becomes_absolute(tmp_path, monkeypatch):
    make_checkpoints(tmp_path / "run", 4)
    monkeypatch.chdir(tmp_path)
    resolved = resolve_checkpoint("run")
    assert resolved.is_absolute() and resolved == tmp_path / "run" / "checkpoint_4"


def test_a_path_without_checkpoints_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"INITIAL_CHECKPOINT_PATH .*empty is neither a t5scale checkpoint"):
        resolve_checkpoint(str(tmp_path / "empty"), "INITIAL_CHECKPOINT_PATH")
