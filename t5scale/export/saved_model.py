"""A TensorFlow SavedModel with strings in and strings out, for TF Serving: tensorflow-text's SentencepieceTokenizer
in the graph around the decode function converted with `jax.experimental.jax2tf`.

jax2tf (in jax itself) rather than orbax-export: with this jax (0.10.2) jax2tf only does native serialization, i.e. it
embeds the same StableHLO as `jax.export` in one `XlaCallModule` op, and orbax-export 0.0.8's `JaxModule` is a
wrapper over that same `jax2tf.convert` (plus six more dependencies). A plain `tf.Module` keeps the signature, the
tokenizer and the variables in view. docs/export.md has the measured details.

The `serving_default` signature takes `inputs`, a string tensor [n] with 1 <= n <= batch texts (padded to the fixed
batch inside the graph) and, when the export samples, `seed` (int32 scalar; text i is drawn with row id i), and
returns `outputs`, string [n] (and `scores` for beam search, `log_likelihood` for sampling, float32 [n]). A text
longer than the fixed input length, or more than `batch` texts, fails the request with an error saying so.
"""

from __future__ import annotations

import contextlib
import pathlib
from typing import Callable

import numpy as np

from t5scale.export.jax_export import DecodeSettings

SIGNATURE_KEY = "serving_default"
INPUT_NAME = "inputs"
OUTPUT_NAME = "outputs"


def write_saved_model(decode: Callable, params: dict[str, np.ndarray], settings: DecodeSettings, sp_model: bytes,
                      vocabulary: dict, folder: pathlib.Path) -> None:
    import tensorflow as tf
    import tensorflow_text as tf_text
    from jax.experimental import jax2tf

    tf_decode = jax2tf.convert(decode, with_gradient=False, native_serialization_platforms=settings.platforms)
    batch, length = settings.batch, settings.input_length
    eos_id, unk_id, pieces = vocabulary["eos_id"], vocabulary["unk_id"], vocabulary["pieces"]

    class Server(tf.Module):
        def __init__(self):
            super().__init__()
            # Variables named by their paths, so the checkpoint inside the SavedModel reads like params.safetensors.
            self.params = {name: tf.Variable(value, trainable=False, name=name.replace("/", "."))
                           for name, value in params.items()}
            self.tokenizer = tf_text.SentencepieceTokenizer(model=sp_model)

        def serve(self, inputs, *seed):
            rows = tf.shape(inputs)[0]
            ids = self.tokenizer.tokenize(inputs)
            ids = tf.concat([ids, tf.fill([rows, 1], eos_id)], axis=1)  # as seqio: EOS after each input
            checks = [
                tf.debugging.assert_less_equal(rows, batch, message=f"this export decodes batches of up to {batch} "
                                               "texts; got more"),
                tf.debugging.assert_greater(rows, 0, message="no inputs"),
                tf.debugging.assert_less_equal(
                    tf.reduce_max(ids.row_lengths()), tf.cast(length, tf.int64),
                    message=f"an input has more tokens (with its EOS) than the fixed input_length {length} of this "
                            "export"),
            ]
            with tf.control_dependencies(checks):
                tokens = ids.to_tensor(default_value=0, shape=[None, length])
                tokens = tf.ensure_shape(tf.pad(tokens, [[0, batch - rows], [0, 0]]), [batch, length])
            sampling = (seed[0], tf.range(batch, dtype=tf.int32)) if seed else ()  # row i: fold_in(seed, i)
            out = tf_decode(self.params, tokens, *sampling)
            # seqio's decode: ids past the vocabulary read as its unknown piece; each row up to its first EOS.
            generated = out["tokens"][:rows]
            generated = tf.where(generated >= pieces, unk_id, generated)
            ends = generated == eos_id
            lengths = tf.where(tf.reduce_any(ends, axis=1), tf.argmax(tf.cast(ends, tf.int32), axis=1) + 1,
                               settings.output_length)
            texts = self.tokenizer.detokenize(tf.RaggedTensor.from_tensor(generated, lengths=lengths))
            result = {OUTPUT_NAME: texts}
            for name in ("scores", "log_likelihood"):
                if name in out:
                    result[name] = out[name][:rows]
            return result

    server = Server()
    specs = [tf.TensorSpec([None], tf.string, name=INPUT_NAME)]
    if settings.method == "sample":
        specs.append(tf.TensorSpec([], tf.int32, name="seed"))
    serve = tf.function(server.serve, input_signature=specs, autograph=False)
    with _stablehlo_for_tensorflow():  # the function is traced (and its StableHLO serialized) here
        tf.saved_model.save(server, str(folder), signatures={SIGNATURE_KEY: serve})


def stablehlo_target() -> str:
    from jax._src.lib.mlir.dialects import hlo

    return hlo.get_version_from_compatibility_requirement(hlo.StablehloCompatibilityRequirement.WEEK_12)


@contextlib.contextmanager
def _stablehlo_for_tensorflow():
    """Serialize StableHLO for consumers up to 12 weeks older than jax instead of jax.export's 4.

    TensorFlow's XlaCallModule is older than jax: tensorflow 2.21 reads StableHLO up to 1.13.7, jax 0.10.2 writes
    1.15.0, where beam search's top_k becomes an op 1.13.7 cannot read ("unregistered operation
    'vhlo.composite_v2'"); written for 1.13.7 (StableHLO's 12-week window) it runs. jax has no public setting for
    the target version, so this swaps its private serializer while the SavedModel is traced.
    """
    from jax._src import xla_bridge
    from jax._src.export import _export
    from jax._src.lib import _jax

    def to_bytecode(module) -> bytes:
        return _jax.mlir.serialize_portable_artifact(module, stablehlo_target(),
                                                     xla_bridge.get_backend().serialize_with_sdy)

    original = _export._module_to_bytecode
    _export._module_to_bytecode = to_bytecode
    try:
        yield
    finally:
        _export._module_to_bytecode = original
