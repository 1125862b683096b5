"""t5x import: checkpoints t5x's own code wrote (scripts/make_t5x_fixtures.py: t5x's T5 network and Checkpointer)
reproduce t5x's logits; the t5x-layout trees this test writes in both formats (msgpack + tensorstore, orbax), whose
names and shapes are checked against those t5x wrote, read back into the same parameters and logits; one clear line
for each kind of bad input.

Shapes (tiny_config): EL 2, DL 3, DM 24, KV 5, NH 4 (NH*KV 20 != DM), FF 36, vocab 64.
"""

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import serialization

from t5scale.config import shape
from t5scale.convert.t5x import from_t5x, read_target
from t5scale.model.layout import flat_params
from tests.testing import FIXTURES, forward, random_model, random_tokens, tiny_config

STEP = 1000
T5X = FIXTURES / "t5x"


def t5x_target(model) -> dict:
    """The nested t5x `target` tree of `model`, as t5x/examples/t5's network names and shapes its params."""
    cfg, params = model.cfg, flat_params(model)
    d, nh = cfg.d_model, cfg.num_heads * cfg.d_kv
    tree: dict = {}

    def put(path: str, value):
        *parents, leaf = path.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = np.asarray(value, np.float32)

    for name, value in params.items():
        t5x_name = name
        for stack in ("encoder", "decoder"):
            t5x_name = t5x_name.replace(f"{stack}/layers/", f"{stack}/layers_")
        if name == "logits_dense/kernel":
            t5x_name = "decoder/logits_dense/kernel"
        if name.endswith(("query/kernel", "key/kernel", "value/kernel")):
            value = value.reshape(d, nh)  # t5x's DenseGeneral stores the heads joined
        elif name.endswith("out/kernel"):
            value = value.reshape(nh, d)
        put(t5x_name, value)
    return tree


def write_msgpack(checkpoint, target: dict, external: tuple[str, ...] = ()) -> None:
    """Older t5x: `checkpoint` (msgpack); the arrays named in `external` go to tensorstore, a relative spec left in
    their place."""
    import tensorstore as ts

    def place(node, prefix):
        out = {}
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                out[key] = place(value, f"{name}/")
            elif name in external:
                relative = "target." + name.replace("/", ".")
                spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": relative},
                        "metadata": {"shape": list(value.shape), "chunks": list(value.shape), "dtype": "<f4"}}
                store = ts.open({**spec, "kvstore": {"driver": "file", "path": str(checkpoint / relative)}},
                                create=True).result()
                store.write(value).result()
                out[key] = spec
            else:
                out[key] = value
        return out

    checkpoint.mkdir(parents=True)
    state = {"optimizer": {"target": place(target, ""), "state": {"step": np.int64(STEP)}}}
    (checkpoint / "checkpoint").write_bytes(serialization.msgpack_serialize(state))


def write_orbax(checkpoint, target: dict) -> None:
    with ocp.PyTreeCheckpointer() as checkpointer:
        checkpointer.save(checkpoint, {"target": target, "state": {"step": np.int64(STEP)}})
    jax.effects_barrier()


@pytest.mark.parametrize("variant", ["v1_0", "v1_1"])
def test_checkpoints_t5x_wrote_import_to_its_networks_logits(variant):
    model, checkpoint, step = from_t5x(str(T5X / variant))
    assert (checkpoint.name, step) == ("checkpoint_0", 0)
    assert model.cfg.is_gated == (variant == "v1_1") and model.cfg.tie_embeddings == (variant == "v1_0")
    assert model.cfg.num_encoder_layers != model.cfg.num_decoder_layers and model.cfg.attention_dim != model.cfg.d_model
    ref = dict(np.load(T5X / variant / "reference.npz"))
    np.testing.assert_allclose(forward(model, ref["encoder_input_tokens"], ref["decoder_input_tokens"]), ref["logits"],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["v1_0", "v1_1"])
