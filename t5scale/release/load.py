"""`t5scale.load(path)`: a LoadedModel from a release, a MODEL_DIR or checkpoint_<step>, a compressed checkpoint,
or a Hugging Face T5 folder; local or gs://.

A release is read only through its manifest: every file is checked against its sha256 before anything uses it
(from gs://, after copying it to a local cache). Nothing from a bundle is executed or unpickled: configs are JSON,
params are safetensors, and the bundled gin text is never parsed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
from etils import epath

from t5scale import storage
from t5scale.config import ModelConfig
from t5scale.release import bundle
from t5scale.release.loaded import LoadedModel
from t5scale.release.manifest import MANIFEST, ChecksumError, parse_manifest, safe_name, verify_file

_CHUNK = 16 << 20


def load(path: str | os.PathLike, *, vocabulary: str | None = None) -> LoadedModel:
    """The model at `path`, ready for `.generate`, `.score` and `.encode`; `vocabulary` (a sentencepiece model)
    overrides the one the source carries or names."""
    path = str(path)
    storage.check_reachable([storage.Remote("t5scale.load", path, "dir")])
    folder = epath.Path(path)
    if (folder / MANIFEST).exists():
        return _load_release(folder, vocabulary)
    from t5scale.weights.load import is_compressed

    if not is_compressed(path) and any((folder / name).exists() for name in (bundle.PARAMS, bundle.VOCAB)):
        raise FileNotFoundError(f"{path} is an incomplete release: it has no {MANIFEST} (its upload is still under "
                                "way, or was killed). Rerun `t5scale release` to complete it.")
    if _is_huggingface(folder):
        return _load_huggingface(folder, vocabulary)
    return _load_checkpoint(path, vocabulary)


def _load_release(folder: epath.Path, vocabulary: str | None) -> LoadedModel:
    text = (folder / MANIFEST).read_text()
    manifest = parse_manifest(text, str(folder))
    for name in (bundle.CONFIG, bundle.PARAMS):
        _require_listed(manifest, name, folder)
    local = _local_copy(folder, manifest, hashlib.sha256(text.encode()).hexdigest())
    for name, entry in manifest["files"].items():
        verify_file(local / name, name, entry, str(folder))
    config = json.loads((local / bundle.CONFIG).read_text())
    cfg = ModelConfig.from_dict(config["model"])
    flat = _read_params(local / bundle.PARAMS, compressed=config.get("compression") is not None)
    if vocabulary is None:
        vocab_name = config["vocabulary"]["file"]
        if not safe_name(vocab_name):
            raise ChecksumError(f"{folder}/{bundle.CONFIG} names the vocabulary {vocab_name!r}, which is not a path "
                                "inside the release; refusing to read it.")
        _require_listed(manifest, vocab_name, folder)
        vocabulary = str(local / vocab_name)
    vocab = _vocabulary(vocabulary, config["vocabulary"].get("extra_ids", bundle.T5_EXTRA_IDS))
    card = None
    if bundle.CARD in manifest["files"]:
        card = (local / bundle.CARD).read_text()
    elif (folder / bundle.CARD).exists():
        _require_listed(manifest, bundle.CARD, folder)
    return LoadedModel(_model(cfg, flat), vocab, str(folder), "release", card=card, folder=str(local))


def _require_listed(manifest: dict, name: str, folder: epath.Path) -> None:
    """Every file a release load reads is covered by a hash: one the manifest does not list is refused."""
    if name not in manifest["files"]:
        raise ChecksumError(f"{folder}/{name} is not listed in {MANIFEST}, so its bytes cannot be checked; refusing "
                            "to load it. Re-release it (t5scale release --overwrite).")


def _local_copy(folder: epath.Path, manifest: dict, key: str) -> pathlib.Path:
    """`folder` itself when local; else its files copied (every time: the copy is verified, never trusted) into a
    cache folder named by the manifest's hash."""
    if not storage.is_remote(str(folder)):
        return pathlib.Path(folder)
    from t5scale.data.vocab import cache_dir

    local = cache_dir() / "releases" / key[:16]
    for name in manifest["files"]:
        target = local / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            try:
                with (folder / name).open("rb") as src:
                    shutil.copyfileobj(src, tmp, _CHUNK)
            except FileNotFoundError:
                os.unlink(tmp.name)
                continue  # verify_file names it as missing
        os.replace(tmp.name, target)
    return local


def _read_params(path: pathlib.Path, *, compressed: bool) -> dict[str, np.ndarray]:
    """Flat float32 params from the bundle's safetensors (float32, bfloat16, or t5scale.compress's arrays)."""
    from safetensors import safe_open

    # The "flax" framework reads bfloat16, which safetensors' numpy reader does not.
    with safe_open(str(path), framework="flax") as f:
        metadata = f.metadata() or {}
        tensors = {name: np.asarray(f.get_tensor(name)) for name in f.keys()}
    if compressed:
        from t5scale.weights.compressed_format import decompress_params
        from t5scale.weights.load import LAYOUT_KEY

        return decompress_params(tensors, json.loads(metadata[LAYOUT_KEY]))
    return {name: value.astype(np.float32) for name, value in tensors.items()}


def _model(cfg: ModelConfig, flat: dict[str, np.ndarray]):
    from t5scale import abstract_model
    from t5scale.model.layout import load_flat_params

    model = abstract_model(cfg)
    load_flat_params(model, flat)
    return model


def _vocabulary(path: str, extra_ids: int):
    """A seqio vocabulary over a local, content-addressed copy of `path`: seqio caches vocabularies by file name
    and reads through TensorFlow, which cannot reach every store epath can."""
    import seqio

    from t5scale.data.vocab import cache_dir

    data = epath.Path(path).read_bytes()
    local = cache_dir() / "vocab" / f"bundled-{hashlib.sha256(data).hexdigest()[:16]}.model"
    if not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=local.parent, delete=False) as tmp:
            tmp.write(data)
        os.replace(tmp.name, local)
    return seqio.SentencePieceVocabulary(str(local), extra_ids=extra_ids)


def _is_huggingface(folder: epath.Path) -> bool:
    config = folder / "config.json"
    if not config.exists():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == "t5"
    except ValueError:
        return False


def _load_huggingface(folder: epath.Path, vocabulary: str | None) -> LoadedModel:
    from t5scale.convert.hf import from_hf

    if storage.is_remote(str(folder)):
        raise ValueError(f"{folder}: Hugging Face folders are read locally; copy it here first "
                         "(gcloud storage cp -r ...).")
    spiece = folder / "spiece.model"  # what T5's Hugging Face tokenizer keeps
    vocab_path = vocabulary or (str(spiece) if spiece.exists() else None)
    vocab = _vocabulary(vocab_path, bundle.T5_EXTRA_IDS) if vocab_path else None
    return LoadedModel(from_hf(str(folder)), vocab, str(folder), "huggingface")


def _load_checkpoint(path: str, vocabulary: str | None) -> LoadedModel:
    from t5scale.weights.load import load_any

    try:
        source = bundle.resolve_source(path)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{path} is none of what t5scale.load reads: a release (with {MANIFEST}), a "
                                f"MODEL_DIR or MODEL_DIR/checkpoint_<step>, a compressed checkpoint, or a Hugging "
                                f"Face T5 folder ({error})") from None
    vocab_path, extra_ids = bundle.vocabulary_source(source, vocabulary)
    bundle.check_vocabulary_reachable(vocab_path)
    model, _, _ = load_any(source.path)
    return LoadedModel(model, _vocabulary(vocab_path, extra_ids), path,
                       "compressed" if source.compression else "checkpoint")
