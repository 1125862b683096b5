"""t5scale.train.plan: the exact bytes per device agree with the parameter count and the sharding rules.

One planning process (8 fake CPU devices) serves every test of the module: the tiny shape below on an 8-way fsdp
mesh, and on one device.
"""

import math

import numpy as np
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
def cpu_plans():
    """Every CPU plan of this module, in one subprocess (one start-up, one import of JAX on 8 fake devices)."""
    return plan_in_subprocess([PlanRequest(CFG, MeshConfig(data=8, rules="fsdp"), BATCH, INPUTS, TARGETS),
                               PlanRequest(CFG, MeshConfig(data=1), BATCH, INPUTS, TARGETS),
                               PlanRequest(FCFG, MeshConfig(data=2, model=2, rules="t5x"), BATCH, INPUTS, TARGETS),
                               PlanRequest(FCFG, MeshConfig(data=1), BATCH, INPUTS, TARGETS)])


@pytest.fixture(scope="module")
def plans(cpu_plans):
    fsdp, single, _, _ = cpu_plans
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


# --- exact bytes re-derived by hand: the T5 v1.0 parameters with their logical axes, the rules as the docs state
# them (t5x: vocab, heads, mlp over model; fsdp: also embed over data), an axis split only when it divides, and
# optax's Adafactor factoring (a parameter's two largest dims, both >= 128: a row and a column statistic) ---------

# DM 128 and FF 256 make Adafactor factor the MLP kernels and the embedding; heads and vocab split two ways.
FCFG = tiny_config(num_encoder_layers=1, num_decoder_layers=2, d_model=128, d_kv=16, num_heads=4, d_ff=256,
                   vocab_size=256)
RULES = {"t5x": {"vocab": "model", "heads": "model", "mlp": "model", "joined_kv": "model"}}
RULES["fsdp"] = {**RULES["t5x"], "embed": "data"}


def t5_params(cfg) -> list[tuple[tuple[int, ...], tuple[str, ...]]]:
    d, h, k, f = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff

    def attention(n):
        return [((n, d, h, k), ("layers", "embed", "heads", "kv"))] * 3 + [((n, h, k, d), ("layers", "heads", "kv",
                                                                                           "embed"))]

    def stack(n, attentions, norms):
        return (attention(n) * attentions + [((n, d, f), ("layers", "embed", "mlp")),
                                             ((n, f, d), ("layers", "mlp", "embed"))]
                + [((n, d), ("layers", "embed"))] * norms + [((d,), ("embed",)),
                                                             ((h, cfg.relative_buckets), ("heads", "relpos_buckets"))])

    return ([((cfg.vocab_size, d), ("vocab", "embed"))] + stack(cfg.num_encoder_layers, 1, 2)
            + stack(cfg.num_decoder_layers, 2, 3))


def held(shape, axes, rules, mesh) -> int:
    """Elements of an array one device holds."""
    n, used = math.prod(shape), set()
    for size, name in zip(shape, axes):
        axis = RULES[rules].get(name)
        if axis and axis not in used and size % mesh[axis] == 0:
            n, used = n // mesh[axis], used | {axis}
    return n


def adafactor_statistics(shape, axes):
    """optax.adafactor(min_dim_size_to_factor=128)'s second-moment arrays of one parameter, placeholders included."""
    one = ((1,), (None,))
    if len(shape) < 2 or sorted(shape)[-2] < 128:
        return [(shape, axes), one, one]
    *_, second, largest = np.argsort(shape, kind="stable")

    def without(i):
        return tuple(s for j, s in enumerate(shape) if j != i), tuple(a for j, a in enumerate(axes) if j != i)

    return [without(largest), without(second), one]


def expected_bytes(cfg, rules, mesh, single_opt_state):
    params = t5_params(cfg)
    statistics = [s for shape, axes in params for s in adafactor_statistics(shape, axes)]
    # Scalars (step counts) are what the one-device state holds besides the statistics: replicated everywhere.
    scalars = single_opt_state - 4 * sum(math.prod(shape) for shape, _ in statistics)
    return (4 * sum(held(shape, axes, rules, mesh) for shape, axes in params),
            4 * sum(held(shape, axes, rules, mesh) for shape, axes in statistics) + scalars)


