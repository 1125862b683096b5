"""Logical axis names (t5x's vocabulary) and the one table that maps them onto mesh axes.

Every parameter of the model carries a tuple of these names as its `out_sharding` metadata; the trainer turns
them into `PartitionSpec`s with `logical_axis_rules`.
"""

from __future__ import annotations

BATCH = "batch"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"
JOINED_KV = "joined_kv"
VOCAB = "vocab"
LENGTH = "length"
RELPOS_BUCKETS = "relpos_buckets"
LAYERS = "layers"
LOGICAL_AXES = (BATCH, EMBED, MLP, HEADS, KV, JOINED_KV, VOCAB, LENGTH, RELPOS_BUCKETS, LAYERS)

DATA_AXIS = "data"
MODEL_AXIS = "model"
RULE_SETS = ("t5x", "fsdp")


def logical_axis_rules(rule_set: str = "t5x") -> tuple[tuple[str, str | None], ...]:
    """Logical name -> mesh axis (None: replicated).

    "t5x": t5x's `standard_logical_axis_rules` -- batch over data, the wide model dims over model.
    "fsdp": the same plus `embed` over data, so parameters and optimizer state are also split across the
    data-parallel replicas (ZeRO-3 style).
    """
    if rule_set not in RULE_SETS:
        raise ValueError(f"Unknown logical axis rule set {rule_set!r}; choose one of {RULE_SETS}.")
    rules = {
        BATCH: DATA_AXIS,
        VOCAB: MODEL_AXIS,
        MLP: MODEL_AXIS,
        HEADS: MODEL_AXIS,
        JOINED_KV: MODEL_AXIS,
        EMBED: DATA_AXIS if rule_set == "fsdp" else None,
        KV: None,
        LENGTH: None,
        RELPOS_BUCKETS: None,
        LAYERS: None,
    }
    return tuple(rules.items())


def constrain_batch(x):
    """An activation [batch, ...] split over the data axis along batch, its other axes whole: inside a function
    traced under `jax.set_mesh(mesh)` whose mesh has a data axis; anywhere else (one device, decoding) unchanged.

    Why: under fsdp the embedding table is split over data along embed, and its lookup's output inherits that
    split. Left alone, XLA keeps every activation split along embed with the batch replicated, so that each device
    computes the whole batch (`t5scale plan xl-nl32 --rules fsdp` on 256 devices: 3 TiB of temporaries each).
    """
    import jax
    from jax.sharding import PartitionSpec

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or DATA_AXIS not in mesh.axis_names:
        return x
    return jax.lax.with_sharding_constraint(x, PartitionSpec(DATA_AXIS))
