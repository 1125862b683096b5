"""Local stand-ins for remote folders, for the writers that reach storage only through TensorFlow's file layer:
TensorBoard's event writer (tf.summary), the input pipeline's position (tf.train.Checkpoint) and seqio's JSON
logger. tf.io.gfile's GCS client has its endpoints compiled in (no emulator, no proxy) and is a second set of
credentials and retries; so for a gs:// destination these write into a local folder, and its files are copied to
the destination with etils.epath (gcsfs), the layer t5scale's own files use. A local destination is used as it is.

    staged = StagedDir("gs://bucket/run/eval", download=("*-metrics.jsonl",))  # files the writer reads back
    write_files_into(staged.local)   # a local folder (the destination itself when that is local)
    staged.upload()                  # the files new or changed since the last upload
    staged.close()                   # upload what is left, then remove the local folder

A GCS object is replaced whole, and becomes visible only once its upload completes: a reader never sees half a file,
only an older version of it.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import tempfile
import weakref
from typing import Sequence

from etils import epath

CHUNK_BYTES = 8 << 20


def is_remote(path: str | os.PathLike) -> bool:
    return "://" in os.fspath(path)


def copy_file(source: epath.Path, destination: epath.Path) -> None:
    """One file, streamed, between any two storages epath reaches. Failures are OSErrors (gcsfs raises its own)."""
    try:
        with source.open("rb") as reader, destination.open("wb") as writer:
            shutil.copyfileobj(reader, writer, CHUNK_BYTES)
    except OSError:
        raise
    except Exception as error:  # noqa: BLE001 -- gcsfs's HttpError and friends: the copy failed, say where
        raise OSError(f"copying {source} to {destination} failed ({type(error).__name__}: {error})") from error


class StagedDir:
    """A local folder whose files are copied to `destination` on `upload()`; see the module doc.

    `download`: glob patterns of files already at the destination that the writer reads and rewrites (seqio's
    metrics log); they are copied down first, so that rewriting them keeps their earlier content.
    """

    def __init__(self, destination: str | os.PathLike, download: Sequence[str] = ()):
        self.destination = epath.Path(destination)
        self.remote = is_remote(destination)
        self._uploaded: dict[str, tuple[int, int]] = {}  # relative name -> (size, mtime_ns) when last uploaded
        if not self.remote:
            self.local = os.fspath(destination)
            return
        self.local = tempfile.mkdtemp(prefix="t5scale-staged-")
        self._remove = weakref.finalize(self, shutil.rmtree, self.local, ignore_errors=True)  # also on errors
        for pattern in download:
            for remote_file in self.destination.glob(pattern):
                local_file = epath.Path(self.local) / remote_file.name
                copy_file(remote_file, local_file)
                self._uploaded[remote_file.name] = _signature(local_file)

    def upload(self) -> list[str]:
        """Copy the files written or changed since the last upload; returns their names (relative)."""
        if not self.remote:
            return []
        copied = []
        for local_file in sorted(p for p in pathlib.Path(self.local).rglob("*") if p.is_file()):
            name = local_file.relative_to(self.local).as_posix()
            signature = _signature(local_file)
            if self._uploaded.get(name) == signature:
                continue
            (self.destination / name).parent.mkdir(parents=True, exist_ok=True)
            copy_file(epath.Path(local_file), self.destination / name)
            self._uploaded[name] = signature
            copied.append(name)
        return copied

    def close(self, upload: bool = True) -> None:
        """Upload (unless told not to), then remove the local folder. An upload that fails keeps it, and says so."""
        if not self.remote:
            return
        if upload:
            try:
                self.upload()
            except OSError as error:
                self._remove.detach()
                logging.error("Copying %s to %s failed (%s); the files are kept in %s.", self.local,
                              self.destination, error, self.local)
                raise
        self._remove()


def _signature(path: os.PathLike) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns
