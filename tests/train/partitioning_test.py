"""t5scale.train.partitioning: where each rule set puts every parameter on a (data=2, model=4) mesh.

An abstract mesh gives the placements without 8 devices; training under each rule set on 8 fake devices is in
trainer_test (test_sharded_meshes_...).
"""

import dataclasses

import pytest
from flax import nnx
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from t5scale.model.t5 import T5
from t5scale.train.partitioning import MeshConfig, make_mesh, spec_for
from tests.testing import tiny_config

# EL 2, DL 3, DM 24 (splits 2 ways), 4 heads, FF 36 and vocab 64 (split 4 ways); KV 5 is never split.
MESH = AbstractMesh((2, 4), ("data", "model"))

T5X = {
    "token_embedder/embedding": P("model", None),  # vocab over model
    "encoder/layers/attention/query/kernel": P(None, None, "model", None),  # [layers, embed, heads, kv]
    "encoder/layers/attention/out/kernel": P(None, "model", None, None),  # [layers, heads, kv, embed]
    "encoder/layers/mlp/wi/kernel": P(None, None, "model"),  # [layers, embed, mlp]
    "encoder/layers/mlp/wo/kernel": P(None, "model", None),
    "encoder/layers/pre_mlp_layer_norm/scale": P(None, None),
    "encoder/encoder_norm/scale": P(None),
    "encoder/relpos_bias/rel_embedding": P("model", None),  # [heads, buckets]
}
FSDP = {  # t5x's placements, plus embed over data
    "token_embedder/embedding": P("model", "data"),
    "encoder/layers/attention/query/kernel": P(None, "data", "model", None),
    "encoder/layers/attention/out/kernel": P(None, "model", None, "data"),
    "encoder/layers/mlp/wi/kernel": P(None, "data", "model"),
    "encoder/layers/mlp/wo/kernel": P(None, "model", "data"),
    "encoder/layers/pre_mlp_layer_norm/scale": P(None, "data"),
    "encoder/encoder_norm/scale": P("data"),
    "encoder/relpos_bias/rel_embedding": P("model", None),
}


@pytest.fixture(scope="module")
def params():
    model = nnx.eval_shape(lambda: T5(tiny_config(), rngs=nnx.Rngs(0)))
    return {"/".join(map(str, path)): (variable.get_metadata()["out_sharding"], variable.get_value().shape)
            for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("rules, expected", [("t5x", T5X), ("fsdp", FSDP)])
def test_each_rule_set_places_the_parameters_as_documented(params, rules, expected):
    for name, spec in expected.items():
        assert spec_for(*params[name], MESH, rules) == spec, name


def test_a_dimension_the_mesh_axis_does_not_divide_stays_replicated():
    mesh = AbstractMesh((5, 3), ("data", "model"))  # FF 36 splits 3 ways; heads 4, vocab 64, DM 24 (5) do not
    assert spec_for(("embed", "mlp"), (24, 36), mesh, "fsdp") == P(None, "model")
    assert spec_for(("embed", "heads", "kv"), (24, 4, 5), mesh, "t5x") == P(None, None, None)
    assert spec_for(("vocab", "embed"), (64, 25), mesh, "fsdp") == P(None, "data")


def test_no_parameter_uses_a_mesh_axis_twice(params):
    for rules in ("t5x", "fsdp"):
        for name, (names, shape) in params.items():
            axes = [a for a in spec_for(names, shape, MESH, rules) if a is not None]
            assert len(axes) == len(set(axes)), (rules, name)


def test_a_mesh_that_does_not_fit_the_devices_says_how_many_it_needs():
    with pytest.raises(ValueError, match=r"Mesh \(data=3, model=2\) needs 6 devices, but there are 1"):
        make_mesh(MeshConfig(data=3, model=2))


def test_optimizer_statistics_are_placed_like_their_parameters():
    import jax
    from jax.sharding import NamedSharding

    from t5scale.train.optim import OptimConfig, make_optimizer
    from t5scale.train.partitioning import opt_state_shardings, param_shardings

    # DM 256 and FF 384 reach Adafactor's 128 so the MLP kernels' second moments are factored; attention kernels
    # [layers, embed, heads, kv] have a second dimension of 4 and keep a full-size one.
    cfg = tiny_config(d_model=256, d_ff=384, vocab_size=256)
    abstract_params = nnx.state(nnx.eval_shape(lambda: T5(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    tx = make_optimizer(OptimConfig())
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    shardings = opt_state_shardings(abstract_opt, abstract_params, param_shardings(abstract_params, MESH, "fsdp"))
    specs = {jax.tree_util.keystr(path): s.spec for path, s in jax.tree_util.tree_flatten_with_path(
        shardings, is_leaf=lambda x: isinstance(x, NamedSharding))[0]}
    wi = "['encoder']['layers']['mlp']['wi']['kernel'].value"  # [layers, embed, mlp] = P(None, data, model)
    query = "['encoder']['layers']['attention']['query']['kernel'].value"
    assert specs[f"[0].v_row{wi}"] == P(None, "data")  # [layers, embed]
    assert specs[f"[0].v_col{wi}"] == P(None, "model")  # [layers, mlp]
    assert specs[f"[0].v{query}"] == P(None, "data", "model", None)  # full size: the parameter's own
    assert specs["[0].count"] == P() and specs[f"[0].v{wi}"] == P()  # a scalar; a (1,) placeholder


@dataclasses.dataclass(frozen=True)
class FakeDevice:
    """What mesh_utils reads of a device: a non-TPU platform is laid out in the order given."""
    id: int
    slice_index: int
    process_index: int = 0
    platform: str = "cpu"
    device_kind: str = "fake"


def test_a_multi_slice_mesh_spans_slices_with_the_data_axis_only():
    devices = [FakeDevice(i, slice_index=i // 4) for i in range(8)]  # two slices of 4
    mesh = make_mesh(MeshConfig(data=4, model=2, dcn_data=2), devices[::-1])
    slices = [[d.slice_index for d in row] for row in mesh.devices]
    assert mesh.devices.shape == (4, 2) and slices == [[0, 0], [0, 0], [1, 1], [1, 1]]  # model within a slice
    assert make_mesh(MeshConfig(data=4, model=2), devices).devices.shape == (4, 2)


def test_slices_the_devices_do_not_have_or_the_data_axis_cannot_split_are_one_line_errors():
    with pytest.raises(ValueError, match="dcn_data=2: Number of slices 1"):
        make_mesh(MeshConfig(data=4, model=2, dcn_data=2), [FakeDevice(i, slice_index=0) for i in range(8)])
    with pytest.raises(ValueError, match="must be positive and divide data=3"):
        MeshConfig(data=3, dcn_data=2)
