"""`t5scale release`: what it prints, and one line (exit 2, no traceback, nothing written) for every storage or
input problem: missing bucket, no credentials, unreachable endpoint, an existing release, an unreachable T5
vocabulary."""

from __future__ import annotations

import glob
import http.server
import json
import os
import socket
import tempfile
import threading

import pytest

from t5scale import storage
from t5scale.cli.main import main
from tests.release.runs import make_model_dir, run_config
from tests.testing import tiny_config


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "run"
    make_model_dir(str(path))
    return str(path)


def staging_folders() -> list[str]:
    return sorted(glob.glob(os.path.join(tempfile.gettempdir(), "t5scale-release-*")))


def fails_in_one_line(capsys, argv: list[str], *expected: str) -> str:
    before = staging_folders()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("t5scale: error: "), err
    for text in expected:
        assert text in lines[0], lines[0]
    assert staging_folders() == before  # nothing staged is left behind
    return lines[0]


def test_release_to_gcs_prints_where_and_how_to_load(gcs, model_dir, capsys):
    bucket = gcs.create_bucket()
    assert main(["release", model_dir, "--to", f"gs://{bucket}/tiny"]) == 0
    out = capsys.readouterr().out
    assert f"t5scale release: gs://{bucket}/tiny: 10 files" in out and "t5scale.load('gs://" in out
    assert "tiny/manifest.json" in gcs.objects(bucket)


def test_a_missing_bucket_is_one_line_and_writes_nothing(gcs, model_dir, capsys):
    fails_in_one_line(capsys, ["release", model_dir, "--to", "gs://no-such-bucket/tiny"],
                      "--to gs://no-such-bucket/tiny: the bucket does not exist.")
    assert "no-such-bucket" not in [b["name"] for b in _buckets(gcs)]


def _buckets(gcs) -> list[dict]:
    import urllib.request

    with urllib.request.urlopen(f"{gcs.url}/storage/v1/b") as response:
        return json.loads(response.read()).get("items", [])


def test_an_unreachable_endpoint_is_one_line(model_dir, capsys, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here once the socket is closed
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{closed}")
    fails_in_one_line(capsys, ["release", model_dir, "--to", "gs://bucket/tiny"],
                      "--to gs://bucket/tiny: cannot reach 127.0.0.1")


class _PrivateGcs(http.server.BaseHTTPRequestHandler):
    """What GCS answers without a token for a private bucket."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(401)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def test_missing_credentials_are_one_line(model_dir, capsys, monkeypatch, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PrivateGcs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_address[1]}")
        for name in ("GOOGLE_AUTH_TOKEN_FOR_TESTING", "GOOGLE_APPLICATION_CREDENTIALS"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
        monkeypatch.setattr(storage, "METADATA_HOST", "metadata.invalid")  # never resolves (RFC 2606)
        fails_in_one_line(capsys, ["release", model_dir, "--to", "gs://private/tiny"],
                          "--to gs://private/tiny: not publicly readable and no Google credentials found",
                          "gcloud auth application-default login")
        import t5scale

        with pytest.raises(storage.StorageError, match="t5scale.load gs://private/tiny: not publicly readable"):
            t5scale.load("gs://private/tiny")
    finally:
        server.shutdown()


def test_an_existing_release_needs_overwrite(gcs, model_dir, capsys):
    destination = f"gs://{gcs.create_bucket()}/tiny"
    assert main(["release", model_dir, "--to", destination]) == 0
    manifest = _manifest(destination)
    fails_in_one_line(capsys, ["release", model_dir, "--to", destination],
                      f"{destination} already holds a release; pass --overwrite to replace it.")
    assert _manifest(destination) == manifest
    assert main(["release", model_dir, "--to", destination, "--overwrite", "--dtype", "bfloat16"]) == 0
    assert _manifest(destination)["files"]["params.safetensors"] != manifest["files"]["params.safetensors"]


def _manifest(destination: str) -> dict:
    from etils import epath

    return json.loads(epath.Path(destination, "manifest.json").read_text())


def test_a_run_on_t5s_vocabulary_says_it_needs_it_reachable(gcs, tmp_path, capsys):
    """gs://t5-data is not on the emulator (as it is not reachable offline): one line, and --vocabulary works."""
    make_model_dir(str(tmp_path / "run"))
    config = json.loads((tmp_path / "run/config.json").read_text())
    config["data"]["mixture_or_task_name"] = "c4_v220_span_corruption"
    (tmp_path / "run/config.json").write_text(json.dumps(config))
    bucket = gcs.create_bucket()
    fails_in_one_line(capsys, ["release", str(tmp_path / "run"), "--to", f"gs://{bucket}/tiny"],
                      "the vocabulary gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model: no such object",
                      "pass --vocabulary /local/copy")
    assert gcs.objects(bucket) == []
    from t5scale.data.vocab import embedded_vocabulary

    local_copy = embedded_vocabulary().sentencepiece_model_file
    assert main(["release", str(tmp_path / "run"), "--to", f"gs://{bucket}/tiny", "--vocabulary", local_copy]) == 0


def test_bad_inputs_are_one_line(tmp_path, capsys):
    fails_in_one_line(capsys, ["release", str(tmp_path / "nothing"), "--to", str(tmp_path / "rel")],
                      "CHECKPOINT", "is neither a t5scale checkpoint")
    fails_in_one_line(capsys, ["release", str(tmp_path), "--to", str(tmp_path / "rel"), "--gin.X=1"],
                      "release takes no gin flags")
    assert not (tmp_path / "rel").exists()


def test_run_config_matches_what_the_trainer_writes():
    """The helper's config.json has the sections release reads, under the trainer's names."""
    from t5scale.train.trainer import TrainConfig

    config = run_config("/m", tiny_config())
    assert {"model", "data", "train"} <= set(config)
    assert set(config["train"]) <= {f for f in TrainConfig.__dataclass_fields__}
