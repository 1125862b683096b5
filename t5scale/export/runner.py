"""Run a `t5scale export` folder with jax, numpy, sentencepiece and safetensors only: no t5scale, no flax.

`t5scale export` copies this file into the folder it writes, so a server imports it from there:

    import sys; sys.path.insert(0, "/models/t5")    # the export folder
    import runner
    model = runner.load("/models/t5")              # checks every file against manifest.json first
    model.generate(["sst2 sentence: a fine film"])  # up to `batch` texts -> their outputs
    model.decode(tokens)                            # int32 [batch, input_length] -> {"tokens": ..., }
    model.generate(texts, seed=7)                   # an export that samples: text i drawn with row id i

The decode program has fixed shapes (signature.json): `generate` pads up to `batch` texts with empty rows and
refuses more, and refuses a text longer than `input_length` tokens (its EOS included), naming the length;
`decode` takes exactly [batch, input_length] int32 tokens. Tokens and texts follow seqio's SentencePieceVocabulary,
as the model was trained: EOS (1) appended to each input; an output is read up to and including its first EOS, and
ids past the vocabulary read as its unknown piece.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import jax
import numpy as np
import sentencepiece
from safetensors.numpy import load_file

SIGNATURE = "signature.json"
MANIFEST = "manifest.json"


class ExportError(ValueError):
    """A missing or changed file of the export, or an input the fixed-shape program cannot take."""


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(folder: pathlib.Path, manifest: dict, name: str) -> pathlib.Path:
    entry = manifest["files"].get(name)
    path = folder / name
    if entry is None or not path.exists():
        raise ExportError(f"{path} is {'missing' if entry else f'not listed in {MANIFEST}'}; re-export the model.")
    if path.stat().st_size != entry["bytes"] or _sha256(path) != entry["sha256"]:
        raise ExportError(f"{path} does not match its sha256 in {MANIFEST}: the file is truncated or changed.")
    return path


class ExportedModel:
    def __init__(self, folder: str | pathlib.Path):
        folder = pathlib.Path(folder)
        if not (folder / MANIFEST).exists():
            raise ExportError(f"{folder} has no {MANIFEST}: not a complete t5scale export.")
        manifest = json.loads((folder / MANIFEST).read_text())
        self.signature = json.loads(_verified(folder, manifest, SIGNATURE).read_text())
        files = self.signature["files"]
        self.params = load_file(str(_verified(folder, manifest, files["params"])))
        self.program = jax.export.deserialize(bytearray(_verified(folder, manifest, files["program"]).read_bytes()))
        self.tokenizer = sentencepiece.SentencePieceProcessor(
            model_proto=_verified(folder, manifest, files["vocabulary"]).read_bytes())
        shapes = self.signature["shapes"]
        self.batch, self.input_length = shapes["batch"], shapes["input_length"]
        vocab = self.signature["vocabulary"]
        self.eos_id, self.unk_id = vocab["eos_id"], vocab["unk_id"]

    def decode(self, tokens, **inputs) -> dict[str, np.ndarray]:
        """The exported program on int32 tokens [batch, input_length] (0 = padding); a sampling export also takes
        `seed` (an int) and optionally `row_ids` (int [batch], default 0..batch-1)."""
        tokens = np.asarray(tokens)
        expected = (self.batch, self.input_length)
        if tokens.shape != expected or tokens.dtype != np.int32:
            raise ExportError(f"tokens must be int32 of shape {expected} (batch, input_length) for this export; "
                              f"got {tokens.dtype} of shape {tokens.shape}.")
        extra = [name for name in self.signature["inputs"] if name not in ("params", "tokens")]
        if "row_ids" in extra and "row_ids" not in inputs:
            inputs["row_ids"] = np.arange(self.batch)  # a sampled row is drawn by its seed and row id
        if sorted(inputs) != sorted(extra):
            raise ExportError(f"this export takes the inputs {extra or 'tokens only'}; got {sorted(inputs)}.")
        args = [np.asarray(inputs[name], self.signature["inputs"][name]["dtype"]) for name in extra]
        return {name: np.asarray(value) for name, value in self.program.call(self.params, tokens, *args).items()}

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """int32 [batch, input_length]: each text's pieces and EOS, padded with 0 (rows too, up to batch)."""
        if isinstance(texts, str):
            raise TypeError("Pass a list of strings, not one string.")
        if not 1 <= len(texts) <= self.batch:
            raise ExportError(f"this export decodes batches of up to {self.batch} texts; got {len(texts)}.")
        tokens = np.zeros((self.batch, self.input_length), np.int32)
        for i, text in enumerate(texts):
            ids = [*self.tokenizer.EncodeAsIds(text), self.eos_id]
            if len(ids) > self.input_length:
                raise ExportError(f"input {i} has {len(ids)} tokens (with its EOS), more than this export's fixed "
                                  f"input_length {self.input_length}.")
            tokens[i, :len(ids)] = ids
        return tokens

    def detokenize(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id) + 1]
        size = self.tokenizer.GetPieceSize()
        return self.tokenizer.DecodeIds([self.unk_id if i >= size else i for i in ids])

    def generate(self, texts: list[str], **inputs) -> list[str]:
        tokens = self.decode(self.tokenize(texts), **inputs)["tokens"]
        return [self.detokenize(row) for row in tokens[:len(texts)]]


def load(folder: str | pathlib.Path) -> ExportedModel:
    return ExportedModel(folder)
