"""The SavedModel in a fresh process with TensorFlow and tensorflow-text only: its `serving_default` signature, what
TF Serving calls, gives from strings the same strings (and beam scores) as `t5scale.load(...).generate`, and one
error naming the limit for a too long input or too many inputs."""

from __future__ import annotations

import json

import numpy as np

from t5scale.model import decoding
from tests.export.conftest import BEAM, GREEDY, SEED, reference_generate, reference_sample, reference_tokens, run_fresh
from tests.release.runs import TEXTS

CONSUMER = r"""
import json, sys
folder, texts = sys.argv[1], json.loads(sys.argv[2])
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the sentencepiece ops, as TF Serving links them in)

serve = tf.saved_model.load(f"{folder}/saved_model/1").signatures["serving_default"]
seed = {"seed": tf.constant(int(sys.argv[3]))} if len(sys.argv) > 3 else {}
out = serve(inputs=tf.constant(texts), **seed)
result = {"outputs": [s.decode() for s in out["outputs"].numpy()], "fewer": None, "errors": {}}
for name in ("scores", "log_likelihood"):
    if name in out:
        result[name] = out[name].numpy().tolist()
result["fewer"] = [s.decode() for s in serve(inputs=tf.constant(texts[1:2]), **seed)["outputs"].numpy()]
for name, inputs in {"too_long": ["the interpreter reads a line " * 8], "too_many": texts[:1] * 5}.items():
    try:
        serve(inputs=tf.constant(inputs), **seed)
        result["errors"][name] = None
    except tf.errors.InvalidArgumentError as error:
        result["errors"][name] = error.message
assert "t5scale.model" not in sys.modules and "flax" not in sys.modules, "t5scale's model code was imported"
print(json.dumps(result))
"""


def test_serving_signature_gives_the_texts_of_t5scale_load(greedy_export, loaded, tmp_path):
    run = run_fresh(CONSUMER, greedy_export, json.dumps(TEXTS), cwd=tmp_path)
    expected = reference_generate(loaded, GREEDY)
    assert run["outputs"] == expected
    assert run["fewer"] == expected[1:2]  # one text is padded to the fixed batch inside the graph
    assert "an input has more tokens (with its EOS) than the fixed input_length 16 of this export" in \
        run["errors"]["too_long"]
    assert "this export decodes batches of up to 4 texts" in run["errors"]["too_many"]


def test_beam_search_serving_signature_gives_texts_and_scores_of_t5scale_load(beam_export, loaded, tmp_path):
    run = run_fresh(CONSUMER, beam_export, json.dumps(TEXTS), cwd=tmp_path)
    _, scores = decoding.beam_search(loaded.nnx_model, reference_tokens(loaded, BEAM), BEAM.output_length,
                                     beam_size=BEAM.beam_size, alpha=BEAM.alpha)
    assert run["outputs"] == reference_generate(loaded, BEAM)
    np.testing.assert_allclose(run["scores"], np.asarray(scores)[:len(TEXTS)], rtol=1e-6)


def test_sampling_serving_signature_draws_the_texts_of_decoding_sample_from_its_seed(sample_export, loaded,
                                                                                      tmp_path):
    run = run_fresh(CONSUMER, sample_export, json.dumps(TEXTS), str(SEED), cwd=tmp_path)
    tokens, log_likelihood = reference_sample(loaded)
    assert run["outputs"] == [loaded.detokenize(row) for row in tokens[:len(TEXTS)]]
    np.testing.assert_allclose(run["log_likelihood"], log_likelihood[:len(TEXTS)], rtol=1e-6)
