"""Model configuration: the T5 shape, its scaling operators, and every named shape.

Shapes are named the way *Scale Efficiently* (Tay et al., 2021) names them: a base size followed by scaling
operators, applied left to right -- `small-el16` is `small` with 16 encoder layers, `large-nh8-nl32` is `large`
with 8 heads and 32 layers in each stack. The operators are

    EL / DL   encoder / decoder layers (NL sets both)
    DM        d_model
    KV        d_kv, the size of one attention head (attention inner dim = NH * KV, need not equal DM)
    NH        number of heads
    FF        d_ff, the MLP hidden size
    sh / skv  variants, as Mesh TF built the released checkpoints (docs/convert.md gives the sources):
              sh  the encoder reuses the decoder's parameters (t5's models/bi_v1_shared.gin), skv one projection
              serves as key and value (Mesh TF's `SelfAttention.shared_kv`); shkv is both

The T5 v1.0 sizes (`tiny` ... `xxl`, the architecture of every released Scale Efficiently checkpoint: ReLU MLP,
embedding tied to the output layer) take no prefix; the T5 v1.1 sizes of t5x (gated-GELU, untied output layer)
take the prefix `v1_1-` (`v1_1-base`, `v1_1-small-nl16`).
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import enum
import functools
import re
from importlib import resources
from typing import Any

import jax.numpy as jnp

T5_VOCAB_SIZE = 32128  # 32000 sentencepiece pieces + 100 sentinels, padded to a multiple of 128.
V1_1_PREFIX = "v1_1-"


class Activation(enum.Enum):
    RELU = "relu"  # T5 v1.0: wi -> relu -> wo
    GATED_GELU = "gated-gelu"  # T5 v1.1: gelu(wi_0) * wi_1 -> wo


class Remat(enum.Enum):
    """What each layer keeps for the backward pass (`jax.checkpoint` policy)."""

    NONE = "none"  # keep everything: fastest, most memory
    FULL = "full"  # keep only layer inputs: recompute the whole layer
    DOTS = "dots"  # keep matmul outputs without a batch dim, recompute the rest


# Operator name (as in shape names, upper-cased) -> ModelConfig field. NL is EL and DL at once.
OPERATORS = {
    "EL": "num_encoder_layers",
    "DL": "num_decoder_layers",
    "DM": "d_model",
    "KV": "d_kv",
    "NH": "num_heads",
    "FF": "d_ff",
}
_NL = ("num_encoder_layers", "num_decoder_layers")
_VARIANTS = {"sh": {"shared_heads": True}, "skv": {"tied_kv": True}, "shkv": {"shared_heads": True, "tied_kv": True}}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a T5 encoder-decoder. Frozen: derive new ones with `replace`."""

    num_encoder_layers: int = 6  # EL
    num_decoder_layers: int = 6  # DL
    d_model: int = 512  # DM
    d_kv: int = 64  # KV
    num_heads: int = 8  # NH
    d_ff: int = 2048  # FF
    vocab_size: int = T5_VOCAB_SIZE
    activation: Activation = Activation.RELU
    tie_embeddings: bool = True  # v1.0: output layer = embedding^T, logits scaled by DM^-0.5
    # `sh` variant: the encoder has no parameters of its own and runs the decoder's (self-attention, MLP, norms,
    # relative-bias table). The field keeps the name "sh" was first read as ("shared heads").
    shared_heads: bool = False
    tied_kv: bool = False  # `skv` variant: one projection serves as both key and value
    relative_buckets: int = 32
    relative_max_distance: int = 128
    dropout_rate: float = 0.0
    layer_norm_eps: float = 1e-6
    dtype: Any = "float32"  # activations / matmul inputs
    param_dtype: Any = "float32"
    scan_layers: bool = True  # nnx.scan over the stack (fast compile) vs a Python loop
    # Layers per iteration of the scanned loop: the same stacked parameters and checkpoints, a longer loop body
    # (fewer loop steps, more for XLA to fuse and schedule across layers; compile time grows with it).
    scan_unroll: int = 1
    remat: Remat = Remat.NONE
    name: str | None = None

    def __post_init__(self):
        set_ = functools.partial(object.__setattr__, self)
        set_("activation", _enum(Activation, self.activation, "activation"))
        set_("remat", _enum(Remat, self.remat, "remat"))
        for field in ("dtype", "param_dtype"):
            value = getattr(self, field)
            try:
                set_(field, jnp.dtype(value))
            except TypeError:
                message = f"ModelConfig.{field}={value!r} is not a dtype; use 'float32' or 'bfloat16'."
                raise ValueError(message) from None
        for field in (*OPERATORS.values(), "vocab_size", "relative_buckets", "relative_max_distance", "scan_unroll"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelConfig.{field} must be a positive integer, got {value!r}.")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"ModelConfig.dropout_rate must be in [0, 1), got {self.dropout_rate!r}.")

    # Short operator names, as in the paper.
    EL = property(lambda self: self.num_encoder_layers)
    DL = property(lambda self: self.num_decoder_layers)
    DM = property(lambda self: self.d_model)
    KV = property(lambda self: self.d_kv)
    NH = property(lambda self: self.num_heads)
    FF = property(lambda self: self.d_ff)

    @property
    def attention_dim(self) -> int:
        """Inner size of every attention block, NH * KV (need not equal DM)."""
        return self.num_heads * self.d_kv

    def require_buildable(self) -> None:
        """Raise if the shape is one t5scale resolves but cannot build."""
        if self.shared_heads and self.num_encoder_layers != self.num_decoder_layers:
            raise NotImplementedError(
                f"Shape {self.name or 'ModelConfig'!r} uses the 'sh' variant (the encoder runs the decoder's layers) "
                f"with EL={self.num_encoder_layers} != DL={self.num_decoder_layers}; t5scale builds 'sh' with EL == "
                "DL only (every released sh shape has them equal). Set NL instead of EL/DL."
            )

    @property
    def is_gated(self) -> bool:
        return self.activation is Activation.GATED_GELU

    def operators(self) -> dict[str, int]:
        return {op: getattr(self, field) for op, field in OPERATORS.items()}

    def replace(self, **changes) -> ModelConfig:
        """A copy with fields changed. Operator names (EL, DL, NL, DM, KV, NH, FF) work as field names."""
        return dataclasses.replace(self, **_expand_operators(changes))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: enums and dtypes as strings."""
        out = dataclasses.asdict(self)
        out.update(activation=self.activation.value, remat=self.remat.value,
                   dtype=self.dtype.name, param_dtype=self.param_dtype.name)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown ModelConfig fields {sorted(unknown)}; "
                             f"valid: {sorted(cls.__dataclass_fields__)}.")
        return cls(**values)

    @classmethod
    def from_name(cls, name: str, **overrides) -> ModelConfig:
        return shape(name, **overrides)


def _enum(kind: type[enum.Enum], value, field: str):
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"ModelConfig.{field}={value!r}; expected one of {[k.value for k in kind]}.") from None


def _expand_operators(changes: dict[str, Any]) -> dict[str, Any]:
    """Rename operator keys (EL, NL, ...) to field names; NL sets both layer counts."""
    out = {}
    for key, value in changes.items():
        upper = key.upper()
        fields = _NL if upper == "NL" else (OPERATORS[upper],) if upper in OPERATORS else (key,)
        for field in fields:
            if field in out:
                raise ValueError(f"{field} is set twice (by {key!r} and another key); set it once.")
            out[field] = value
    return out


# Base sizes: (EL, DL, DM, KV, NH, FF).
V1_0_SIZES = {
    "tiny": (4, 4, 256, 64, 4, 1024),
    "mini": (4, 4, 384, 64, 8, 1536),
    "small": (6, 6, 512, 64, 8, 2048),
    "base": (12, 12, 768, 64, 12, 3072),
    "large": (24, 24, 1024, 64, 16, 4096),
    "xl": (24, 24, 1024, 128, 32, 16384),
    "xxl": (24, 24, 1024, 128, 128, 65536),
}
V1_1_SIZES = {  # t5x's t5_1_1 gin files
    "small": (8, 8, 512, 64, 6, 1024),
    "base": (12, 12, 768, 64, 12, 2048),
    "large": (24, 24, 1024, 64, 16, 2816),
    "xl": (24, 24, 2048, 64, 32, 5120),
    "xxl": (24, 24, 4096, 64, 64, 10240),
}
_OPERATOR_RE = re.compile(r"(el|dl|nl|dm|kv|nh|ff)(\d+)")


@dataclasses.dataclass(frozen=True)
class ReleasedShape:
    """One row of the Scale Efficiently release table (`google/t5-efficient-<name>`)."""

    name: str
    operators: dict[str, int]
    params_m: float | None  # for sh/skv/shkv derived (see the table's header), not published
    variant: str
    release_folder: str


@functools.cache
def released_shapes() -> dict[str, ReleasedShape]:
    text = resources.files("t5scale").joinpath("released_shapes.tsv").read_text()
    rows = csv.DictReader((line for line in text.splitlines() if not line.startswith("#")), delimiter="\t")
    return {
        row["name"]: ReleasedShape(
            name=row["name"],
            operators={op: int(row[op]) for op in OPERATORS},
            params_m=float(row["params_m"]) if row["params_m"] else None,
            variant=row["variant"],
            release_folder=row["release_folder"],
        )
        for row in rows
    }


def known_names() -> list[str]:
    """Every released name plus the bare v1.0 and v1.1 sizes."""
    return sorted({*released_shapes(), *V1_0_SIZES, *(V1_1_PREFIX + s for s in V1_1_SIZES)})


def _unknown(name: str, reason: str) -> ValueError:
    close = difflib.get_close_matches(name, known_names(), n=3, cutoff=0.6)
    hint = f" Closest valid names: {', '.join(close)}." if close else ""
    return ValueError(
        f"Unknown shape {name!r}: {reason}. A shape is a size ({', '.join(V1_0_SIZES)}; or {V1_1_PREFIX}"
        f"{{{','.join(V1_1_SIZES)}}}) followed by operators -el/-dl/-nl/-dm/-kv/-nh/-ff<N> or -sh/-skv.{hint}"
    )


def shape(name: str, **overrides) -> ModelConfig:
    """The ModelConfig for a shape name, e.g. `shape("small-el16")` or `shape("base", NL=24, dropout_rate=0.1)`.

    Operators in the name are applied left to right; keyword overrides (operator or field names) come last.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"A shape name must be a non-empty string, got {name!r}.")
    lowered = name.strip().lower()
    v1_1 = lowered.startswith(V1_1_PREFIX)
    base, *ops = lowered.removeprefix(V1_1_PREFIX).split("-")
    sizes = V1_1_SIZES if v1_1 else V1_0_SIZES
    if base not in sizes:
        raise _unknown(name, f"{base!r} is not a base size")
    fields = dict(zip(OPERATORS.values(), sizes[base]))
    seen = set()
    for op in ops:
        match = _OPERATOR_RE.fullmatch(op)
        if op not in _VARIANTS and not match:
            raise _unknown(name, f"{op!r} is not an operator")
        kind = match[1] if match else op
        if kind in seen:
            raise _unknown(name, f"operator {kind!r} appears twice")
        seen.add(kind)
        fields.update(_expand_operators({match[1]: int(match[2])}) if match else _VARIANTS[op])
    if v1_1:
        fields.update(activation=Activation.GATED_GELU, tie_embeddings=False)
    suffix = "".join(f"-{k.lower()}{v}" for k, v in overrides.items() if k.upper() in (*OPERATORS, "NL"))
    fields.update(_expand_operators(overrides))
    fields.setdefault("name", lowered + suffix)
    return ModelConfig(**fields)