def test_the_trees_this_test_writes_have_the_names_and_shapes_t5x_writes(variant):
    written_by_t5x = read_target(T5X / variant / "checkpoint_0")
    model, _, _ = from_t5x(str(T5X / variant))

    def flat(tree, prefix=""):
        for key, value in tree.items():
            yield from flat(value, f"{prefix}{key}/") if isinstance(value, dict) else [(f"{prefix}{key}", value)]

    ours = {name: np.shape(value) for name, value in flat(t5x_target(model))}
    assert ours == {name: np.shape(value) for name, value in written_by_t5x.items()}


@pytest.fixture(scope="module")
def v1_1_model():
    return random_model(tiny_config(activation="gated-gelu", tie_embeddings=False), seed=3)


@pytest.mark.parametrize("fmt", ["msgpack", "orbax"])
def test_both_formats_import_to_the_same_params_and_logits(fmt, v1_1_model, tmp_path):
    checkpoint = tmp_path / "model" / f"checkpoint_{STEP}"
    target = t5x_target(v1_1_model)
    if fmt == "msgpack":
        write_msgpack(checkpoint, target, external=("encoder/layers_1/mlp/wi_0/kernel",
                                                    "decoder/layers_0/self_attention/query/kernel"))
    else:
        write_orbax(checkpoint, target)
    model, found, step = from_t5x(str(tmp_path / "model"))  # a MODEL_DIR: its newest checkpoint
    assert found == checkpoint and step == STEP
    assert model.cfg.operators() == v1_1_model.cfg.operators() and model.cfg.is_gated
    assert not model.cfg.tie_embeddings
    ours, original = flat_params(model), flat_params(v1_1_model)
    assert set(ours) == set(original)
    for name, value in original.items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)
    rng = np.random.default_rng(0)
    x, y = random_tokens(rng, (2, 11)), random_tokens(rng, (2, 6))
    np.testing.assert_allclose(forward(model, x, y), forward(v1_1_model, x, y), atol=1e-6)


def test_v1_0_tree_imports_tied(tmp_path):
    original = random_model(tiny_config(), seed=4)
    write_orbax(tmp_path / "checkpoint_5", t5x_target(original))
    model, _, step = from_t5x(str(tmp_path / "checkpoint_5"))
    assert step == 5 and model.cfg.tie_embeddings and not model.cfg.is_gated
    x = random_tokens(np.random.default_rng(1), (2, 9))
    np.testing.assert_allclose(forward(model, x, x[:, :4]), forward(original, x, x[:, :4]), atol=1e-6)


def test_a_shape_the_arrays_do_not_have_is_one_line(v1_1_model, tmp_path):
    write_orbax(tmp_path / f"checkpoint_{STEP}", t5x_target(v1_1_model))
    with pytest.raises(ValueError, match=r"its arrays and shape 'v1_1-small' disagree: num_encoder_layers 2 vs 8"):
        from_t5x(str(tmp_path / f"checkpoint_{STEP}"), shape("v1_1-small"))


def test_unknown_parameter_is_one_line(v1_1_model, tmp_path):
    target = t5x_target(v1_1_model)
    target["encoder"]["layers_0"]["attention"]["query"]["bias"] = np.zeros((20,), np.float32)
    write_orbax(tmp_path / f"checkpoint_{STEP}", target)
    with pytest.raises(ValueError, match=r"unknown parameter 'encoder/layers_0/attention/query/bias'") as error:
        from_t5x(str(tmp_path / f"checkpoint_{STEP}"))
    assert "\n" not in str(error.value)


def test_truncated_msgpack_file_is_one_line(v1_1_model, tmp_path):
    checkpoint = tmp_path / f"checkpoint_{STEP}"
    write_msgpack(checkpoint, t5x_target(v1_1_model))
    path = checkpoint / "checkpoint"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupt") as error:
        from_t5x(str(checkpoint))
    assert "\n" not in str(error.value)


def test_not_a_checkpoint_says_what_it_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a t5x checkpoint folder"):
        from_t5x(str(tmp_path))
    (tmp_path / "checkpoint_3").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a msgpack 'checkpoint' file"):
        from_t5x(str(tmp_path))
