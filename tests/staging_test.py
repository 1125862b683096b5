"""Local stand-ins for gs:// folders (t5scale.staging), on the emulator: new and changed files go up, unchanged ones
do not, files the writer rewrites come down first, the local folder goes away at close, and a local destination
is used as it is."""

import pathlib

from etils import epath

from t5scale.staging import StagedDir


def test_uploads_new_and_changed_files_and_removes_the_local_folder(gcs):
    bucket = gcs.create_bucket()
    staged = StagedDir(f"gs://{bucket}/run/eval")
    local = pathlib.Path(staged.local)
    (local / "a.jsonl").write_text("1\n")
    (local / "sub").mkdir()
    (local / "sub" / "b.txt").write_text("b")
    assert staged.upload() == ["a.jsonl", "sub/b.txt"]
    assert staged.upload() == []  # nothing changed
    (local / "a.jsonl").write_text("1\n2\n")
    assert staged.upload() == ["a.jsonl"]
    assert epath.Path(f"gs://{bucket}/run/eval/a.jsonl").read_text() == "1\n2\n"
    assert gcs.objects(bucket) == ["run/eval/a.jsonl", "run/eval/sub/b.txt"]
    (local / "c.txt").write_text("c")
    staged.close()
    assert epath.Path(f"gs://{bucket}/run/eval/c.txt").read_text() == "c"
    assert not local.exists()


def test_downloads_the_files_a_writer_rewrites(gcs):
    bucket = gcs.create_bucket()
    epath.Path(f"gs://{bucket}/eval/task-metrics.jsonl").write_text('{"step": 1}\n')
    epath.Path(f"gs://{bucket}/eval/task-000001.jsonl").write_text("predictions\n")
    staged = StagedDir(f"gs://{bucket}/eval", download=("*-metrics.jsonl",))
    local = pathlib.Path(staged.local)
    assert sorted(p.name for p in local.iterdir()) == ["task-metrics.jsonl"]
    assert staged.upload() == []  # as downloaded: not copied back
    with (local / "task-metrics.jsonl").open("a") as f:
        f.write('{"step": 2}\n')
    staged.close()
    assert epath.Path(f"gs://{bucket}/eval/task-metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'


def test_a_local_destination_is_used_as_it_is(tmp_path):
    staged = StagedDir(str(tmp_path / "eval"))
    assert staged.local == str(tmp_path / "eval") and not staged.remote
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "x").write_text("x")
    assert staged.upload() == []
    staged.close()
    assert (tmp_path / "eval" / "x").read_text() == "x"
