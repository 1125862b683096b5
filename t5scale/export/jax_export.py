"""A model's decoding as one fixed-shape function of (flat params, tokens), and its `jax.export`: versioned, serialized
StableHLO that `jax.export.deserialize(...).call(params, tokens)` runs without t5scale or flax.

The parameters are an argument of the program, not constants baked into it: the program stays a few tens of KB
whatever the model's size (constants would put all of `small`'s 242 MB inside it, and a serialized module cannot
pass 2 GB), the weights are one safetensors file beside it with its own sha256, and the TensorFlow SavedModel holds
the same arrays as variables. NNX's `State` cannot be an exported argument (its `Param` leaves are no pytree JAX
serializes), so the argument is a flat dict of arrays named by their path ("encoder/layers/mlp/wi/kernel"), turned
back into the model inside the function with `nnx.replace_by_pure_dict`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5scale.model import decoding

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """The fixed shapes and the decoding of an export."""
    batch: int
    input_length: int
    output_length: int
    beam_size: int = 1
    alpha: float = 0.6
    temperature: float = 0.0  # > 0: sampling (decoding.sample), seeded by an input of the program
    top_k: int = 0
    top_p: float = 1.0
    platforms: tuple[str, ...] = ("cpu", "cuda", "tpu")

    def __post_init__(self):
        for name in ("batch", "input_length", "output_length", "beam_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"export: {name} must be a positive integer, got {value!r}.")
        decoding.check_sampling(self.temperature, self.top_k, self.top_p)
        if self.temperature > 0 and self.beam_size > 1:
            raise ValueError("export: sample (temperature > 0) or beam search (beam_size > 1), not both.")
        unknown = [p for p in self.platforms if p not in PLATFORMS]
        if unknown or not self.platforms:
            raise ValueError(f"export: platforms must be some of {', '.join(PLATFORMS)}; "
                             f"{', '.join(unknown) + ' is not' if unknown else 'none given'}.")

    @property
    def method(self) -> str:
        return "beam" if self.beam_size > 1 else "sample" if self.temperature > 0 else "greedy"

    def decoding(self) -> dict:
        out = {"method": self.method}
        if self.method == "beam":
            out.update(beam_size=self.beam_size, alpha=self.alpha)
        if self.method == "sample":
            out.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return out


def flat_params(model: nnx.Module) -> tuple[dict[str, np.ndarray], Callable[[dict], nnx.Module]]:
    """The model's state as {path: array}, and a function that rebuilds the model from such a dict (of traced
    arrays, inside a jitted function)."""
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(state))
    names = ["/".join(str(key.key) for key in path) for path, _ in leaves]

    def rebuild(params: dict) -> nnx.Module:
        fresh = jax.tree.map(lambda x: x, state)  # replace_by_pure_dict writes in place: not into the model's own
        nnx.replace_by_pure_dict(fresh, jax.tree.unflatten(treedef, [params[name] for name in names]))
        return nnx.merge(graphdef, fresh)

    return {name: np.asarray(value) for name, (_, value) in zip(names, leaves)}, rebuild


def decode_function(model: nnx.Module, settings: DecodeSettings) -> tuple[Callable, dict[str, np.ndarray]]:
    """(fn, params): fn(params, tokens) -> {"tokens": int32 [batch, output_length]} for greedy decoding, with
    "scores" [batch] for beam search; fn(params, tokens, seed, row_ids) -> {"tokens", "log_likelihood"} for
    sampling (seed int32 [], row_ids int32 [batch]: as `decoding.sample`)."""
    params, rebuild = flat_params(model)
    length = settings.output_length

    def decode(params: dict, tokens: jax.Array, *sampling: jax.Array) -> dict[str, jax.Array]:
        model = rebuild(params)
        if settings.method == "greedy":
            return {"tokens": decoding.greedy_decode(model, tokens, length)}
        if settings.method == "sample":
            seed, row_ids = sampling
            tokens, log_likelihood = decoding.sample(model, tokens, length, seed=seed, row_ids=row_ids,
                                                     temperature=settings.temperature, top_k=settings.top_k,
                                                     top_p=settings.top_p)
            return {"tokens": tokens, "log_likelihood": log_likelihood}
        tokens, scores = decoding.beam_search(model, tokens, length, beam_size=settings.beam_size,
                                              alpha=settings.alpha)
        return {"tokens": tokens, "scores": scores}

    return decode, params


INPUT_NAMES = ("params", "tokens", "seed", "row_ids")


def input_specs(params: dict[str, np.ndarray], settings: DecodeSettings) -> tuple:
    specs = ({name: jax.ShapeDtypeStruct(value.shape, value.dtype) for name, value in params.items()},
             jax.ShapeDtypeStruct((settings.batch, settings.input_length), jnp.int32))
    if settings.method == "sample":
        specs += (jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct((settings.batch,), jnp.int32))
    return specs


def export_decode(decode: Callable, params: dict[str, np.ndarray], settings: DecodeSettings) -> jax.export.Exported:
    return jax.export.export(jax.jit(decode), platforms=settings.platforms)(*input_specs(params, settings))


def io_signature(exported: jax.export.Exported) -> tuple[dict, dict]:
    """(inputs, outputs) of the exported program as signature.json lists them: shapes and dtypes."""
    params, *arrays = jax.tree.unflatten(exported.in_tree, exported.in_avals)[0]
    inputs = {"params": {"arrays": len(params), "dtypes": sorted({str(a.dtype) for a in params.values()})}}
    inputs.update({name: {"shape": list(aval.shape), "dtype": str(aval.dtype)}
                   for name, aval in zip(INPUT_NAMES[1:], arrays)})
    outputs = {name: {"shape": list(aval.shape), "dtype": str(aval.dtype)}
               for name, aval in jax.tree.unflatten(exported.out_tree, exported.out_avals).items()}
    return inputs, outputs
