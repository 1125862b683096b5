"""Gradual magnitude pruning while training (Zhu & Gupta 2017): the cubic schedule, the masks, applying them.

    train_config.pruning = @pruning_config()        # gin; or TrainConfig(..., pruning=PruningConfig(0.5, ...))
    pruning_config.final_sparsity = 0.5
    pruning_config.end_step = 2000

Sparsity at step t is s(t) = s_f * (1 - (1 - p)^3), p = clip((t - t0) / (t1 - t0), 0, 1). At t0, t0 + N, ... up to
t1 (and at t1), the masks are recomputed from the weights' magnitudes: exactly round(s(t) * size) zeros per matrix
(each layer of a scanned stack on its own) or across all pruned matrices (`scope="global"`). Between those steps
the masks are applied after every optimizer update, so a pruned weight stays exactly zero. The masks are part of
the run's state: the checkpoint holds them as their own item (`masks`), and a resumed run continues with them.

Which weights: the matmul kernels of the chosen groups (`t5scale.model.kernels`: attention, mlp, embedding); norm
scales and relative-bias tables are never pruned. The counts match `t5scale.compress.prune`'s one-shot masks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from t5scale.model.kernels import GROUPS, check_groups, kernel_spec
from t5scale.model.layout import LAYERS_KEY, key_names

SCOPES = ("matrix", "global")


def check_sparsity(sparsity: float) -> float:
    if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) or not 0 <= sparsity < 1:
        raise ValueError(f"Sparsity {sparsity!r} is outside [0, 1): it is the fraction of weights set to zero.")
    return float(sparsity)


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ValueError(f"Unknown pruning scope {scope!r}; choose among {', '.join(SCOPES)}.")
    return scope


@dataclasses.dataclass(frozen=True)
class PruningConfig:
    final_sparsity: float  # s_f, reached at end_step
    begin_step: int = 0  # t0: the first mask update (sparsity 0 there; the cubic rises from it)
    end_step: int = 1000  # t1: sparsity final from here on, masks fixed
    update_every: int = 100  # N: steps between mask updates
    scope: str = "matrix"  # or "global": one threshold across all pruned matrices
    groups: tuple[str, ...] = GROUPS

    def __post_init__(self):
        check_sparsity(self.final_sparsity)
        check_scope(self.scope)
        object.__setattr__(self, "groups", check_groups(tuple(self.groups)))
        if not 0 <= self.begin_step < self.end_step or self.update_every < 1:
            raise ValueError(f"PruningConfig needs 0 <= begin_step < end_step and update_every >= 1; got "
                             f"begin_step={self.begin_step}, end_step={self.end_step}, "
                             f"update_every={self.update_every}.")

    def sparsity_at(self, step: int) -> float:
        progress = min(max((step - self.begin_step) / (self.end_step - self.begin_step), 0.0), 1.0)
        return self.final_sparsity * (1.0 - (1.0 - progress) ** 3)

    def updates_masks_at(self, step: int) -> bool:
        return self.begin_step <= step <= self.end_step and (
            (step - self.begin_step) % self.update_every == 0 or step == self.end_step)


def _is_stacked(names: tuple[str, ...]) -> bool:
    """A scanned stack's array: `.../layers/<module>...` with the layer axis first (unrolled ones have an index)."""
    return LAYERS_KEY in names and not names[names.index(LAYERS_KEY) + 1].isdigit()


def _strip_value(names: tuple[str, ...]) -> tuple[str, ...]:
    """An nnx.State's arrays sit under a trailing `value` attribute: drop it, leaving the parameter's path."""
    return names[:-1] if names and names[-1] == "value" else names


def _leaves(tree: Any):
    """(parameter path, leaf) for every array of an nnx.State."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        yield _strip_value(key_names(path)), leaf


def initial_masks(params: Any, cfg: PruningConfig) -> Any:
    """All-ones masks, in the params' tree, for the pruned parameters; other leaves get a shape-() True (a
    placeholder the checkpoint stores in a few bytes, so the masks keep the params' tree and layout)."""
    def ones(path, leaf):
        spec = kernel_spec("/".join(_strip_value(key_names(path))))
        return jnp.ones(leaf.shape if spec is not None and spec.group in cfg.groups else (), jnp.bool_)

    return jax.tree_util.tree_map_with_path(ones, params)


def _keep_largest(magnitudes: jax.Array, sparsity: jax.Array) -> jax.Array:
    """bool mask over flat `magnitudes`: False on the round(sparsity * size) smallest (ties: earlier position)."""
    count = jnp.round(sparsity * magnitudes.size).astype(jnp.int32)
    order = jnp.argsort(magnitudes, stable=True)
    return jnp.zeros(magnitudes.shape, jnp.bool_).at[order].set(jnp.arange(magnitudes.size) >= count)


def update_masks(params: Any, masks: Any, sparsity: jax.Array, scope: str) -> Any:
    """New masks at `sparsity` from the magnitudes of `params` (jit-able; sparsity may be traced).

    Per matrix: each pruned kernel, and each layer of a stacked [L, ...] kernel, keeps its own largest weights.
    Global: one ranking over every pruned weight of every layer."""
    weights = dict(_leaves(params))
    pruned = [names for names, mask in _leaves(masks) if mask.ndim > 0]
    new = {}
    if scope == "global":
        flat = jnp.concatenate([jnp.abs(weights[n]).reshape(-1).astype(jnp.float32) for n in pruned])
        kept = _keep_largest(flat, sparsity)
        offset = 0
        for n in pruned:
            size = weights[n].size
            new[n] = kept[offset:offset + size].reshape(weights[n].shape)
            offset += size
    else:
        for n in pruned:
            magnitudes = jnp.abs(weights[n]).astype(jnp.float32)
            if _is_stacked(n):
                new[n] = jax.vmap(lambda w: _keep_largest(w.reshape(-1), sparsity).reshape(w.shape))(magnitudes)
            else:
                new[n] = _keep_largest(magnitudes.reshape(-1), sparsity).reshape(magnitudes.shape)
    return jax.tree_util.tree_map_with_path(
        lambda path, mask: new.get(_strip_value(key_names(path)), mask), masks)


def apply_masks(params: Any, masks: Any) -> Any:
    """Pruned weights set to zero; parameters under a shape-() placeholder are passed through untouched (no work in
    the train step for the embedding, norms and the rest)."""
    return jax.tree.map(lambda w, m: jnp.where(m, w, jnp.zeros((), w.dtype)) if m.ndim else w, params, masks)


def measured_sparsity(params: Any, masks: Any) -> float:
    """The fraction of the pruned parameters that are zero (for logs and tests)."""
    zeros = total = 0
    for w, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks)):
        if m.ndim:
            zeros += int(jnp.sum(w == 0))
            total += w.size
    return zeros / max(total, 1)
