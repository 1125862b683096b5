"""What every foreign-checkpoint import shares: one name-map rule type, the shape check, and the t5scale checkpoint
it writes (`DEST/config.json` + `DEST/checkpoint_<N>/state`, the trainer's format, so `t5scale finetune` warm-starts
from it unchanged)."""

from __future__ import annotations

import dataclasses
import json
from typing import Callable

import numpy as np
from etils import epath
from flax import nnx

from t5scale.config import ModelConfig
from t5scale.model.layout import load_flat_params
from t5scale.model.t5 import T5


@dataclasses.dataclass(frozen=True)
class Rule:
    """t5scale parameter `ours` comes from foreign array `theirs` of shape `shape`, through `to_ours`."""

    ours: str
    theirs: str
    shape: tuple[int, ...]
    to_ours: Callable[[np.ndarray], np.ndarray] = lambda w: w


def apply_rules(rules: list[Rule], read: Callable[[str], np.ndarray], available: set[str], source: str,
                cfg: ModelConfig) -> dict[str, np.ndarray]:
    """t5scale's flat params from the foreign arrays: every rule's array must exist with its shape."""
    params = {}
    for rule in rules:
        if rule.theirs not in available:
            raise ValueError(f"{source}: variable {rule.theirs!r} is missing, but shape {cfg.name!r} "
                             f"({describe(cfg)}) needs it; the checkpoint does not match its configuration.")
        array = read(rule.theirs)
        if tuple(array.shape) != rule.shape:
            raise ValueError(f"{source}: variable {rule.theirs!r} has shape {list(array.shape)}, shape "
                             f"{cfg.name!r} ({describe(cfg)}) expects {list(rule.shape)}; the checkpoint does not "
                             "match its configuration.")
        params[rule.ours] = rule.to_ours(np.asarray(array, np.float32))
    return params


def describe(cfg: ModelConfig) -> str:
    return " ".join(f"{k}{v}" for k, v in cfg.operators().items()) + f" vocab{cfg.vocab_size}"


def build_model(cfg: ModelConfig, params: dict[str, np.ndarray]) -> T5:
    model = nnx.eval_shape(lambda: T5(cfg, rngs=nnx.Rngs(params=0)))
    load_flat_params(model, params)
    return model


def write_checkpoint(model: T5, dest: str, step: int, converted_from: dict) -> epath.Path:
    """DEST/checkpoint_<step>/state ({"params": ...}) and DEST/config.json ({"model": ..., "converted_from": ...}).
    Returns the checkpoint path."""
    import jax
    import orbax.checkpoint as ocp

    root = epath.Path(dest)
    root = root if root.is_absolute() else epath.Path(str(root)).resolve()
    checkpoint = root / f"checkpoint_{step}"
    if checkpoint.exists():
        raise ValueError(f"{checkpoint} already exists; convert into a new --to directory.")
    root.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(checkpoint / "state", {"params": nnx.state(model, nnx.Param)})
    jax.effects_barrier()
    (root / "config.json").write_text(json.dumps({"model": model.cfg.to_dict(), "converted_from": converted_from},
                                                 indent=1) + "\n")
    return checkpoint
