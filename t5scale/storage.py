"""Cloud Storage paths a run will touch, checked up front: one line naming the path, the reason and what to do,
within seconds, instead of TensorFlow's or orbax's clients retrying for minutes and ending in a traceback.

    check_reachable([Remote("T5's vocabulary", "gs://t5-data/vocabs/.../sentencepiece.model", "file",
                            "copy it and set T5_VOCAB_PATH=/local/sentencepiece.model")])

Checks, per gs:// path: the storage endpoint answers (DNS + TCP), then an anonymous metadata request for the
object or bucket: found, missing (a required input, or a bucket that does not exist), or private — which is fine
only when credentials can be found where TensorFlow's and tensorstore's GCS clients look for them. Local paths
are left alone. `STORAGE_EMULATOR_HOST` (a local emulator) is honoured.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import socket
import urllib.error
import urllib.parse
import urllib.request

GCS_ENDPOINT = "https://storage.googleapis.com"
TIMEOUT_S = 5.0
METADATA_HOST = "metadata.google.internal"  # Google Cloud VMs' metadata server, which hands out tokens


class StorageError(OSError):
    """A gs:// path that cannot be used; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Remote:
    what: str  # the user's name for it: "MODEL_DIR", "T5's vocabulary", ...
    path: str
    kind: str  # "file": must exist; "dir": must hold objects; "output": its bucket must exist
    hint: str = ""  # what to do instead, e.g. "set T5_VOCAB_PATH to a local copy"

    def __post_init__(self):
        if self.kind not in ("file", "dir", "output"):
            raise ValueError(f"Remote.kind must be file, dir or output, not {self.kind!r}.")


def is_remote(path: str | None) -> bool:
    return bool(path) and str(path).startswith("gs://")


def endpoint() -> str:
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if host:
        return host if "://" in host else f"http://{host}"
    return GCS_ENDPOINT


def check_reachable(remotes: list[Remote], timeout_s: float = TIMEOUT_S) -> None:
    """Raise StorageError for the first gs:// path that cannot be used; local paths pass unchecked."""
    remotes = [r for r in remotes if is_remote(r.path)]
    if not remotes:
        return
    base = endpoint()
    url = urllib.parse.urlsplit(base)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout_s).close()
    except OSError as error:
        r = remotes[0]
        raise StorageError(_line(r, f"cannot reach {url.hostname} ({_reason(error)}: no network here?)")) from None
    for r in remotes:
        _check_one(r, base, timeout_s)


def _check_one(r: Remote, base: str, timeout_s: float) -> None:
    bucket, _, name = r.path.removeprefix("gs://").partition("/")
    if not bucket:
        raise StorageError(_line(r, "no bucket in the path"))
    name = name.rstrip("/")
    quote = lambda s: urllib.parse.quote(s, safe="")  # noqa: E731
    if r.kind == "file":
        url = f"{base}/storage/v1/b/{quote(bucket)}/o/{quote(name)}?fields=name"
    elif r.kind == "dir":
        url = f"{base}/storage/v1/b/{quote(bucket)}/o?prefix={quote(name + '/')}&maxResults=1&fields=items/name"
    else:
        url = f"{base}/storage/v1/b/{quote(bucket)}?fields=name"
    status, body = _get(url, timeout_s, r)
    if status == 200:
        if r.kind == "dir" and not body.get("items"):
            raise StorageError(_line(r, "nothing there (no object under it)"))
        return
    if status == 404:
        missing = "the bucket does not exist" if r.kind == "output" else "no such object (or bucket)"
        raise StorageError(_line(r, missing))
    if status in (401, 403):
        if not credentials_available():
            raise StorageError(_line(r, "not publicly readable and no Google credentials found (run `gcloud auth "
                                        "application-default login` or set GOOGLE_APPLICATION_CREDENTIALS)"))
        return  # private, with credentials: the real clients take it from here
    raise StorageError(_line(r, f"the storage service answered HTTP {status}"))


def _get(url: str, timeout_s: float, r: Remote) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, {}
    except (OSError, ValueError) as error:
        raise StorageError(_line(r, f"the storage service did not answer ({_reason(error)})")) from None


def credentials_available() -> bool:
    """Whether TensorFlow's / tensorstore's GCS clients can find a token: the places they look, in their order."""
    env = os.environ
    if env.get("GOOGLE_AUTH_TOKEN_FOR_TESTING") or env.get("GOOGLE_APPLICATION_CREDENTIALS"):
        return True
    config = pathlib.Path(env.get("CLOUDSDK_CONFIG") or pathlib.Path.home() / ".config" / "gcloud")
    if (config / "application_default_credentials.json").exists():
        return True
    try:  # on Google Cloud VMs, TPU VMs included
        socket.getaddrinfo(METADATA_HOST, 80)
        return True
    except OSError:
        return False


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError) and error.reason:
        error = error.reason if isinstance(error.reason, BaseException) else error
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def _line(r: Remote, reason: str) -> str:
    return f"{r.what} {r.path}: {reason}." + (f" {r.hint[0].upper()}{r.hint[1:]}." if r.hint else "")
