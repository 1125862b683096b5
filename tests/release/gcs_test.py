"""Releases on a GCS emulator (tests/gcs.py): published, loaded back in a fresh process, killed mid-upload,
corrupted byte by byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from etils import epath

import t5scale
from t5scale.release import ChecksumError, publish
from t5scale.release.manifest import MANIFEST
from t5scale.storage import StorageError
from tests.release.runs import TEXTS, make_model_dir
from tests.testing import REPO

LOAD_AND_GENERATE = """
import json, sys, t5scale
model = t5scale.load(sys.argv[1])
print(json.dumps({"generated": model.generate(sys.argv[2:], max_length=8),
                  "scores": model.score(sys.argv[2:], sys.argv[2:]), "kind": model.kind}))
"""


def fresh_process_load(path: str) -> dict:
    done = subprocess.run([sys.executable, "-c", LOAD_AND_GENERATE, path, *TEXTS], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A local MODEL_DIR and what its checkpoint generates, loaded directly (no release involved)."""
    model_dir = str(tmp_path_factory.mktemp("run") / "run")
    make_model_dir(model_dir)
    model = t5scale.load(model_dir)
    return model_dir, {"generated": model.generate(TEXTS, max_length=8), "scores": model.score(TEXTS, TEXTS)}


def test_a_release_on_gcs_loads_in_a_fresh_process_with_the_source_generations(gcs, source):
    model_dir, expected = source
    destination = f"gs://{gcs.create_bucket()}/releases/tiny"
    tic = time.perf_counter()
    manifest = t5scale.release(model_dir, destination)
    released_s = time.perf_counter() - tic
    bucket = destination.removeprefix("gs://").split("/")[0]
    assert gcs.objects(bucket) == sorted(f"releases/tiny/{n}" for n in [*manifest["files"], MANIFEST])
    tic = time.perf_counter()
    got = fresh_process_load(destination)
    loaded_s = time.perf_counter() - tic
    assert got["kind"] == "release"
    assert got["generated"] == expected["generated"]
    assert any(text.strip() for text in got["generated"])  # real text came back, not empty decodes
    np.testing.assert_allclose(got["scores"], expected["scores"], rtol=1e-6)
    print(f"release to the emulator {released_s:.2f} s; load + generate in a fresh process {loaded_s:.2f} s")


def test_a_model_dir_on_gcs_releases_to_gcs(gcs, source):
    """The checkpoint itself on gs:// (orbax through tensorstore, records through gcsfs), scanned or not: the
    bundle's params are the same flat arrays."""
    bucket = gcs.create_bucket()
    model = make_model_dir(f"gs://{bucket}/run", scan_layers=False)
    t5scale.release(f"gs://{bucket}/run", f"gs://{bucket}/rel")
    loaded = t5scale.load(f"gs://{bucket}/rel")
    from t5scale.model.layout import flat_params

    want, got = flat_params(model), flat_params(loaded.nnx_model)
    assert sorted(want) == sorted(got)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    assert "training/metrics.jsonl" in json.loads(epath.Path(f"gs://{bucket}/rel/{MANIFEST}").read_text())["files"]


@pytest.fixture
def failing_upload(monkeypatch):
    """Make the k-th upload of a release (0-based) fail, as a killed process would; or run `before` first and let
    the upload meet what it did (e.g. a stopped server)."""
    def arm(k: int, before=None):
        real, calls = publish._upload, []

        def upload(local, remote):
            if len(calls) == k:
                if before is None:
                    raise ConnectionError(f"injected: upload {k} of {remote.name} died")
                before()
            calls.append(remote.name)
            real(local, remote)

        monkeypatch.setattr(publish, "_upload", upload)
        return lambda: monkeypatch.setattr(publish, "_upload", real)

    return arm


def test_a_release_killed_at_any_upload_is_invisible_and_a_rerun_completes_it(gcs, source, failing_upload):
    model_dir, expected = source
    bucket = gcs.create_bucket()
    destination = f"gs://{bucket}/rel"
    files = 9  # the bundle of tests.release.runs: see the first test's object listing
    for k in range(files):
        disarm = failing_upload(k)
        with pytest.raises(StorageError, match="injected.*nothing is published"):
            t5scale.release(model_dir, destination)
        disarm()
        assert len(gcs.objects(bucket)) == k and f"rel/{MANIFEST}" not in gcs.objects(bucket)
        with pytest.raises(StorageError if k == 0 else FileNotFoundError,
                           match="nothing there" if k == 0 else "incomplete release"):
            t5scale.load(destination)
    t5scale.release(model_dir, destination)  # no --overwrite needed: nothing was published
    assert len(gcs.objects(bucket, "rel/")) == files + 1
    assert t5scale.load(destination).generate(TEXTS, max_length=8) == expected["generated"]