def test_the_hand_written_parameters_are_the_models():
    assert sum(math.prod(shape) for shape, _ in t5_params(FCFG)) == count_params(FCFG).total
    assert sum(math.prod(shape) for shape, _ in t5_params(CFG)) == count_params(CFG).total


@pytest.fixture(scope="module")
def factored_plans(cpu_plans):
    _, _, model_axis, single = cpu_plans
    return model_axis, single


def test_exact_bytes_on_the_model_axis_under_t5x_rules(factored_plans):
    model_axis, single = factored_plans
    params, opt_state = expected_bytes(FCFG, "t5x", {"data": 2, "model": 2}, single["bytes_per_device"]["opt_state"])
    assert model_axis["bytes_per_device"]["params"] == params
    assert model_axis["bytes_per_device"]["opt_state"] == opt_state
    assert model_axis["bytes_per_device"]["batch"] == BATCH * (3 * INPUTS + 5 * TARGETS) * 4 // 2


# --- libtpu's compiler, for TPU slices (marker `tpu`, in `make test-slow`: each compile takes tens of seconds) ---

def _tpu_plans(requests):
    from t5scale.train.plan import libtpu_missing

    if libtpu_missing() and "x86-64 Linux only" in libtpu_missing():
        pytest.skip(libtpu_missing())
    assert libtpu_missing() is None, "make test installs libtpu (the [test] extra) on x86-64 Linux"
    return plan_in_subprocess(requests)


@pytest.fixture(scope="module")
def tpu_plans():
    cases = [("v4-8", "t5x", 2), ("v4-8", "fsdp", 1), ("v5litepod-4", "t5x", 2), ("v5litepod-4", "fsdp", 1)]
    plans = _tpu_plans([PlanRequest(FCFG, MeshConfig(model=model, rules=rules), BATCH, INPUTS, TARGETS,
                                    topology=topology) for topology, rules, model in cases])
    return dict(zip(cases, plans))


@pytest.mark.slow
@pytest.mark.tpu
def test_tpu_slices_hold_the_exact_bytes_the_rules_say(tpu_plans, factored_plans):
    single_opt_state = factored_plans[1]["bytes_per_device"]["opt_state"]
    for (topology, rules, model), plan in tpu_plans.items():
        assert plan["compiler"] == "tpu" and plan["devices"] == 4, (topology, plan)
        mesh = {"data": 4 // model, "model": model}
        params, opt_state = expected_bytes(FCFG, rules, mesh, single_opt_state)
        assert (plan["bytes_per_device"]["params"], plan["bytes_per_device"]["opt_state"]) == (params, opt_state), \
            (topology, rules)
        # libtpu lays arrays out in tiles: what it takes as arguments is at least the state and batch we counted.
        assert plan["xla_memory_analysis"]["argument"] >= params + opt_state
        assert plan["slice"]["hosts"] == 1 and plan["slice"]["chips"] == 4


@pytest.mark.slow
@pytest.mark.tpu
def test_a_multi_slice_topology_compiles_the_step_with_the_data_axis_over_dcn():
    [plan] = _tpu_plans([PlanRequest(CFG, MeshConfig(), BATCH * 2, INPUTS, TARGETS, topology="v5litepod-4",
                                     num_slices=2)])
    assert plan["mesh"] == {"data": 8, "model": 1, "rules": "t5x", "dcn_data": 2}
    assert plan["slice"]["hosts"] == 2 and plan["slice"]["chips"] == 8
    assert plan["collectives"]["all-reduce"]["count"] > 0  # the gradients, summed over all 8 data shards


@pytest.mark.slow
@pytest.mark.tpu
def test_decoding_plans_on_a_slice():
    greedy, beam = _tpu_plans([PlanRequest(CFG, MeshConfig(), 8, INPUTS, TARGETS, topology="v5litepod-4",
                                           mode="decode", beam_size=beam) for beam in (1, 4)])
    assert greedy["bytes_per_device"]["opt_state"] == 0 == beam["bytes_per_device"]["opt_state"]
    assert greedy["bytes_per_device"]["params"] == count_params(CFG).total * 4  # t5x rules, model=1: replicated
    # Four beams keep four self-attention caches: the beam search's temporaries are the larger.
    assert beam["bytes_per_device"]["temporaries_estimate"] > greedy["bytes_per_device"]["temporaries_estimate"]
