"""gs:// paths checked up front against a local stand-in for the storage service's JSON API (and a closed port):
found, missing, private with and without credentials, unreachable; local paths pass unchecked."""

import http.server
import json
import socket
import threading
import time
import urllib.parse

import pytest

from t5scale import storage

OBJECTS = {"pub": {"vocab/sp.model", "run/checkpoint_4/state/x"}, "private": {"secret.model"}}


class FakeGcs(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        url = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in url.path.split("/")]  # '', storage, v1, b, BUCKET, o, NAME
        bucket = parts[4]
        if bucket not in OBJECTS:
            return self._reply(404, {})
        if bucket == "private":
            return self._reply(401, {})
        if len(parts) == 5:
            return self._reply(200, {"name": bucket})
        if len(parts) == 6:  # a listing
            prefix = urllib.parse.parse_qs(url.query)["prefix"][0]
            return self._reply(200, {"items": [{"name": n} for n in OBJECTS[bucket] if n.startswith(prefix)]})
        return self._reply(200 if parts[6] in OBJECTS[bucket] else 404, {"name": parts[6]})

    def _reply(self, status, body):
        self.send_response(status)
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def fake_gcs():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeGcs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    for name in ("GOOGLE_AUTH_TOKEN_FOR_TESTING", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    monkeypatch.setattr(storage, "METADATA_HOST", "metadata.invalid")  # .invalid never resolves (RFC 2606)


def check(*remotes):
    storage.check_reachable([storage.Remote(*r) for r in remotes])


def test_existing_objects_dirs_and_buckets_pass(fake_gcs, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs)
    check(("vocab", "gs://pub/vocab/sp.model", "file"), ("ckpt", "gs://pub/run", "dir"),
          ("MODEL_DIR", "gs://pub/new-run", "output"), ("local", "/nowhere/at/all", "file"))


@pytest.mark.parametrize("remote, message", [
    (("T5's vocabulary", "gs://pub/vocab/nope.model", "file", "set T5_VOCAB_PATH to a local copy"),
     "T5's vocabulary gs://pub/vocab/nope.model: no such object (or bucket). Set T5_VOCAB_PATH to a local copy."),
    (("INITIAL_CHECKPOINT_PATH", "gs://pub/other-run", "dir"),
     "INITIAL_CHECKPOINT_PATH gs://pub/other-run: nothing there (no object under it)."),
    (("MODEL_DIR", "gs://no-such-bucket/run", "output"), "MODEL_DIR gs://no-such-bucket/run: the bucket does not "
                                                         "exist."),
    (("vocab", "gs://private/secret.model", "file"), "vocab gs://private/secret.model: not publicly readable and "
                                                     "no Google credentials found"),
])
def test_unusable_paths_are_one_line_naming_path_reason_and_remedy(fake_gcs, monkeypatch, no_credentials, remote,
                                                                    message):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs)
    with pytest.raises(storage.StorageError) as error:
        check(remote)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_private_objects_pass_when_credentials_exist(fake_gcs, monkeypatch, no_credentials, tmp_path):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs)
    (tmp_path / "application_default_credentials.json").write_text("{}")  # where gcloud auth puts them
    check(("vocab", "gs://private/secret.model", "file"))


def test_an_unreachable_service_fails_within_seconds(monkeypatch):
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"127.0.0.1:{port}")
    tic = time.monotonic()
    with pytest.raises(storage.StorageError, match=r"^MODEL_DIR gs://b/run: cannot reach 127\.0\.0\.1 \(Connection "
                                                   r"refused: no network here\?\)\.$"):
        check(("MODEL_DIR", "gs://b/run", "output"), ("vocab", "gs://b/v.model", "file"))
    assert time.monotonic() - tic < 5


def test_local_paths_need_no_service(monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:1")
    check(("MODEL_DIR", "/tmp/run", "output"), ("vocab", "relative/sp.model", "file"))
