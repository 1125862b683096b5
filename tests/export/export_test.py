"""`t5scale.export.export` from a release: signature.json records the release's manifest hash, the model's config
and seqio's vocabulary ids, and manifest.json holds the sha256 of every file written."""

from __future__ import annotations

import hashlib
import json
import pathlib

from t5scale.export import export
from tests.export.conftest import GREEDY


def test_export_of_a_release_names_its_manifest_and_config(model_dir, loaded, tmp_path):
    import t5scale

    release = tmp_path / "release"
    t5scale.release(model_dir, str(release))
    manifest = export(str(release), str(tmp_path / "t5"), GREEDY, formats=("jax",))
    signature = json.loads((tmp_path / "t5" / "signature.json").read_text())
    assert signature["source"] == {
        "path": str(release), "kind": "release",
        "release_manifest_sha256": hashlib.sha256((release / "manifest.json").read_bytes()).hexdigest()}
    assert signature["model"] == loaded.config.to_dict()
    vocab = loaded.vocabulary
    assert signature["vocabulary"] == {"file": "sentencepiece.model", "pad_id": 0, "eos_id": 1,
                                       "unk_id": vocab.unk_id, "pieces": vocab.vocab_size, "extra_ids": vocab.extra_ids}
    assert (tmp_path / "t5" / "sentencepiece.model").read_bytes() == vocab.sp_model
    for name, entry in manifest["files"].items():
        data = pathlib.Path(tmp_path / "t5" / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert json.loads((tmp_path / "t5" / "manifest.json").read_text()) == manifest
