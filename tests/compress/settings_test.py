"""Settings from the command line's key=value form, their folder names, and one clear line for every bad value."""

import pytest

from t5scale.compress.settings import Setting, parse_setting
from t5scale.model.kernels import GROUPS


def test_specs_parse_into_settings_with_readable_names():
    assert parse_setting("bits=8") == Setting(bits=8, groups=GROUPS)
    assert parse_setting("bits=8").name == "int8"
    assert parse_setting("bits=float").name == "float32"
    assert parse_setting("bits=4, sparsity=0.5, prune=global").name == "int4-sparse0.5-global"
    assert parse_setting("bits=8,groups=mlp+attention").groups == ("attention", "mlp")  # the table's order
    assert parse_setting("bits=8,groups=attention+mlp").name == "int8-attention+mlp"
    assert parse_setting("bits=2,granularity=tensor").name == "int2-per-tensor"
    assert parse_setting("bits=4,granularity=group,group_size=32").name == "int4-group32"


@pytest.mark.parametrize("spec, message", [
    ("bits=8,groups=attention+ffn", "Unknown parameter group 'ffn'; choose among attention, mlp, embedding."),
    ("bits=16", "Unsupported bit width 16; choose among 8, 6, 4, 2 or float (no quantization)."),
    ("bits=eight", "Setting 'bits=eight': bits='eight' is not a number."),
    ("bits=8,sparsity=1", "Sparsity 1.0 is outside [0, 1): it is the fraction of weights set to zero."),
    ("bits=8,sparsity=-0.5", "Sparsity -0.5 is outside [0, 1)"),
    ("bits=8,granularity=row", "Unknown granularity 'row'; choose among channel, tensor, group."),
    ("bits=8,granularity=group", "group_size goes with granularity=group"),
    ("bits=8,prune=row", "Unknown pruning scope 'row'; choose among matrix, global."),
    ("bits=8,scale=2", "unknown key 'scale'; the keys are bits, sparsity, groups"),
    ("bits=8,bits=4", "sets bits twice"),
    ("int8", "write key=value pairs joined by commas"),
])
def test_bad_settings_are_one_line_naming_the_culprit(spec, message):
    with pytest.raises(ValueError) as error:
        parse_setting(spec)
    assert message in str(error.value) and "\n" not in str(error.value)
