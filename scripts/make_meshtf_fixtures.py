"""Make tests/fixtures/mtf/{v1_0_meshtf,skv,sh,shkv} with Mesh TensorFlow itself (mesh-tensorflow 0.1.21).

For each variant, Mesh TF builds its Bitransformer from gin bindings (its own gin/defaults.gin, then the lines of
the `t5` package's models/bi_v1.gin and, for sh, models/bi_v1_shared.gin; skv binds `SelfAttention.shared_kv`),
computes teacher-forced logits on a CPU placement mesh, and saves every variable with TensorFlow's saver under the
names Mesh TF gave them. Written per variant: `model.ckpt-<STEP>.*`, the `operative_config.gin` gin wrote for that
graph, reference.npz (encoder tokens with padding, the decoder's inputs as Mesh TF shifts the targets, Mesh TF's
logits) and versions.json. Every variable is set to random values first (norm scales near 1), so a weight read
from the wrong variable shows in the logits.

Mesh TF 0.1.21 needs TensorFlow with tf.estimator (<= 2.15) and tensorflow-datasets, which t5scale's own
environment (TensorFlow 2.21) does not have, so this runs in a separate one:

    python3.11 -m venv /tmp/mtfenv
    /tmp/mtfenv/bin/pip install tensorflow-cpu==2.15.1 tensorflow-estimator==2.15.0 'numpy<2' gin-config==0.5.0 \
        mesh-tensorflow==0.1.21 tensorflow-datasets==4.9.4 tensorflow-metadata==1.14.0 'protobuf<5'
    /tmp/mtfenv/bin/python scripts/make_meshtf_fixtures.py tests/fixtures/mtf

One alias is added before importing Mesh TF: TensorFlow 2.15 moved `ops.register_tensor_conversion_function`
(which mesh_tensorflow/tpu_variables.py calls at import) to `tensor_conversion_registry`; it is the same function.
"""

import importlib.metadata
import json
import os
import pathlib
import sys

import numpy as np
import tensorflow.compat.v1 as tf
from tensorflow.python.framework import ops, tensor_conversion_registry

tf.disable_v2_behavior()
ops.register_tensor_conversion_function = tensor_conversion_registry.register_tensor_conversion_function

import mesh_tensorflow as mtf  # noqa: E402
import mesh_tensorflow.transformer.utils  # noqa: E402,F401 -- registers utils.run, which defaults.gin binds
from mesh_tensorflow.transformer import transformer  # noqa: E402

import gin  # noqa: E402

STEP = 524288
VOCAB = 128  # Mesh TF pads the vocabulary to a multiple of 128 (Unitransformer.vocab_divisor)
INPUT_LEN, TARGET_LEN, BATCH = 40, 21, 2  # > 16 and 32 exact-distance buckets

SIZES = """
d_model = 8
num_layers = 2
d_ff = 12
num_heads = 2
d_kv = 3
dropout_rate = 0.0
"""
# t5/models/gin/models/bi_v1.gin (t5 0.9.4), without its include of bi_bert_base.gin's sizes.
BI_V1 = """
Unitransformer.positional_embedding = False
SelfAttention.relative_attention_type = "bias_shared"
"""
# t5/models/gin/models/bi_v1_shared.gin (t5 0.9.4), lines 5-15.
SHARED = """
encoder/make_layer_stack.layers = [
    ('self_attention', @mesh_tensorflow.transformer.transformer_layers.SelfAttention),
    ('dense_relu_dense', @mesh_tensorflow.transformer.transformer_layers.DenseReluDense),
]
decoder/make_layer_stack.layers = [
    ('self_attention', @mesh_tensorflow.transformer.transformer_layers.SelfAttention),
    ('enc_dec_attention', @mesh_tensorflow.transformer.transformer_layers.EncDecAttention),
    ('dense_relu_dense', @mesh_tensorflow.transformer.transformer_layers.DenseReluDense),
]
make_bitransformer.encoder_name = "decoder"
"""
SHARED_KV = "SelfAttention.shared_kv = True\n"
VARIANTS = {"v1_0_meshtf": "", "skv": SHARED_KV, "sh": SHARED, "shkv": SHARED + SHARED_KV}