def test_an_overwrite_killed_midway_leaves_neither_release_loadable(gcs, source, failing_upload, tmp_path):
    model_dir, _ = source
    destination = f"gs://{gcs.create_bucket()}/rel"
    t5scale.release(model_dir, destination)
    other = tmp_path / "other"
    make_model_dir(str(other), seed=3)
    failing_upload(1)
    with pytest.raises(StorageError, match="injected"):
        t5scale.release(str(other), destination, overwrite=True)
    with pytest.raises(FileNotFoundError, match="incomplete release"):  # not the old one, not a mix
        t5scale.load(destination)


KILL_AFTER_TWO_UPLOADS = """
import os, signal, sys
from t5scale.release import publish
real, done = publish._upload, []
def upload(local, remote):
    if len(done) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    real(local, remote)
    done.append(remote.name)
publish._upload = upload
from t5scale.cli.main import main
sys.exit(main(["release", sys.argv[1], "--to", sys.argv[2], "--vocabulary", sys.argv[3]]))
"""


def test_kill_9_mid_upload_then_rerun(gcs, source):
    """A real SIGKILL of `t5scale release` after two objects are up: invisible, and the rerun completes it."""
    model_dir, expected = source
    bucket = gcs.create_bucket()
    destination = f"gs://{bucket}/rel"
    from t5scale.data.vocab import embedded_vocabulary

    vocabulary = embedded_vocabulary().sentencepiece_model_file  # given: the subprocess need not register tasks
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_TWO_UPLOADS, model_dir, destination, vocabulary],
                            cwd=REPO,
                            capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert len(gcs.objects(bucket)) == 2 and f"rel/{MANIFEST}" not in gcs.objects(bucket)
    with pytest.raises(FileNotFoundError, match="incomplete release"):
        t5scale.load(destination)
    from t5scale.cli.main import main

    assert main(["release", model_dir, "--to", destination]) == 0
    assert t5scale.load(destination).generate(TEXTS, max_length=8) == expected["generated"]


class _NoWaitAsyncio:
    """asyncio, with gcsfs's retry back-off (about 20 s of sleeps against a dead server) cut to nothing."""

    def __getattr__(self, name):
        import asyncio

        return (lambda seconds: asyncio.sleep(0)) if name == "sleep" else getattr(asyncio, name)


def test_an_emulator_that_stops_mid_upload_leaves_no_release(gcs, source, failing_upload, monkeypatch):
    import gcsfs.retry

    monkeypatch.setattr(gcsfs.retry, "asyncio", _NoWaitAsyncio())
    model_dir, _ = source
    bucket = gcs.create_bucket()
    destination = f"gs://{bucket}/rel"
    failing_upload(3, before=gcs.stop)
    with pytest.raises(StorageError, match="rel/.*: the upload failed .*Rerun the same command"):
        t5scale.release(model_dir, destination)
    gcs.start()  # the filesystem backend kept what was uploaded before the stop
    assert len(gcs.objects(bucket)) == 3 and f"rel/{MANIFEST}" not in gcs.objects(bucket)
    with pytest.raises(FileNotFoundError, match="incomplete release"):
        t5scale.load(destination)


def test_a_flipped_byte_in_any_bundled_file_is_named_on_load(gcs, source):
    model_dir, _ = source
    destination = f"gs://{gcs.create_bucket()}/rel"
    manifest = t5scale.release(model_dir, destination)
    assert len(manifest["files"]) == 9
    for name, entry in manifest["files"].items():
        path = epath.Path(f"{destination}/{name}")
        original = path.read_bytes()
        damaged = bytearray(original)
        damaged[len(damaged) // 2] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(ChecksumError, match=f"{destination}/{name} does not match its sha256"):
            t5scale.load(destination)
        path.write_bytes(original[:-1])
        with pytest.raises(ChecksumError, match=f"{destination}/{name} has {entry['bytes'] - 1} bytes"):
            t5scale.load(destination)
        path.write_bytes(original)
    t5scale.load(destination)  # all restored: loads again
