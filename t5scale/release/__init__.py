"""Releases: a checkpoint published as a self-contained, checksummed folder (local or gs://), and `load()`, which
opens a release (or a checkpoint, or a Hugging Face T5 folder) for notebooks.

    release("runs/ft", "gs://bucket/releases/small-ft")          # t5scale release runs/ft --to gs://...
    model = load("gs://bucket/releases/small-ft")                # t5scale.load
    model.generate(["sst2 sentence: a fine film"])

Modules: bundle (the files, staged locally), card (README.md), manifest (checksums), publish (manifest-last
upload), load + loaded (reading it back).
"""

from __future__ import annotations

import pathlib
import tempfile

from etils import epath

from t5scale import storage
from t5scale.release.load import load
from t5scale.release.loaded import LoadedModel
from t5scale.release.manifest import ChecksumError
from t5scale.release.publish import ReleaseExistsError


def release(checkpoint: str, destination: str, *, dtype: str = "float32", vocabulary: str | None = None,
            metrics: str | None = None, overwrite: bool = False) -> dict:
    """Publish `checkpoint` (a MODEL_DIR, its checkpoint_<step>, or a compressed checkpoint) at `destination`.
    Returns the manifest. Every check that can fail (storage, destination, vocabulary) runs before anything is
    written there."""
    from t5scale import __version__
    from t5scale.release import bundle, publish
    from t5scale.release.manifest import make_manifest

    storage.check_reachable([storage.Remote("CHECKPOINT", checkpoint, "dir"),
                             storage.Remote("--to", destination, "output")])
    publish.check_destination(epath.Path(destination), overwrite)
    with tempfile.TemporaryDirectory(prefix="t5scale-release-") as staging:
        names = bundle.build(checkpoint, pathlib.Path(staging), dtype=dtype, vocabulary=vocabulary,
                             metrics=metrics, destination=destination)
        manifest = make_manifest(pathlib.Path(staging), names, t5scale_version=__version__,
                                 source=str(checkpoint))
        publish.publish(pathlib.Path(staging), destination, manifest, overwrite=overwrite)
    return manifest


__all__ = ["ChecksumError", "LoadedModel", "ReleaseExistsError", "load", "release"]
