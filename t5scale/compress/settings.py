"""One compression setting (bits x sparsity x groups, and how), parsed from `bits=4,sparsity=0.5,groups=mlp`.

Keys: bits (8, 6, 4, 2, or float: no quantization), sparsity in [0, 1), groups (`+`-joined among attention, mlp,
embedding; default all three), granularity (channel, tensor, group), group_size (with granularity=group), prune
(matrix or global). Parameters outside the groups, norm scales and relative-bias tables stay float32.
"""

from __future__ import annotations

import dataclasses

from t5scale.compress.quantize import BITS, GRANULARITIES
from t5scale.model.kernels import GROUPS, check_groups
from t5scale.train.pruning import check_scope, check_sparsity

FLOAT = "float"


@dataclasses.dataclass(frozen=True)
class Setting:
    bits: int | None = 8  # None: weights stay float32 (pruning only, or the baseline)
    sparsity: float = 0.0
    groups: tuple[str, ...] = GROUPS
    granularity: str = "channel"
    group_size: int | None = None
    prune: str = "matrix"

    def __post_init__(self):
        if self.bits is not None and self.bits not in BITS:
            raise ValueError(f"Unsupported bit width {self.bits!r}; choose among {', '.join(map(str, BITS))} or "
                             f"{FLOAT} (no quantization).")
        check_sparsity(self.sparsity)
        object.__setattr__(self, "groups", check_groups(self.groups))
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"Unknown granularity {self.granularity!r}; choose among {', '.join(GRANULARITIES)}.")
        if (self.granularity == "group") != (self.group_size is not None):
            raise ValueError("group_size goes with granularity=group, and granularity=group needs a group_size.")
        check_scope(self.prune)

    @property
    def name(self) -> str:
        """A folder name saying what differs from the defaults: int8, int4-sparse0.5, float32, int8-attention+mlp."""
        parts = [FLOAT + "32" if self.bits is None else f"int{self.bits}"]
        if self.sparsity:
            parts.append(f"sparse{self.sparsity:g}" + ("-global" if self.prune == "global" else ""))
        if self.groups != GROUPS:
            parts.append("+".join(self.groups))
        if self.granularity == "tensor":
            parts.append("per-tensor")
        elif self.granularity == "group":
            parts.append(f"group{self.group_size}")
        return "-".join(parts)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "groups": list(self.groups)}

    @classmethod
    def from_dict(cls, values: dict) -> Setting:
        return cls(**{**values, "groups": tuple(values["groups"])})


BASELINE = Setting(bits=None)


def parse_setting(spec: str) -> Setting:
    """`bits=4,sparsity=0.5,groups=attention+mlp` -> Setting; a bad key or value is a one-line ValueError."""
    fields = {}
    for item in filter(None, spec.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"Setting {spec!r}: write key=value pairs joined by commas, e.g. bits=4,sparsity=0.5.")
        if key in fields:
            raise ValueError(f"Setting {spec!r} sets {key} twice.")
        fields[key] = _parse_value(spec, key, value.strip())
    return Setting(**fields)


def _parse_value(spec: str, key: str, value: str):
    try:
        if key == "bits":
            return None if value == FLOAT else int(value)
        if key == "sparsity":
            return float(value)
        if key == "group_size":
            return int(value)
    except ValueError:
        raise ValueError(f"Setting {spec!r}: {key}={value!r} is not a number.") from None
    if key == "groups":
        return tuple(value.split("+"))
    if key in ("granularity", "prune"):
        return value
    raise ValueError(f"Setting {spec!r}: unknown key {key!r}; the keys are bits, sparsity, groups, granularity, "
                     "group_size, prune.")
