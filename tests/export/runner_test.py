"""The jax.export artifact in a fresh process with runner.py (jax, numpy, sentencepiece, safetensors; no t5scale
model code): the same tokens, scores and strings as `t5scale.load(...)`, and one clear error for each input the
fixed-shape program cannot take."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from t5scale.model import decoding
from tests.export.conftest import BEAM, GREEDY, SEED, reference_generate, reference_sample, reference_tokens, run_fresh
from tests.release.runs import TEXTS

CONSUMER = r"""
import json, sys
folder, texts = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, folder)
import numpy as np
import runner

model = runner.load(folder)
tokens = model.tokenize(texts)
inputs = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
decoded = model.decode(tokens, **inputs)
result = {"tokenized": tokens.tolist(), "generated": model.generate(texts, **inputs),
          "decoded": {name: value.tolist() for name, value in decoded.items()}}

# The plain jax call docs/export.md shows, without runner.py.
import jax
from safetensors.numpy import load_file
program = jax.export.deserialize(bytearray(open(f"{folder}/decode.jax", "rb").read()))
sampling = [np.int32(inputs["seed"]), np.arange(len(tokens), dtype=np.int32)] if inputs else []
result["plain"] = np.asarray(program.call(load_file(f"{folder}/params.safetensors"), tokens, *sampling)["tokens"]
                             ).tolist()

batch, length = tokens.shape
bad = {"batch": lambda: model.decode(np.zeros((batch + 1, length), np.int32), **inputs),
       "length": lambda: model.decode(np.zeros((batch, length // 2), np.int32), **inputs),
       "dtype": lambda: model.decode(tokens.astype(np.int64), **inputs),
       "too_long": lambda: model.generate(["the interpreter reads a line " * 8], **inputs),
       "too_many": lambda: model.generate(texts[:1] * (batch + 1), **inputs)}
result["errors"] = {}
for name, call in bad.items():
    try:
        call()
        result["errors"][name] = None
    except runner.ExportError as error:
        result["errors"][name] = str(error)
assert "t5scale.model" not in sys.modules and "flax" not in sys.modules, "the runner imported t5scale's model code"
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def greedy_run(greedy_export, tmp_path_factory):
    return run_fresh(CONSUMER, greedy_export, json.dumps(TEXTS), cwd=tmp_path_factory.mktemp("consumer"))


def test_runner_gives_the_tokens_and_texts_of_t5scale_load(greedy_run, loaded):
    tokens = reference_tokens(loaded, GREEDY)
    assert np.array_equal(greedy_run["tokenized"], tokens)
    expected = np.asarray(decoding.greedy_decode(loaded.nnx_model, tokens, GREEDY.output_length))
    assert np.array_equal(greedy_run["decoded"]["tokens"], expected)
    assert np.array_equal(greedy_run["plain"], expected)
    assert greedy_run["generated"] == reference_generate(loaded, GREEDY)


def test_beam_search_export_gives_the_tokens_scores_and_texts_of_t5scale_load(beam_export, loaded, tmp_path):
    run = run_fresh(CONSUMER, beam_export, json.dumps(TEXTS), cwd=tmp_path)
    tokens, scores = decoding.beam_search(loaded.nnx_model, reference_tokens(loaded, BEAM), BEAM.output_length,
                                          beam_size=BEAM.beam_size, alpha=BEAM.alpha)
    assert np.array_equal(run["decoded"]["tokens"], np.asarray(tokens))
    assert np.array_equal(np.float32(run["decoded"]["scores"]), np.asarray(scores))
    assert run["generated"] == reference_generate(loaded, BEAM)


def test_each_input_the_fixed_shapes_cannot_take_is_one_clear_error(greedy_run):
    errors = greedy_run["errors"]
    expected = "tokens must be int32 of shape (4, 16) (batch, input_length) for this export; got {} of shape {}."
    assert errors["batch"] == expected.format("int32", "(5, 16)")
    assert errors["length"] == expected.format("int32", "(4, 8)")
    assert errors["dtype"] == expected.format("int64", "(4, 16)")
    assert "more than this export's fixed input_length 16" in errors["too_long"]
    assert errors["too_many"] == "this export decodes batches of up to 4 texts; got 5."


def test_a_changed_file_is_refused_before_anything_runs(greedy_export, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(greedy_export, copy)
    params = pathlib.Path(copy, "params.safetensors")
    params.write_bytes(params.read_bytes()[:-4] + b"\0\0\0\0")
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import runner, json\n"
              "try:\n    runner.load(sys.argv[1]); print(json.dumps(None))\n"
              "except runner.ExportError as e:\n    print(json.dumps(str(e)))\n")
    message = run_fresh(script, str(copy), cwd=tmp_path)
    assert message == f"{params} does not match its sha256 in manifest.json: the file is truncated or changed."


def test_sampling_export_draws_the_tokens_of_decoding_sample_from_its_seed(sample_export, loaded, tmp_path):
    run = run_fresh(CONSUMER, sample_export, json.dumps(TEXTS), json.dumps({"seed": SEED}), cwd=tmp_path)
    tokens, log_likelihood = reference_sample(loaded)
    assert np.array_equal(run["decoded"]["tokens"], tokens)
    assert np.array_equal(run["plain"], tokens)
    assert np.array_equal(np.float32(run["decoded"]["log_likelihood"]), log_likelihood)
    assert run["generated"] == [loaded.detokenize(row) for row in tokens[:len(TEXTS)]]
    assert run["errors"]["too_many"] == "this export decodes batches of up to 4 texts; got 5."
