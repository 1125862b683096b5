"""Releases on local disk: what a bundle holds, dtypes and layouts, compressed sources, overwriting, and what load
reads and refuses."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open

import t5scale
from t5scale.compress.checkpoint import save_compressed
from t5scale.compress.compressed import compress_params
from t5scale.compress.settings import Setting
from t5scale.model import decoding
from t5scale.model.layout import flat_params, load_flat_params
from t5scale.release import ChecksumError, ReleaseExistsError
from t5scale.release.manifest import MANIFEST, sha256_of
from t5scale.weights.compressed_format import decompress_params
from tests.release.runs import STEP, TEXTS, make_model_dir
from tests.testing import FIXTURES

BUNDLE = ["README.md", "config.json", "metrics.json", "params.safetensors", "sentencepiece.model",
          "training/config.gin", "training/config.json", "training/metrics.jsonl", "training/train_end.json"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("run") / "run"
    return model_dir, make_model_dir(str(model_dir))


@pytest.fixture(scope="module")
def released(run, tmp_path_factory):
    destination = tmp_path_factory.mktemp("rel") / "rel"
    manifest = t5scale.release(str(run[0]), str(destination))
    return destination, manifest


def test_a_bundle_holds_every_file_once_with_its_checksum(run, released):
    destination, manifest = released
    assert sorted(manifest["files"]) == BUNDLE
    on_disk = sorted(str(p.relative_to(destination)) for p in destination.rglob("*") if p.is_file())
    assert on_disk == sorted([*BUNDLE, MANIFEST])
    for name, entry in manifest["files"].items():
        assert entry == {"sha256": sha256_of(destination / name), "bytes": (destination / name).stat().st_size}
    config = json.loads((destination / "config.json").read_text())
    assert config["model"] == run[1].cfg.to_dict() and config["step"] == STEP
    assert config["vocabulary"] == {"file": "sentencepiece.model", "extra_ids": 100}
    from t5scale.data.vocab import embedded_vocabulary

    assert (destination / "sentencepiece.model").read_bytes() == \
        open(embedded_vocabulary().sentencepiece_model_file, "rb").read()
    assert (destination / "training/config.json").read_bytes() == (run[0] / "config.json").read_bytes()
    card = (destination / "README.md").read_text()
    for fact in ("| 2 | 3 | 24 | 5 | 4 | 36 | 2128 | relu | tied |", "Parameters: 75,688", "ended by `train_steps`",
                 "embedded_span_corruption", "| embedded_sst2 | accuracy | 61.5 |", "time_budget_s 600",
                 f"t5scale.load({str(destination)!r})"):
        assert fact in card, fact


def test_params_are_flat_and_the_same_whether_the_run_scanned_its_layers(run, tmp_path):
    _, model = run
    unrolled = t5scale.abstract_model(model.cfg.replace(scan_layers=False))
    load_flat_params(unrolled, flat_params(model))
    from tests.compress.models import save_checkpoint

    save_checkpoint(tmp_path / "unrolled", unrolled, STEP)
    t5scale.release(str(tmp_path / "unrolled"), str(tmp_path / "rel"), vocabulary=_vocab_file())
    with safe_open(str(tmp_path / "rel/params.safetensors"), framework="numpy") as f:
        stored = {name: f.get_tensor(name) for name in f.keys()}
    want = flat_params(model)
    assert sorted(stored) == sorted(want) and "encoder/layers/1/mlp/wo/kernel" in stored
    for name in want:
        np.testing.assert_array_equal(stored[name], want[name])


def _vocab_file() -> str:
    from t5scale.data.vocab import embedded_vocabulary

    return embedded_vocabulary().sentencepiece_model_file


def test_a_bfloat16_release_stores_bfloat16_and_loads_as_float32(run, tmp_path):
    model_dir, model = run
    t5scale.release(str(model_dir), str(tmp_path / "rel"), dtype="bfloat16")
    with safe_open(str(tmp_path / "rel/params.safetensors"), framework="flax") as f:
        assert {str(f.get_tensor(name).dtype) for name in f.keys()} == {"bfloat16"}
    loaded = flat_params(t5scale.load(tmp_path / "rel").nnx_model)
    for name, value in flat_params(model).items():
        assert loaded[name].dtype == np.float32
        np.testing.assert_array_equal(loaded[name], value.astype(ml_dtypes.bfloat16).astype(np.float32))
    assert "stored as bfloat16" in (tmp_path / "rel/README.md").read_text()


def test_a_compressed_checkpoint_is_released_compressed(run, tmp_path):
    model_dir, model = run
    setting = Setting(bits=8)
    tensors, layout = compress_params(flat_params(model), setting)
    save_compressed(str(tmp_path / "int8"), model.cfg, tensors, layout, setting, f"{model_dir}/checkpoint_{STEP}",
                    STEP)
    manifest = t5scale.release(str(tmp_path / "int8"), str(tmp_path / "rel"))
    assert "compression.json" not in manifest["files"]  # that file marks a compressed checkpoint, not a release
    assert (tmp_path / "rel/params.safetensors").read_bytes() == (tmp_path / "int8/params.safetensors").read_bytes()
    assert json.loads((tmp_path / "rel/config.json").read_text())["compression"]["setting"]["bits"] == 8
    assert "training/config.json" in manifest["files"]  # the records of the run it was compressed from
    assert "Compressed from" in (tmp_path / "rel/README.md").read_text()
    loaded = t5scale.load(tmp_path / "rel")
    want = decompress_params(tensors, layout)
    for name, value in flat_params(loaded.nnx_model).items():
        np.testing.assert_array_equal(value, want[name])
    assert t5scale.load(tmp_path / "int8").kind == "compressed"


def test_an_existing_release_is_replaced_only_with_overwrite(run, tmp_path):
    model_dir, _ = run
    t5scale.release(str(model_dir), str(tmp_path / "rel"))
    before = (tmp_path / "rel" / MANIFEST).read_bytes()
    with pytest.raises(ReleaseExistsError, match="already holds a release; pass --overwrite"):
        t5scale.release(str(model_dir), str(tmp_path / "rel"))
    assert (tmp_path / "rel" / MANIFEST).read_bytes() == before
    other = tmp_path / "other"
    make_model_dir(str(other), seed=5, eval_metrics=False)
    manifest = t5scale.release(str(other), str(tmp_path / "rel"), overwrite=True)
    assert "metrics.json" not in manifest["files"] and not (tmp_path / "rel/metrics.json").exists()
    assert t5scale.load(tmp_path / "rel").generate(TEXTS[:1], max_length=6) == \
        t5scale.load(other).generate(TEXTS[:1], max_length=6)


def test_a_folder_with_other_files_is_not_released_into(run, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files that are not part of a release \(notes.txt\)"):
        t5scale.release(str(run[0]), str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_flipped_byte_in_a_local_release_is_named(released, tmp_path):
    import shutil

    copy = tmp_path / "rel"
    shutil.copytree(released[0], copy)
    data = bytearray((copy / "training/metrics.jsonl").read_bytes())
    data[3] ^= 0x20
    (copy / "training/metrics.jsonl").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="rel/training/metrics.jsonl does not match its sha256"):
        t5scale.load(copy)
    (copy / "sentencepiece.model").unlink()
    with pytest.raises(ChecksumError, match="rel/sentencepiece.model is listed in manifest.json but missing"):
        t5scale.load(copy)


def test_a_manifest_cannot_point_outside_its_release(released, tmp_path):
    import shutil

    copy = tmp_path / "rel"
    shutil.copytree(released[0], copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["files"]["../outside"] = {"sha256": "0" * 64, "bytes": 1}
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="lists '../outside', which is not a path inside the release"):
        t5scale.load(copy)


def _copy_with_manifest(released, tmp_path, edit_manifest=None, edit_config=None):
    """A copy of the release whose manifest and config.json were edited; config.json's entry is re-hashed so only
    the edit under test can be what load refuses."""
    import shutil

    copy = tmp_path / "rel"
    shutil.copytree(released[0], copy)
    if edit_config:
        config = json.loads((copy / "config.json").read_text())
        edit_config(config)
        (copy / "config.json").write_text(json.dumps(config))
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["files"]["config.json"] = {"sha256": sha256_of(copy / "config.json"),
                                        "bytes": (copy / "config.json").stat().st_size}
    if edit_manifest:
        edit_manifest(manifest["files"])
    (copy / MANIFEST).write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("name", ["params.safetensors", "config.json", "sentencepiece.model", "README.md"])
def test_every_file_load_reads_must_be_listed_with_its_hash(released, tmp_path, name):
    copy = _copy_with_manifest(released, tmp_path, edit_manifest=lambda files: files.pop(name))
    if name == "params.safetensors":  # unlisted, it could hold any weights: flip one byte past the header
        data = bytearray((copy / name).read_bytes())
        data[-5] ^= 0x01
        (copy / name).write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=f"rel/{name} is not listed in manifest.json"):
        t5scale.load(copy)


@pytest.mark.parametrize("vocab_file", ["/etc/hostname", "../outside.model", "training/../../outside.model"])
def test_the_vocabulary_a_config_names_must_be_inside_the_release(released, tmp_path, vocab_file):
    (tmp_path / "outside.model").write_bytes((released[0] / "sentencepiece.model").read_bytes())

    def point_outside(config):
        config["vocabulary"]["file"] = vocab_file

    copy = _copy_with_manifest(released, tmp_path, edit_config=point_outside)
    with pytest.raises(ChecksumError, match=f"names the vocabulary '{vocab_file}', which is not a path inside"):
        t5scale.load(copy)


def test_the_vocabulary_a_config_names_must_be_listed(released, tmp_path):
    import shutil

    def point_to_unlisted(config):
        config["vocabulary"]["file"] = "training/other.model"

    copy = _copy_with_manifest(released, tmp_path, edit_config=point_to_unlisted)
    shutil.copy(copy / "sentencepiece.model", copy / "training/other.model")
    with pytest.raises(ChecksumError, match="rel/training/other.model is not listed in manifest.json"):
        t5scale.load(copy)


def test_load_reads_model_dirs_checkpoints_and_hugging_face_folders(run, released):
    model_dir, model = run
    for path in (model_dir, model_dir / f"checkpoint_{STEP}"):
        loaded = t5scale.load(path)
        assert loaded.kind == "checkpoint" and loaded.config == model.cfg
        np.testing.assert_array_equal(flat_params(loaded.nnx_model)["decoder/layers/2/mlp/wi/kernel"],
                                      flat_params(model)["decoder/layers/2/mlp/wi/kernel"])
    hf = t5scale.load(FIXTURES / "hf" / "v1_0")
    assert hf.kind == "huggingface" and hf.config.vocab_size == 96 and hf.vocabulary is None
    with pytest.raises(ValueError, match="carries no vocabulary; load it with t5scale.load"):
        hf.generate(["x"])
    with pytest.raises(FileNotFoundError, match="none of what t5scale.load reads"):
        t5scale.load(model_dir / "eval")


def test_the_loaded_model_batches_and_matches_the_decoding_functions(released):
    model = t5scale.load(released[0])
    assert model.params_count == 75_688 and model.card.startswith("# test-tiny-embedded")
    texts = TEXTS
    assert model.tokenize(texts[:1]) == [[*model.vocabulary.encode(texts[0]), decoding.EOS_ID]]  # as seqio feeds it
    assert model.generate(texts, max_length=8, batch_size=2) == model.generate(texts, max_length=8)
    scores = model.score(texts, texts[::-1], batch_size=2)
    rows = model.tokenize(texts), model.tokenize(texts[::-1])
    inputs, targets = (np.array([r + [0] * (16 - len(r)) for r in [*side, []]]) for side in rows)  # [4, 16]
    np.testing.assert_allclose(scores, decoding.score(model.nnx_model, inputs, targets)[:3], rtol=1e-5)
    states = model.encode(texts[:2])
    assert [s.shape for s in states] == [(len(r), 24) for r in rows[0][:2]]
    np.testing.assert_allclose(states[1], model.encode(texts[1:2])[0], rtol=1e-5, atol=1e-6)  # padding: no effect
    with pytest.raises(TypeError, match="list of strings"):
        model.generate("one string")


def test_gin_text_in_a_bundle_is_never_parsed(released, tmp_path):
    import shutil

    copy = tmp_path / "rel"
    shutil.copytree(released[0], copy)
    (copy / "training/config.gin").write_text("import module_that_does_not_exist\nbroken = (\n")
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["files"]["training/config.gin"] = {"sha256": sha256_of(copy / "training/config.gin"),
                                                "bytes": (copy / "training/config.gin").stat().st_size}
    (copy / MANIFEST).write_text(json.dumps(manifest))
    assert t5scale.load(copy).kind == "release"
