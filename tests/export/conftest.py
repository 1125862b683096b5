"""Exports of a tiny MODEL_DIR (tests/release/runs.py: the embedded vocabulary, random weights, so its outputs are
real if odd text), made once per session, and what `t5scale.load(...)` gives for the same inputs: the reference
every exported artifact must reproduce exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from t5scale.export import DecodeSettings, export
from tests.release.runs import TEXTS, make_model_dir

# TEXTS tokenize to 8, 16 and 11 tokens with EOS: LoadedModel.generate pads them to 16 columns and 4 rows, the
# export's fixed shapes, so both run the same shapes.
GREEDY = DecodeSettings(batch=4, input_length=16, output_length=8)
BEAM = DecodeSettings(batch=4, input_length=16, output_length=8, beam_size=3, alpha=0.6)
SAMPLE = DecodeSettings(batch=4, input_length=16, output_length=8, temperature=0.8, top_k=50, top_p=0.9)
SEED = 7


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("export-run") / "run")
    make_model_dir(path)
    return path


@pytest.fixture(scope="session")
def loaded(model_dir):
    import t5scale

    return t5scale.load(model_dir)


@pytest.fixture(scope="session")
def greedy_export(model_dir, tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("export") / "greedy")
    export(model_dir, folder, GREEDY)
    return folder


@pytest.fixture(scope="session")
def beam_export(model_dir, tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("export") / "beam")
    export(model_dir, folder, BEAM)
    return folder


@pytest.fixture(scope="session")
def sample_export(model_dir, tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("export") / "sample")
    export(model_dir, folder, SAMPLE)
    return folder


def reference_sample(loaded) -> tuple[np.ndarray, np.ndarray]:
    """decoding.sample of TEXTS with SEED, row i drawn as row id i: (tokens, log-likelihoods)."""
    from t5scale.model import decoding

    tokens, log_likelihood = decoding.sample(loaded.nnx_model, reference_tokens(loaded, SAMPLE),
                                             SAMPLE.output_length, seed=SEED, temperature=SAMPLE.temperature,
                                             top_k=SAMPLE.top_k, top_p=SAMPLE.top_p)
    return np.asarray(tokens), np.asarray(log_likelihood)


def reference_tokens(loaded, settings: DecodeSettings) -> np.ndarray:
    """TEXTS as LoadedModel tokenizes them (seqio, EOS appended), padded with 0 to the export's fixed shape."""
    tokens = np.zeros((settings.batch, settings.input_length), np.int32)
    for i, row in enumerate(loaded.tokenize(TEXTS)):
        tokens[i, :len(row)] = row
    return tokens


def reference_generate(loaded, settings: DecodeSettings) -> list[str]:
    return loaded.generate(TEXTS, max_length=settings.output_length, beam_size=settings.beam_size,
                           alpha=settings.alpha, batch_size=settings.batch, max_input_length=settings.input_length)


def run_fresh(script: str, *args: str, cwd) -> dict:
    """`script` in a new Python process (that must not import t5scale's model code); its last stdout line as JSON."""
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
