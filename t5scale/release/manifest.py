"""A release's `manifest.json`: the sha256 and size of every other file of the bundle, written last.

A folder without a manifest is not a release (it is being written, or its writer died); a file whose bytes do not
match their entry is corrupted, and its name is in the error.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import posixpath

MANIFEST = "manifest.json"
FORMAT = "t5scale-release-v1"
_CHUNK = 1 << 20


class ChecksumError(ValueError):
    """A bundled file is missing, truncated or changed; the message names it."""


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def make_manifest(staging: pathlib.Path, names: list[str], **fields) -> dict:
    """The manifest of the files `names` (paths relative to `staging`); `fields` are recorded beside them."""
    return {"format": FORMAT, **fields,
            "files": {name: {"sha256": sha256_of(staging / name), "bytes": (staging / name).stat().st_size}
                      for name in sorted(names)}}


def parse_manifest(text: str, where: str) -> dict:
    """The manifest's JSON, checked to be one this t5scale reads and to name only files inside the release."""
    try:
        manifest = json.loads(text)
    except ValueError as error:
        raise ChecksumError(f"{where}/{MANIFEST} is not valid JSON ({error}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ValueError(f"{where}/{MANIFEST} has format {found!r}; this t5scale reads {FORMAT}.")
    for name in manifest.get("files", {}):
        # Names become local paths on load: nothing may point outside the release folder.
        if not safe_name(name):
            raise ValueError(f"{where}/{MANIFEST} lists {name!r}, which is not a path inside the release.")
    return manifest


def safe_name(name: str) -> bool:
    parts = name.split("/")
    return (bool(name) and not name.startswith("/") and "\\" not in name
            and all(part not in ("", ".", "..") for part in parts) and posixpath.normpath(name) == name)


def verify_file(path: pathlib.Path, name: str, entry: dict, where: str) -> None:
    """Raise ChecksumError naming `where/name` unless the local copy `path` has the manifest's size and sha256."""
    if not path.exists():
        raise ChecksumError(f"{where}/{name} is listed in {MANIFEST} but missing.")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise ChecksumError(f"{where}/{name} has {size} bytes, {MANIFEST} says {entry['bytes']}: the file is "
                            "truncated or changed. Re-release it (t5scale release --overwrite).")
    if sha256_of(path) != entry["sha256"]:
        raise ChecksumError(f"{where}/{name} does not match its sha256 in {MANIFEST}: the file is corrupted or "
                            "changed. Re-release it (t5scale release --overwrite).")
