"""`t5scale export`: a serving artifact of a checkpoint that runs without t5scale's model code.

    export("gs://bucket/releases/small-ft", "/models/t5", DecodeSettings(batch=8, input_length=512,
                                                                        output_length=64))

The folder holds, for a fixed batch and fixed input/output lengths (docs/export.md):
- `decode.jax`: the decode function (greedy, beam search or sampling) as serialized, versioned StableHLO
  (`jax.export`), over `params.safetensors` passed as its argument; `runner.py` runs it with jax, numpy and
  sentencepiece only;
- `saved_model/1/`: a TensorFlow SavedModel, strings in and strings out, that TF Serving loads;
- `sentencepiece.model` (the vocabulary, seqio's extra ids included), `signature.json` (inputs, outputs, shapes,
  decoding, the model's config, the source and its release manifest's hash), and `manifest.json` (sha256 and size of
  every other file), written last: a folder without it is not an export.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import tempfile

from etils import epath

from t5scale.export.jax_export import DecodeSettings, decode_function, export_decode, io_signature
from t5scale.release.manifest import MANIFEST, make_manifest
from t5scale.release.publish import check_destination, publish

FORMAT = "t5scale-export-v1"
PROGRAM, PARAMS, VOCAB, SIGNATURE, RUNNER = ("decode.jax", "params.safetensors", "sentencepiece.model",
                                             "signature.json", "runner.py")
SAVED_MODEL = "saved_model/1"  # TF Serving loads numbered versions under --model_base_path
FORMATS = ("jax", "saved_model")

__all__ = ["DecodeSettings", "FORMATS", "export"]


class ExportExistsError(ValueError):
    """The destination holds a complete export and overwrite was not asked for."""


def export(checkpoint: str, destination: str, settings: DecodeSettings, *, formats: tuple[str, ...] = FORMATS,
           vocabulary: str | None = None, overwrite: bool = False) -> dict:
    """Write the export of `checkpoint` (anything `t5scale.load` reads) to `destination` (local or gs://); returns
    its manifest."""
    from t5scale.release.load import load

    if not formats or any(f not in FORMATS for f in formats):
        raise ValueError(f"export: formats must be some of {', '.join(FORMATS)}; got {', '.join(formats) or 'none'}.")
    target = epath.Path(destination)
    destination_rules = {"what": "export", "is_own": _is_export_file, "exists_error": ExportExistsError}
    check_destination(target, overwrite, **destination_rules)  # before the minutes of exporting
    loaded = load(checkpoint, vocabulary=vocabulary)
    if loaded.vocabulary is None:
        raise ValueError(f"{checkpoint} carries no vocabulary; pass the sentencepiece model it was trained with "
                         "(--vocabulary PATH).")
    staging = pathlib.Path(tempfile.mkdtemp(prefix="t5scale-export-"))
    try:
        names = _stage(loaded, checkpoint, settings, formats, staging)
        manifest = make_manifest(staging, names, format=FORMAT)
        publish(staging, destination, manifest, overwrite=overwrite, **destination_rules)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _stage(loaded, checkpoint: str, settings: DecodeSettings, formats: tuple[str, ...], staging: pathlib.Path
           ) -> list[str]:
    import jax

    vocab = loaded.vocabulary
    vocabulary = {"file": VOCAB, "pad_id": 0, "eos_id": int(vocab.eos_id), "unk_id": int(vocab.unk_id),
                  "pieces": int(vocab.tokenizer.GetPieceSize()), "extra_ids": int(vocab.extra_ids)}
    (staging / VOCAB).write_bytes(vocab.sp_model)
    decode, params = decode_function(loaded.nnx_model, settings)
    exported = export_decode(decode, params, settings)
    inputs, outputs = io_signature(exported)
    signature = {
        "format": FORMAT,
        "files": {"program": None, "params": None, "runner": None, "vocabulary": VOCAB, "saved_model": None},
        "shapes": {"batch": settings.batch, "input_length": settings.input_length,
                   "output_length": settings.output_length},
        "inputs": inputs, "outputs": outputs, "decoding": settings.decoding(), "vocabulary": vocabulary,
        "model": loaded.config.to_dict(), "source": _source(loaded, checkpoint),
        "jax": {"version": jax.__version__, "serialization_version": exported.calling_convention_version,
                "platforms": list(exported.platforms)},
    }
    if "jax" in formats:
        from safetensors.numpy import save_file

        (staging / PROGRAM).write_bytes(exported.serialize())
        save_file(params, str(staging / PARAMS))
        shutil.copyfile(pathlib.Path(__file__).with_name("runner.py"), staging / RUNNER)
        signature["files"].update(program=PROGRAM, params=PARAMS, runner=RUNNER)
    if "saved_model" in formats:
        signature["files"]["saved_model"] = SAVED_MODEL
        signature["saved_model"] = _write_saved_model(decode, params, settings, vocab.sp_model, vocabulary,
                                                      staging / SAVED_MODEL)
    (staging / SIGNATURE).write_text(json.dumps(signature, indent=1) + "\n")
    return sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())


def _write_saved_model(decode, params, settings, sp_model, vocabulary, folder) -> dict:
    import tensorflow as tf
    import tensorflow_text as tf_text

    from t5scale.export import saved_model

    saved_model.write_saved_model(decode, params, settings, sp_model, vocabulary, folder)
    outputs = {saved_model.OUTPUT_NAME: {"dtype": "string", "shape": ["n"]}}
    inputs = {saved_model.INPUT_NAME: {"dtype": "string", "shape": ["n"], "n": f"1..{settings.batch}"}}
    if settings.method == "beam":
        outputs["scores"] = {"dtype": "float32", "shape": ["n"]}
    if settings.method == "sample":
        outputs["log_likelihood"] = {"dtype": "float32", "shape": ["n"]}
        inputs["seed"] = {"dtype": "int32", "shape": []}
    return {"signature": saved_model.SIGNATURE_KEY, "inputs": inputs,
            "outputs": outputs, "tensorflow": tf.__version__, "tensorflow_text": tf_text.__version__,
            "stablehlo_version": saved_model.stablehlo_target()}


def _source(loaded, checkpoint: str) -> dict:
    source = {"path": checkpoint, "kind": loaded.kind, "release_manifest_sha256": None}
    if loaded.kind == "release":
        source["release_manifest_sha256"] = hashlib.sha256((epath.Path(checkpoint) / MANIFEST).read_bytes()
                                                           ).hexdigest()
    return source


def _is_export_file(name: str) -> bool:
    return name in (PROGRAM, PARAMS, VOCAB, SIGNATURE, RUNNER, MANIFEST) or name.startswith("saved_model/")
