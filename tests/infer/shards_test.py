"""t5scale.infer.shards: shard ranges cover every row once, a shard is written whole under its final name only,
leftovers of a killed write are removed, and an output folder refuses other settings."""

import json

import pytest

from t5scale.infer import shards


def test_plan_covers_every_row_once_by_rows_per_shard_or_by_count():
    assert shards.plan(10, 4, None) == [range(0, 4), range(4, 8), range(8, 10)]
    assert shards.plan(10, None, 3) == [range(0, 4), range(4, 8), range(8, 10)]
    assert shards.plan(2, None, 5) == [range(0, 1), range(1, 2)]  # never an empty shard
    with pytest.raises(ValueError, match="--shards must be positive"):
        shards.plan(10, None, 0)


def test_a_shard_is_written_under_its_final_name_whole_and_leftovers_are_removed(tmp_path):
    rows = [{"index": 0, "input": "ä \"quoted\"", "prediction": "x"}]
    shards.write(str(tmp_path), 1, 3, rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions-00001-of-00003.jsonl"]
    assert (tmp_path / "predictions-00001-of-00003.jsonl").read_text(encoding="utf-8") == \
        '{"index": 0, "input": "ä \\"quoted\\"", "prediction": "x"}\n'
    assert shards.finished(str(tmp_path), 3) == [False, True, False]
    (tmp_path / ".tmp-predictions-00002-of-00003.jsonl").write_text('{"index": 2')  # a write killed midway
    shards.remove_partial(str(tmp_path))
    assert shards.finished(str(tmp_path), 3) == [False, True, False]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions-00001-of-00003.jsonl"]


def test_an_output_folder_refuses_other_settings_and_names_them(tmp_path):
    settings = {"checkpoint_path": "a", "task_feature_lengths": {"inputs": 8, "targets": 4}, "rows": 10}
    shards.check_settings(str(tmp_path), settings)
    assert json.loads((tmp_path / "infer.json").read_text()) == settings
    shards.check_settings(str(tmp_path), dict(settings))  # the same again: fine
    with pytest.raises(ValueError, match=r"other settings \(rows, task_feature_lengths differ from its infer.json"):
        shards.check_settings(str(tmp_path), {**settings, "rows": 11, "task_feature_lengths": {"inputs": 8}})
