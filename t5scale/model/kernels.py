"""Which parameters compression and pruning touch (the matmul kernels), the group each belongs to, and the axes
each contracts: the one table (t5scale.compress and the trainer's gradual pruning both read it).

Names are the flat, layout-independent ones of `t5scale.model.layout` (`decoder/layers/2/mlp/wo/kernel`): a scanned
stack is split into its layers before anything is compressed, so every scale and every per-matrix pruning threshold
belongs to one layer, never to a stack.

The contracted (input) axes differ between kernels: `embed` is the input of `query`/`wi` but the output of
`out`/`wo` (t5scale/model/layers.py), and the token embedding [V, D] is contracted over D when it serves as the tied
output layer, so a per-output-channel scale is one per vocabulary row there. RMSNorm scales and the relative-bias
tables are never compressed: they are tiny, and quantizing them hurts every token.
"""

from __future__ import annotations

import dataclasses

ATTENTION, MLP, EMBEDDING = "attention", "mlp", "embedding"
GROUPS = (ATTENTION, MLP, EMBEDDING)


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    group: str
    contracting_axes: tuple[int, ...]  # summed over in the matmul; a per-channel scale reduces over these


# The last module name of a parameter's path (its parent for `.../kernel`) -> what it is.
_TABLE = {
    "query": KernelSpec(ATTENTION, (0,)),  # [D, NH, KV]
    "key": KernelSpec(ATTENTION, (0,)),
    "value": KernelSpec(ATTENTION, (0,)),
    "out": KernelSpec(ATTENTION, (0, 1)),  # [NH, KV, D]
    "wi": KernelSpec(MLP, (0,)),  # [D, FF]
    "wi_0": KernelSpec(MLP, (0,)),
    "wi_1": KernelSpec(MLP, (0,)),
    "wo": KernelSpec(MLP, (0,)),  # [FF, D]
    "logits_dense": KernelSpec(EMBEDDING, (0,)),  # [D, V], the untied output layer (v1.1)
    "token_embedder": KernelSpec(EMBEDDING, (1,)),  # [V, D]
}


def kernel_spec(name: str) -> KernelSpec | None:
    """The spec of a flat parameter name, or None for what stays float (norm scales, relative-bias tables)."""
    parts = name.split("/")
    if parts[-1] not in ("kernel", "embedding"):
        return None
    return _TABLE.get(parts[-2])


def check_groups(groups) -> tuple[str, ...]:
    """`groups` in the table's order; an unknown one is a ValueError listing the valid ones."""
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"Unknown parameter group {unknown[0]!r}; choose among {', '.join(GROUPS)}.")
    if not groups:
        raise ValueError(f"Name at least one parameter group to compress ({', '.join(GROUPS)}).")
    return tuple(g for g in GROUPS if g in groups)
