"""t5scale.train.plan: the exact bytes per device agree with the parameter count and the sharding rules.

One planning process (8 fake CPU devices) serves every test of the module: the tiny shape below on an 8-way fsdp
mesh, and on one device.
"""

import pytest

from t5scale.model.flops import count_params
from t5scale.train import collectives
from t5scale.train.partitioning import MeshConfig
from t5scale.train.plan import GIB, Hbm, PlanRequest, fits, parse_hbm, plan_in_subprocess
from tests.testing import tiny_config

# Every dimension an 8-way data axis could split divides by 8 (DM 32); the relative-bias tables [heads, buckets]
# have no `embed` axis, so fsdp leaves them replicated.
CFG = tiny_config(num_encoder_layers=1, num_decoder_layers=2, d_model=32, d_kv=8, num_heads=4, d_ff=48,
                  vocab_size=128)
BATCH, INPUTS, TARGETS = 8, 16, 8
RELPOS = 2 * CFG.num_heads * CFG.relative_buckets  # one table per stack


@pytest.fixture(scope="module")
def plans():
    fsdp, single = plan_in_subprocess([PlanRequest(CFG, MeshConfig(data=8, rules="fsdp"), BATCH, INPUTS, TARGETS),
                                       PlanRequest(CFG, MeshConfig(data=1), BATCH, INPUTS, TARGETS)])
    return {"fsdp": fsdp, "single": single}


def test_fsdp_splits_every_parameter_with_an_embed_axis_eight_ways(plans):
    params = count_params(CFG).total
    assert plans["fsdp"]["params"] == params
    assert plans["fsdp"]["bytes_per_device"]["params"] == (params - RELPOS) * 4 // 8 + RELPOS * 4


def test_one_device_holds_everything_and_moves_nothing(plans):
    single = plans["single"]["bytes_per_device"]
    assert single["params"] == count_params(CFG).total * 4
    assert single["batch"] == BATCH * (3 * INPUTS + 5 * TARGETS) * 4  # 8 int32 features, packed
    assert all(t["count"] == 0 and t["sent_bytes"] == 0 for t in plans["single"]["collectives"].values())


def test_the_batch_splits_over_data_and_fsdp_gathers_parameters(plans):
    fsdp, single = plans["fsdp"], plans["single"]
    assert fsdp["bytes_per_device"]["batch"] * 8 == single["bytes_per_device"]["batch"]
    # Adafactor's statistics follow their parameters (all full-size at DM 32), less the replicated bias tables.
    assert fsdp["bytes_per_device"]["opt_state"] < single["bytes_per_device"]["opt_state"] / 4
    assert fsdp["collectives"]["all-gather"]["sent_bytes"] > 0
    # Donated state comes back in place: what XLA takes as arguments is the state and the batch we counted.
    exact = sum(single["bytes_per_device"][k] for k in ("params", "opt_state", "batch"))
    assert single["xla_memory_analysis"]["argument"] <= exact


def test_fits_compares_the_total_estimate_with_the_memory_per_device(plans):
    total = plans["fsdp"]["bytes_per_device"]["total_estimate"]
    assert total > sum(plans["fsdp"]["bytes_per_device"][k] for k in ("params", "opt_state", "batch"))
    assert fits(plans["fsdp"], Hbm(total, "exactly")) and not fits(plans["fsdp"], Hbm(total - 1, "a byte short"))


@pytest.mark.parametrize("text, hbm_bytes, devices", [
    ("16GiB", 16 * GIB, None), ("512MB", 512 * 10**6, None), ("v3", 16 * GIB, None),
    ("v3-256", 16 * GIB, 256),  # v3 slices count TensorCores, and JAX sees each core
    ("v4-128", 32 * GIB, 64),  # v4 slices count cores too, but JAX sees a chip (two cores)
    ("v5litepod-16", 16 * GIB, 16), ("v5e-8", 16 * GIB, 8), ("h100", 81559 * 2**20, None)])
def test_hbm_sizes_chips_and_slices(text, hbm_bytes, devices):
    hbm = parse_hbm(text)
    assert (hbm.bytes, hbm.devices) == (hbm_bytes, devices)


@pytest.mark.parametrize("text", ["v9", "16 parsecs", "v3-x"])
def test_an_unknown_hbm_says_what_it_takes(text):
    with pytest.raises(ValueError, match="give a size"):
        parse_hbm(text)


def test_a_batch_the_data_axis_does_not_split_is_refused():
    with pytest.raises(ValueError, match="does not split"):
        PlanRequest(CFG, MeshConfig(data=8), 12)


HLO = """
%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %ag = f32[64,4]{1,0} all-gather(%x), channel_id=1, replica_groups=[2,4]<=[8], dimensions={0}
  ROOT %t = (s32[], f32[8]) tuple(%i, %y)
}

ENTRY %main (a: f32[16]) -> f32[16] {
  %w = (s32[], f32[8]) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %ar = f32[16]{0} all-reduce(%a), channel_id=2, replica_groups={{0,1},{2,3},{4,5},{6,7}}, to_apply=%add
  %rs = f32[2]{0} reduce-scatter(%a), channel_id=3, replica_groups=mesh['axis_0'=8] {'axis_0'}, dimensions={0}
}
"""


def test_collectives_in_a_loop_count_once_per_iteration():
    traffic = collectives.collective_traffic(HLO, 8)
    gather, reduce, scatter = traffic["all-gather"], traffic["all-reduce"], traffic["reduce-scatter"]
    assert (gather.count, gather.buffer_bytes, gather.sent_bytes) == (3, 3 * 1024, 3 * 1024 * 3 / 4)
    assert (reduce.count, reduce.buffer_bytes, reduce.sent_bytes) == (1, 64, 2 * 64 / 2)
    assert (scatter.count, scatter.buffer_bytes, scatter.sent_bytes) == (1, 64, 64 * 7 / 8)
