"""Parameters as a flat, layout-independent dict, and back.

A scanned stack stores one array per weight with a leading layer axis (`encoder/layers/mlp/wo/kernel`, [L, ...]);
an unrolled stack stores one array per layer (`encoder/layers/0/mlp/wo/kernel`). The flat dict always uses the
unrolled names, so checkpoint converters and tests need not care which layout a model uses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

LAYERS_KEY = "layers"


def _entries(model: nnx.Module, state: nnx.State):
    """(unrolled name, variable, layer index or None) for every parameter in `state`."""
    for path, variable in nnx.to_flat_state(state):
        at = path.index(LAYERS_KEY) if LAYERS_KEY in path else None
        if at is not None and model.cfg.scan_layers:
            for i in range(variable.get_value().shape[0]):
                yield "/".join(map(str, (*path[:at + 1], i, *path[at + 1:]))), variable, i
        else:
            yield "/".join(map(str, path)), variable, None


def flat_params(model: nnx.Module) -> dict[str, np.ndarray]:
    """{"encoder/layers/0/attention/query/kernel": array, ...} in the unrolled naming, as numpy."""
    out = {}
    for name, variable, layer in _entries(model, nnx.state(model, nnx.Param)):
        value = np.asarray(jax.device_get(variable.get_value()))
        out[name] = value if layer is None else value[layer]
    return out


def param_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    """Like `flat_params`, shapes only."""
    return {name: tuple(variable.get_value().shape[0 if layer is None else 1:])
            for name, variable, layer in _entries(model, nnx.state(model, nnx.Param))}


def load_flat_params(model: nnx.Module, params: dict[str, np.ndarray]) -> None:
    """Set every parameter of `model` from a flat dict (unrolled naming); names and shapes must match exactly."""
    expected = param_shapes(model)
    missing, unexpected = sorted(set(expected) - set(params)), sorted(set(params) - set(expected))
    if missing or unexpected:
        raise ValueError(f"Parameter names do not match the model: missing {_few(missing)}, "
                         f"unexpected {_few(unexpected)}.")
    for name, shape in expected.items():
        if tuple(params[name].shape) != shape:
            raise ValueError(f"Parameter {name} has shape {tuple(params[name].shape)}, the model expects {shape}.")
    state = nnx.state(model, nnx.Param)
    stacked: dict[int, list] = {}
    for name, variable, layer in _entries(model, state):
        if layer is None:
            variable.set_value(jnp.asarray(params[name], dtype=variable.get_value().dtype))
        else:
            stacked.setdefault(id(variable), [variable, []])[1].append(params[name])
    for variable, layers in stacked.values():
        variable.set_value(jnp.asarray(np.stack(layers), dtype=variable.get_value().dtype))
    nnx.update(model, state)


def _few(names: list[str]) -> str:
    return f"{names[:5]}{'...' if len(names) > 5 else ''}"


def key_names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _stacked_name(names: tuple[str, ...]) -> tuple[tuple[str, ...], int | None]:
    """('encoder', 'layers', '0', 'mlp', ...) -> (('encoder', 'layers', 'mlp', ...), 0); other names unchanged."""
    if LAYERS_KEY in names:
        at = names.index(LAYERS_KEY) + 1
        if at < len(names) and names[at].isdigit():
            return names[:at] + names[at + 1:], int(names[at])
    return names, None


def convert_layer_layout(tree, target):
    """`tree` (any pytree holding per-layer arrays: params, an optimizer state that mirrors them) rearranged into
    the layer layout of `target` (same kind of tree, abstract or concrete, of the other layout).

    Stacked [L, ...] arrays are split into L per-layer ones, or per-layer ones stacked. Optimizer placeholders that
    do not grow with the layer count (Adafactor's shape-(1,) slots of unfactored moments) are taken as they are.
    The caller checks that the shapes came out right (e.g. under jax.eval_shape).
    """
    import jax.numpy as jnp

    source = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        stacked, layer = _stacked_name(key_names(path))
        source.setdefault(stacked, {})[layer] = leaf
    paths, treedef = jax.tree_util.tree_flatten_with_path(target)
    leaves = []
    for path, want in paths:
        stacked, layer = _stacked_name(key_names(path))
        found = source[stacked]
        if layer is None and None not in found:  # stack the per-layer arrays
            parts = [found[i] for i in range(len(found))]
            leaves.append(parts[0] if parts[0].shape == want.shape else jnp.stack(parts))
        elif layer is not None and None in found:  # one layer of a stacked array
            whole = found[None]
            leaves.append(whole if whole.shape == want.shape else whole[layer])
        else:  # not a per-layer array
            leaves.append(found[layer])
    return jax.tree.unflatten(treedef, leaves)