def example_tokens(seed: int):
    rng = np.random.default_rng(seed)
    inputs = rng.integers(2, VOCAB, (BATCH, INPUT_LEN)).astype(np.int32)
    inputs[1, 30:] = 0  # padding on one row
    targets = rng.integers(2, VOCAB, (BATCH, TARGET_LEN)).astype(np.int32)
    return inputs, targets


def make_fixture(name: str, out_dir: pathlib.Path, seed: int) -> None:
    gin.clear_config()
    gin.parse_config_file(os.path.join(os.path.dirname(transformer.__file__), "gin", "defaults.gin"))
    gin.parse_config(SIZES + BI_V1 + VARIANTS[name])
    tf.reset_default_graph()
    graph = mtf.Graph()
    mesh = mtf.Mesh(graph, "mesh")
    model = transformer.make_bitransformer(input_vocab_size=VOCAB, output_vocab_size=VOCAB)
    inputs, targets = example_tokens(seed)
    batch = mtf.Dimension("batch", BATCH)
    mtf_inputs = mtf.import_tf_tensor(mesh, tf.constant(inputs), mtf.Shape([batch, mtf.Dimension("length",
                                                                                                  INPUT_LEN)]))
    target_length = mtf.Dimension("length", TARGET_LEN)
    mtf_targets = mtf.import_tf_tensor(mesh, tf.constant(targets), mtf.Shape([batch, target_length]))
    logits, _ = model.call_simple(mtf_inputs, mtf_targets, compute_loss=False, mode=tf.estimator.ModeKeys.EVAL)
    decoder_inputs = transformer.autoregressive_inputs(mtf_targets)
    lowering = mtf.Lowering(graph, {mesh: mtf.placement_mesh_impl.PlacementMeshImpl(shape=[], layout={},
                                                                                      devices=[""])})
    tf_logits, tf_decoder_inputs = (lowering.export_to_tf_tensor(t) for t in (logits, decoder_inputs))
    variables = tf.global_variables()
    rng = np.random.default_rng(100 + seed)
    with tf.Session() as session:
        session.run(tf.global_variables_initializer())
        for variable in variables:
            shape = variable.shape.as_list()
            if len(shape) == 1:
                value = 1.0 + 0.2 * rng.standard_normal(shape)
            elif variable.op.name.endswith("relative_attention_bias"):
                value = 0.5 * rng.standard_normal(shape)
            elif variable.op.name == "shared/embedding":
                value = rng.standard_normal(shape)
            else:
                value = rng.standard_normal(shape) / np.sqrt(shape[0])
            variable.load(value.astype(np.float32), session)
        out_logits, out_decoder_inputs = session.run([tf_logits, tf_decoder_inputs])
        target = out_dir / name
        target.mkdir(parents=True, exist_ok=True)
        tf.train.Saver(variables).save(session, str(target / "model.ckpt"), global_step=STEP,
                                       write_meta_graph=False, write_state=False)
    (target / "operative_config.gin").write_text(gin.operative_config_str())
    np.savez(target / "reference.npz", encoder_input_tokens=inputs, decoder_input_tokens=out_decoder_inputs,
             logits=out_logits)
    versions = {p: importlib.metadata.version(p) for p in ("mesh-tensorflow", "tensorflow-cpu", "gin-config")}
    (target / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")
    print(f"wrote {target}: {len(variables)} variables, logits {out_logits.shape}")


def main(out_dir: str) -> None:
    for seed, name in enumerate(VARIANTS):
        make_fixture(name, pathlib.Path(out_dir), seed)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/mtf")
