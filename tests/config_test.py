import csv
import dataclasses

import pytest

from t5scale import config
from t5scale.config import Activation, ModelConfig, shape
from t5scale.model.flops import count_params
from tests.testing import REPO

REFERENCE = REPO.parent / "shared" / "reference" / "t5_efficient_shapes.tsv"


def reference_rows():
    """The release table from shared/reference (the source of truth), else the packaged copy."""
    path = REFERENCE if REFERENCE.exists() else REPO / "t5scale" / "released_shapes.tsv"
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t"))


ROWS = reference_rows()


def test_reference_table_is_complete():
    assert len(ROWS) == 170
    assert set(config.released_shapes()) == {row["name"] for row in ROWS}


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row["name"])
def test_every_released_shape_resolves_with_its_operators_and_params(row):
    cfg = shape(row["name"])
    assert cfg.operators() == {op: int(row[op]) for op in config.OPERATORS}
    assert cfg.activation is Activation.RELU and cfg.tie_embeddings and cfg.vocab_size == 32128
    assert cfg.tied_kv == ("kv" in row["variant"])
    assert cfg.shared_heads == ("sh" in row["variant"])
    if row["params_m"]:
        params_m, table_m = count_params(cfg).total / 1e6, float(row["params_m"])
        # 0.1%, or the table's own rounding to 0.1M where that is coarser (tiny shapes).
        assert abs(params_m - table_m) <= max(1e-3 * table_m, 0.05)


def test_operators_compose_in_any_order_on_any_base():
    assert shape("base-el16-ff6000").operators() == shape("base-ff6000-el16").operators()
    assert shape("base-el16-ff6000").operators() == dict(EL=16, DL=12, DM=768, KV=64, NH=12, FF=6000)
    assert shape("tiny-nl2-dm128").operators() == dict(EL=2, DL=2, DM=128, KV=64, NH=4, FF=1024)
    assert shape("xl-kv32-nh8-dl3").operators() == dict(EL=24, DL=3, DM=1024, KV=32, NH=8, FF=16384)
    assert shape("small-nl4-el8").operators()["EL"] == 8  # left to right: NL, then EL


def test_keyword_overrides_match_operator_names():
    by_name, by_keyword = shape("small-el16"), shape("small", EL=16)
    assert by_keyword == by_name
    assert by_keyword.name == "small-el16"
    assert shape("base", NL=24) == shape("base-nl24")
    assert shape("small", dropout_rate=0.1).dropout_rate == 0.1


def test_v1_1_family_has_its_architecture_and_t5x_sizes():
    base = shape("v1_1-base")
    assert base.activation is Activation.GATED_GELU and not base.tie_embeddings
    # Hugging Face's google/t5-v1_1-small and -base parameter counts.
    assert count_params(shape("v1_1-small")).total == 76_961_152
    assert count_params(base).total == 247_577_856
    assert shape("v1_1-small-nl16").operators()["EL"] == 16


@pytest.mark.parametrize("name, culprit, suggestion", [
    ("smal-el16", "'smal' is not a base size", "small-el16"),
    ("small-xx16", "'xx16' is not an operator", None),
    ("base-el16-el8", "operator 'el' appears twice", None),
    ("small-el", "'el' is not an operator", "small-el2"),
    ("v1_1-tiny", "'tiny' is not a base size", None),
])
def test_bad_names_fail_with_one_line_naming_the_culprit(name, culprit, suggestion):
    with pytest.raises(ValueError) as error:
        shape(name)
    message = str(error.value)
    assert "\n" not in message
    assert repr(name) in message and culprit in message
    if suggestion:
        assert "Closest valid names" in message and suggestion in message


@pytest.mark.parametrize("fields, culprit", [
    (dict(d_model=0), "d_model must be a positive integer"),
    (dict(num_heads=2.5), "num_heads must be a positive integer"),
    (dict(dtype="float33"), "dtype='float33' is not a dtype"),
    (dict(activation="swish"), "activation='swish'; expected one of"),
    (dict(remat="most"), "remat='most'"),
    (dict(dropout_rate=1.0), "dropout_rate must be in [0, 1)"),
])
def test_invalid_fields_are_rejected(fields, culprit):
    with pytest.raises(ValueError, match=None) as error:
        ModelConfig(**fields)
    assert culprit in str(error.value)


def test_config_round_trips_through_a_json_dict():
    cfg = shape("v1_1-small-el4", dtype="bfloat16", remat="dots")
    values = cfg.to_dict()
    assert values["activation"] == "gated-gelu" and values["dtype"] == "bfloat16" and values["remat"] == "dots"
    assert ModelConfig.from_dict(values) == cfg
    with pytest.raises(ValueError, match="Unknown ModelConfig fields"):
        ModelConfig.from_dict({**values, "d_modle": 3})


def test_replace_accepts_operators_and_rejects_double_setting():
    cfg = shape("small").replace(NL=2, FF=100)
    assert (cfg.EL, cfg.DL, cfg.FF) == (2, 2, 100)
    with pytest.raises(ValueError, match="set twice"):
        shape("small").replace(NL=2, num_encoder_layers=3)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        shape("small").d_model = 3


def test_sh_variant_builds_with_equal_stacks_only():
    cfg = shape("base-sh")
    assert cfg.shared_heads
    assert count_params(cfg).encoder == 0  # the encoder runs the decoder's parameters
    with pytest.raises(NotImplementedError, match="'sh' variant .* EL=12 != DL=2"):
        count_params(shape("base-sh-dl2"))
