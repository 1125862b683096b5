"""Make tests/fixtures/t5x/{v1_0,v1_1} with t5x's own code: its T5 network (t5x/examples/t5/network.py) builds
and runs a tiny model, and its Checkpointer (t5x/checkpoints.py: msgpack + tensorstore, t5x's classic format)
saves the train state (plain SGD, whose optimizer state is empty, to keep the files few).

Written per variant: `checkpoint_<STEP>/` as t5x wrote it, and reference.npz (encoder tokens with padding, decoder
inputs and targets, and the logits of t5x's network with dropout off). Norm scales are set to random values near 1
first (t5x initialises them to 1), so a norm read from the wrong array shows in the logits.

t5x is not on the registry, and `pip install` of its repository fails here (setup.py names airio, clu, flax,
jestimator, optax and seqio as git URLs). So its source is put on sys.path, and what this script imports is
t5x/examples/t5/network.py, t5x/checkpoints.py and what they import, with t5scale's environment (jax, flax,
orbax, tensorstore, TensorFlow) plus clu 0.0.12 and cached_property, all from the registry:

    git clone https://github.com/google-research/t5x /tmp/t5x-src       # or any copy of its source
    pip install --no-deps --target /tmp/t5x-deps clu==0.0.12 cached_property fiddle==0.3.1
    PYTHONPATH=/tmp/t5x-deps python scripts/make_t5x_fixtures.py /tmp/t5x-src tests/fixtures/t5x
(T5X_COMMIT=<sha> names the commit in versions.json when the source is not a git checkout.)

Two stand-ins, neither on the path that builds, runs or saves the model: `t5x/__init__.py` is skipped (it imports
t5x.utils, which imports airio, on no registry), and `jestimator` (its Amos optimizer, which t5x/optimizers.py
registers at import; jestimator 0.3.3 on the registry needs jax.experimental.pjit.PartitionSpec, gone from jax)
is an empty module.
"""

import json
import os
import pathlib
import subprocess
import sys
import types

import numpy as np

STEP = 0  # a fresh train state; t5x names the folder checkpoint_<step>
VOCAB = 32
INPUT_LEN, TARGET_LEN, BATCH = 40, 21, 2  # > 16 and 32 exact-distance buckets
VARIANTS = {
    # T5 1.0: ReLU, logits from the embedding. EL != DL, heads * head_dim != emb_dim.
    "v1_0": dict(emb_dim=8, num_heads=2, num_encoder_layers=2, num_decoder_layers=1, head_dim=3, mlp_dim=12,
                 mlp_activations=("relu",), logits_via_embedding=True),
    # T5 1.1: gated GELU, its own output layer.
    "v1_1": dict(emb_dim=8, num_heads=3, num_encoder_layers=1, num_decoder_layers=2, head_dim=2, mlp_dim=10,
                 mlp_activations=("gelu", "linear"), logits_via_embedding=False),
}


def import_t5x(source: pathlib.Path):
    package = types.ModuleType("t5x")
    package.__path__ = [str(source / "t5x")]
    sys.modules["t5x"] = package
    amos = types.ModuleType("jestimator.amos")
    amos.ScaleByAmosState, amos.amos = type("ScaleByAmosState", (), {}), None
    helper = types.ModuleType("jestimator.amos_helper")
    helper.state_partition_rule = None
    jestimator = types.ModuleType("jestimator")
    jestimator.amos, jestimator.amos_helper = amos, helper
    sys.modules.update({"jestimator": jestimator, "jestimator.amos": amos, "jestimator.amos_helper": helper})
    sys.path.insert(0, str(source))
    from t5x import checkpoints, optimizers, partitioning, train_state
    from t5x.examples.t5 import network

    return checkpoints, optimizers, partitioning, train_state, network


def example_tokens(seed: int):
    rng = np.random.default_rng(seed)
    inputs = rng.integers(2, VOCAB, (BATCH, INPUT_LEN)).astype(np.int32)
    inputs[1, 30:] = 0  # padding on one row
    targets = rng.integers(2, VOCAB, (BATCH, TARGET_LEN)).astype(np.int32)
    decoder_inputs = np.pad(targets[:, :-1], ((0, 0), (1, 0)))  # start token 0, as t5x's feature converter
    return inputs, decoder_inputs, targets


def make_fixture(t5x, name: str, out_dir: pathlib.Path, seed: int, commit: str) -> None:
    import flax
    import jax
    import optax

    checkpoints, optimizers, partitioning, train_state, network = t5x
    model = network.Transformer(network.T5Config(vocab_size=VOCAB, dropout_rate=0.0, **VARIANTS[name]))
    inputs, decoder_inputs, targets = example_tokens(seed)
    variables = model.init(jax.random.PRNGKey(seed), inputs, decoder_inputs, targets, enable_dropout=False)
    rng = np.random.default_rng(100 + seed)
    params = jax.tree.map(lambda w: (1.0 + 0.2 * rng.standard_normal(w.shape)).astype(np.float32)
                          if w.ndim == 1 else np.asarray(w), flax.core.unfreeze(variables["params"]))
    logits = model.apply({"params": params}, inputs, decoder_inputs, targets, enable_dropout=False)
    sgd = optimizers.wrap_optax_optimizer(optax.sgd)(learning_rate=1e-3)
    state = train_state.FlaxOptimTrainState.create(sgd, flax.core.freeze(
        {"params": params, "params_axes": flax.core.unfreeze(variables["params_axes"])}))
    state = jax.tree.map(jax.numpy.asarray, state)  # as t5x's jitted init returns it: the step an array too
    target = out_dir / name
    target.mkdir(parents=True, exist_ok=True)
    partitioner = partitioning.PjitPartitioner(num_partitions=1)
    checkpointer = checkpoints.Checkpointer(state, partitioner, str(target))
    checkpointer.save(state)
    np.savez(target / "reference.npz", encoder_input_tokens=inputs, decoder_input_tokens=decoder_inputs,
             decoder_target_tokens=targets, logits=np.asarray(logits))
    versions = {"t5x_commit": commit, "jax": jax.__version__, "flax": flax.__version__}
    (target / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")
    print(f"wrote {target}: logits {np.shape(logits)}")


def main(source: str, out_dir: str) -> None:
    source = pathlib.Path(source).resolve()
    t5x = import_t5x(source)
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or os.environ.get("T5X_COMMIT", "unknown")
    for seed, name in enumerate(VARIANTS):
        make_fixture(t5x, name, pathlib.Path(out_dir), seed, commit)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/t5x")
