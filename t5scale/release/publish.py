"""Publishing a staged release (or export: `t5scale.export`) to its folder (local or gs://) so that readers see all
of it or none of it.

Readers go by the manifest: it is written last, after every other file is in place with the size it should have.
So a publisher killed at any point (or a storage server that goes away) leaves a folder without a manifest, which
`load` refuses, and a rerun overwrites what is there and completes it. An existing release is replaced only when
asked (`overwrite`), and then its manifest goes first, so nobody loads a mix of two releases.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Callable

from etils import epath

from t5scale.release.bundle import is_bundle_file
from t5scale.release.manifest import MANIFEST
from t5scale.storage import StorageError

_CHUNK = 16 << 20


class ReleaseExistsError(ValueError):
    """The destination holds a complete release and --overwrite was not given."""


def existing_files(destination: epath.Path) -> list[str]:
    """Names (relative, '/'-separated) of the files under `destination`, at any depth."""
    if not destination.exists():
        return []
    names = []

    def visit(folder: epath.Path, prefix: str) -> None:  # iterdir, which gs:// paths answer like local ones
        for path in folder.iterdir():
            if path.is_dir():
                visit(path, f"{prefix}{path.name}/")
            else:
                names.append(prefix + path.name)

    visit(destination, "")
    return sorted(names)


def check_destination(destination: epath.Path, overwrite: bool, *, what: str = "release",
                      is_own: Callable[[str], bool] = is_bundle_file,
                      exists_error: type[ValueError] = ReleaseExistsError) -> list[str]:
    """The files already there, after refusing a destination that must not be written to: one holding a complete
    `what` (unless `overwrite`), or files that are not its own (`is_own`)."""
    names = existing_files(destination)
    if MANIFEST in names and not overwrite:
        raise exists_error(f"{destination} already holds {_a(what)}; pass --overwrite to replace it.")
    foreign = [name for name in names if not is_own(name)]
    if foreign:
        raise ValueError(f"{destination} holds files that are not part of {_a(what)} ({', '.join(foreign[:5])}"
                         f"{'...' if len(foreign) > 5 else ''}); {what} to an empty or new folder.")
    return names


def _a(what: str) -> str:
    return f"{'an' if what[0] in 'aeiou' else 'a'} {what}"


def _upload(local: pathlib.Path, remote: epath.Path) -> None:
    # One object per file: GCS makes an object visible only once its upload completes.
    with local.open("rb") as src, remote.open("wb") as dst:
        shutil.copyfileobj(src, dst, _CHUNK)


def publish(staging: pathlib.Path, destination: str, manifest: dict, *, overwrite: bool = False,
            **destination_rules) -> epath.Path:
    """Copy the staged files named in `manifest` to `destination`, then write the manifest; `destination_rules`
    as in `check_destination` (default: a release's)."""
    destination = epath.Path(destination)
    previous = check_destination(destination, overwrite, **destination_rules)
    if MANIFEST in previous:
        (destination / MANIFEST).unlink()  # readers stop seeing the old release before anything changes
    destination.mkdir(parents=True, exist_ok=True)
    names = sorted(manifest["files"], key=lambda n: -manifest["files"][n]["bytes"])  # the big upload first
    for name in names:
        if "/" in name:
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
        try:
            _upload(staging / name, destination / name)
        except OSError as error:  # the storage service went away, a disk filled up, ...
            raise StorageError(f"{destination / name}: the upload failed ({type(error).__name__}: "
                               f"{str(error).splitlines()[0][:200] if str(error) else ''}); nothing is published "
                               f"({MANIFEST} is written last). Rerun the same command to complete it.") from None
    for name in set(previous) - set(names) - {MANIFEST}:
        (destination / name).unlink(missing_ok=True)  # left by an older release of another checkpoint
    for name in names:
        size = (destination / name).stat().length
        if size != manifest["files"][name]["bytes"]:
            raise OSError(f"{destination / name} has {size} bytes after the upload, expected "
                          f"{manifest['files'][name]['bytes']}; rerun the same command.")
    (destination / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return destination
