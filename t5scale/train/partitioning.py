"""The (data, model) device mesh and where parameters and batches live on it.

Parameters carry logical axis names (t5scale.sharding); a rule set maps them onto mesh axes. A dimension that a
mesh axis does not divide evenly stays replicated rather than failing (e.g. 4 heads on an 8-way model axis).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from t5scale.sharding import DATA_AXIS, MODEL_AXIS, RULE_SETS, logical_axis_rules


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int | None = None  # None: all devices not used by `model`
    model: int = 1
    rules: str = "t5x"  # or "fsdp": parameters and optimizer state also split over `data`
    # Multi-slice (TPU slices joined by the data-center network): how many slices the data axis spans. Each slice
    # holds data / dcn_data replicas; only the data axis crosses slices, since DCN is far slower than ICI.
    dcn_data: int = 1

    def __post_init__(self):
        if self.rules not in RULE_SETS:
            raise ValueError(f"MeshConfig.rules={self.rules!r}; choose one of {RULE_SETS}.")
        if self.dcn_data < 1 or (self.data is not None and self.data % self.dcn_data):
            raise ValueError(f"MeshConfig.dcn_data={self.dcn_data} must be positive and divide data={self.data}.")


def make_mesh(cfg: MeshConfig, devices: list | None = None) -> Mesh:
    """The (data, model) mesh, laid out by JAX's topology-aware `mesh_utils`: on TPUs the model axis goes to
    neighbouring chips (its collectives run every layer), and with dcn_data > 1 the data axis spans slices
    (`create_hybrid_device_mesh`, slices told apart by `slice_index`, or by process where devices have none)."""
    devices = jax.devices() if devices is None else devices
    data = cfg.data if cfg.data is not None else len(devices) // cfg.model
    if data * cfg.model != len(devices):
        raise ValueError(f"Mesh (data={data}, model={cfg.model}) needs {data * cfg.model} devices, "
                         f"but there are {len(devices)}.")
    if data % cfg.dcn_data:
        raise ValueError(f"MeshConfig.dcn_data={cfg.dcn_data} does not divide data={data}.")
    if cfg.dcn_data == 1:
        grid = mesh_utils.create_device_mesh((data, cfg.model), devices)
    else:
        by_process = not hasattr(devices[0], "slice_index")
        try:
            grid = mesh_utils.create_hybrid_device_mesh((data // cfg.dcn_data, cfg.model), (cfg.dcn_data, 1),
                                                        devices, process_is_granule=by_process)
        except ValueError as error:  # e.g. "Number of slices 1 must equal the product of dcn_mesh_shape (2, 1)"
            raise ValueError(f"MeshConfig.dcn_data={cfg.dcn_data}: {error}") from None
    return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def spec_for(names: tuple[str, ...], shape: tuple[int, ...], mesh: Mesh, rules: str) -> PartitionSpec:
    """PartitionSpec for a parameter with logical axis `names` and `shape`."""
    table = dict(logical_axis_rules(rules))
    used, axes = set(), []
    for name, size in zip(names, shape, strict=True):
        axis = table[name]
        if axis is None or axis in used or size % mesh.shape[axis]:
            axes.append(None)
        else:
            axes.append(axis)
            used.add(axis)
    return PartitionSpec(*axes)


def param_shardings(params: nnx.State, mesh: Mesh, rules: str):
    """NamedSharding for every Param in `params` (an nnx.State, abstract or concrete)."""

    def sharding(variable):
        names = variable.get_metadata()["out_sharding"]
        return NamedSharding(mesh, spec_for(names, variable.get_value().shape, mesh, rules))

    return jax.tree.map(sharding, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def place_on_mesh(model: nnx.Module, mesh: Mesh, rules: str) -> None:
    """Put the parameters of a model held whole on every host onto the mesh, as training places them."""
    params = nnx.state(model, nnx.Param)

    def place(variable, sharding):
        value = np.asarray(variable.get_value())
        variable.set_value(jax.make_array_from_callback(value.shape, sharding, lambda index: value[index]))

    jax.tree.map(place, params, param_shardings(params, mesh, rules), is_leaf=lambda x: isinstance(x, nnx.Variable))
    nnx.update(model, params)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches are split over the data axis, replicated over the model axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def opt_state_shardings(abstract_opt_state, abstract_params: nnx.State, shardings):
    """NamedSharding for every leaf of the optimizer state: a statistic follows its parameter. A full-size one
    (Adafactor's unfactored v, momentum) takes the parameter's sharding; a factored row or column one (the
    parameter's shape less one axis) takes it with that axis dropped; anything else (counts, placeholders) is
    replicated. Left to XLA, an initialiser's outputs would all be replicated: under fsdp every device would hold
    the whole optimizer state."""
    leaf = lambda x: isinstance(x, NamedSharding)
    by_path = {jax.tree_util.keystr(path): (x.shape, sharding) for (path, x), sharding in zip(
        jax.tree_util.tree_flatten_with_path(abstract_params)[0], jax.tree.leaves(shardings, is_leaf=leaf),
        strict=True)}

    def sharding(path, x):
        name = jax.tree_util.keystr(path)
        for param_path, (shape, param_sharding) in by_path.items():
            if name.endswith(param_path):
                spec = tuple(param_sharding.spec) + (None,) * (len(shape) - len(param_sharding.spec))
                if tuple(x.shape) == tuple(shape):
                    return param_sharding
                for axis in range(len(shape)):
                    if tuple(x.shape) == shape[:axis] + shape[axis + 1:]:
                        return NamedSharding(param_sharding.mesh, PartitionSpec(*spec[:axis], *spec[axis + 1:]))
        return NamedSharding(next(iter(by_path.values()))[1].mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(sharding, abstract_opt_state)
