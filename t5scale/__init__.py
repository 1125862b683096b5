"""t5scale: train T5 encoder-decoders of any shape, measure which shapes are worth it, ship them compressed.

    import t5scale
    cfg = t5scale.shape("small-el16")          # ModelConfig, by released name or operators
    model = t5scale.make_model(cfg, seed=0)     # flax.nnx T5
    logits = model(encoder_tokens, decoder_input_tokens)
    m = t5scale.load("gs://bucket/releases/name")  # a release, a checkpoint or a HF T5 folder, for notebooks
"""

import os

# gs:// paths: t5scale's own files (config.json, metrics, data positions, releases) and orbax's directory operations
# go through etils.epath, and with TensorFlow installed epath would hand them to tf.io.gfile, whose GCS client
# cannot be pointed at another endpoint (an emulator, a proxy). fsspec/gcsfs can, and reads the same Google
# credentials: the same layer in tests and in production. Set EPATH_USE_TF=true to go back to tf.io.gfile.
os.environ.setdefault("EPATH_USE_TF", "false")

from t5scale import platforms  # noqa: E402

platforms.leave_out_absent_tpu()

from flax import nnx  # noqa: E402

from t5scale import convert  # noqa: E402
from t5scale.config import ModelConfig, known_names, released_shapes, shape  # noqa: E402
from t5scale.model import T5, count_params, training_flops  # noqa: E402
from t5scale.release import LoadedModel, load, release  # noqa: E402

__version__ = "0.1.0"


def make_model(cfg: ModelConfig, *, seed: int = 0) -> T5:
    """A freshly initialised T5 of shape `cfg`."""
    return T5(cfg, rngs=nnx.Rngs(params=seed))


def abstract_model(cfg: ModelConfig) -> T5:
    """A T5 whose parameters are shapes only (no memory, no random init): a target to load weights into."""
    return nnx.eval_shape(lambda: T5(cfg, rngs=nnx.Rngs(params=0)))


__all__ = ["LoadedModel", "ModelConfig", "T5", "abstract_model", "convert", "count_params", "known_names", "load",
           "make_model", "release", "released_shapes", "shape", "training_flops"]
