"""Scale on paper: compile the real train step ahead of time for a mesh, and say what one device must hold.

    plans = plan_in_subprocess([PlanRequest(shape("xl-nl32"), MeshConfig(data=256, rules="fsdp"), 2048)])

No weights and no memory: the trainer's own placements and step are compiled for abstract inputs on fake CPU
devices (`--xla_force_host_platform_device_count`, which must be set before JAX starts: hence the subprocess).
Exact per device: parameters, optimizer state and the batch, from their shardings. Estimated: temporaries
(activations, gradients, workspace), from XLA's *CPU* compiler, which schedules and fuses differently from a TPU's
or GPU's; libtpu's ahead-of-time topology compile is not used (it needs libtpu installed). Collective traffic comes
from the compiled HLO (t5scale.train.collectives).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import time

from t5scale.config import ModelConfig
from t5scale.train.optim import OptimConfig
from t5scale.train.partitioning import MeshConfig

GIB = 2**30
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": GIB,
          "tib": 2**40}


@dataclasses.dataclass(frozen=True)
class Chip:
    hbm_bytes: int  # per JAX device
    devices_per_unit: float  # JAX devices per unit of the N in a slice name `<chip>-N`
    note: str


# JAX's device: a TensorCore on v2/v3 (a v3-256 has 256 cores = 256 devices), a chip on v4/v5p (megacore: a
# v4-128 counts 128 cores in 64 chips = 64 devices), a chip on v5e (v5litepod-N counts chips), a GPU.
CHIPS = {
    "v2": Chip(8 * GIB, 1, "TPU v2: one JAX device per TensorCore, 8 GiB each"),
    "v3": Chip(16 * GIB, 1, "TPU v3: one JAX device per TensorCore, 16 GiB each (32 GiB per chip)"),
    "v4": Chip(32 * GIB, 0.5, "TPU v4: one JAX device per chip (two cores), 32 GiB"),
    "v5e": Chip(16 * GIB, 1, "TPU v5e: one JAX device per chip, 16 GiB"),
    "v5p": Chip(95 * GIB, 0.5, "TPU v5p: one JAX device per chip (two cores), 95 GiB"),
    "a100": Chip(80 * GIB, 1, "A100 80GB: one JAX device per GPU"),
    "h100": Chip(81559 * 2**20, 1, "H100 80GB: one JAX device per GPU, 81559 MiB as nvidia-smi reports"),
    "h200": Chip(143771 * 2**20, 1, "H200: one JAX device per GPU, 143771 MiB"),
}
_ALIASES = {"v5litepod": "v5e"}


@dataclasses.dataclass(frozen=True)
class Hbm:
    bytes: int
    label: str
    devices: int | None = None  # a slice name fixes the device count


def parse_hbm(text: str) -> Hbm:
    """`16GiB`, `512MB`, a chip (`v3`, `h100`) or a slice (`v3-256`, `v4-128`, `v5litepod-16`)."""
    lowered = text.strip().lower()
    if match := re.fullmatch(r"([0-9.]+)\s*([kmgt]?i?b)", lowered):
        return Hbm(int(float(match.group(1)) * _UNITS[match.group(2)]), text)
    name, _, count = lowered.partition("-")
    name = _ALIASES.get(name, name)
    if name in CHIPS and (not count or count.isdigit()):
        chip = CHIPS[name]
        devices = None if not count else int(int(count) * chip.devices_per_unit)
        if devices is not None and devices < 1:
            raise ValueError(f"--hbm {text}: a slice of {count} has no whole device.")
        return Hbm(chip.hbm_bytes, f"{text} ({chip.note})", devices)
    raise ValueError(f"--hbm {text!r}: give a size (16GiB, 512MB), a chip ({', '.join(CHIPS)}) or a slice "
                     "(v3-256, v4-128, v5litepod-16).")


@dataclasses.dataclass(frozen=True)
class PlanRequest:
    model_cfg: ModelConfig
    mesh_cfg: MeshConfig  # data must be set
    batch_size: int  # global
    input_len: int = 512
    target_len: int = 114
    microbatches: int = 1
    optim_cfg: OptimConfig = OptimConfig()

    def __post_init__(self):
        if self.mesh_cfg.data is None:
            raise ValueError("PlanRequest: the mesh needs its data size.")
        if min(self.batch_size, self.input_len, self.target_len, self.microbatches) < 1:
            raise ValueError("batch size, lengths and microbatches must be positive.")
        if self.batch_size % (self.mesh_cfg.data * self.microbatches):
            raise ValueError(f"batch {self.batch_size} does not split into {self.microbatches} microbatch(es) "
                             f"over data={self.mesh_cfg.data}.")

    @property
    def devices(self) -> int:
        return self.mesh_cfg.data * self.mesh_cfg.model

    def to_json(self) -> dict:
        return {"model": self.model_cfg.to_dict(), "mesh": dataclasses.asdict(self.mesh_cfg),
                "batch_size": self.batch_size, "input_len": self.input_len, "target_len": self.target_len,
                "microbatches": self.microbatches,
                "optim": {**dataclasses.asdict(self.optim_cfg), "schedule": self.optim_cfg.schedule.value}}

    @classmethod
    def from_json(cls, values: dict) -> PlanRequest:
        return cls(ModelConfig.from_dict(values["model"]), MeshConfig(**values["mesh"]), values["batch_size"],
                   values["input_len"], values["target_len"], values["microbatches"], OptimConfig(**values["optim"]))


# The trainer's batch: seqio's packed encoder-decoder features, all int32 [batch, length].
ENCODER_FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")
DECODER_FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids",
                    "decoder_positions")


def _per_device_bytes(tree) -> int:
    """Bytes one device holds of abstract arrays with shardings (the largest shard where they differ)."""
    import jax

    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def make_plan(request: PlanRequest) -> dict:
    """Compile the trainer's step for `request` on the first `request.devices` devices of this process."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from t5scale.model.flops import count_params
    from t5scale.model.t5 import T5
    from t5scale.train import collectives
    from t5scale.train.optim import make_optimizer
    from t5scale.train.partitioning import batch_sharding, make_mesh
    from t5scale.train.step import make_train_step
    from t5scale.train.trainer import _make_init_fn

    cfg, mesh_cfg = request.model_cfg, request.mesh_cfg
    if jax.device_count() < request.devices:
        raise ValueError(f"the mesh needs {request.devices} devices; this process has {jax.device_count()}.")
    tic = time.perf_counter()
    mesh = make_mesh(mesh_cfg, jax.devices()[:request.devices])
    tx = make_optimizer(request.optim_cfg)
    init_fn = _make_init_fn(cfg, tx, 0, mesh, mesh_cfg.rules)  # the trainer's placements, optimizer state included
    with mesh:
        state_shardings = init_fn.lower().compile().output_shardings
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), init_fn.eval_shape(),
                         state_shardings)
    data_sharding = batch_sharding(mesh)
    batch = {name: jax.ShapeDtypeStruct((request.batch_size, length), jnp.int32, sharding=data_sharding)
             for names, length in ((ENCODER_FEATURES, request.input_len), (DECODER_FEATURES, request.target_len))
             for name in names}
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: T5(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    # Jitted and run (under jax.set_mesh) as trainer.train does.
    step = jax.jit(make_train_step(graphdef, tx, z_loss=1e-4, microbatches=request.microbatches, dropout_seed=0),
                   in_shardings=(state_shardings, data_sharding), out_shardings=(state_shardings, None),
                   donate_argnums=0)
    with jax.set_mesh(mesh):
        compiled = step.lower(state, batch).compile()
    memory = compiled.memory_analysis()
    exact = {"params": _per_device_bytes(state.params), "opt_state": _per_device_bytes(state.opt_state) +
             _per_device_bytes(state.step), "batch": _per_device_bytes(batch)}
    # Donated state comes back in place; what else the step returns (metrics) is new memory.
    extra_outputs = max(memory.output_size_in_bytes - memory.alias_size_in_bytes, 0)
    total = sum(exact.values()) + memory.temp_size_in_bytes + extra_outputs
    traffic = collectives.collective_traffic(compiled.as_text(), request.devices)
    return {
        "shape": cfg.name, "params": count_params(cfg).total, "devices": request.devices,
        "mesh": dataclasses.asdict(mesh_cfg), "batch_size": request.batch_size,
        "lengths": [request.input_len, request.target_len], "microbatches": request.microbatches,
        "dtype": cfg.dtype.name, "remat": cfg.remat.value, "scan_layers": cfg.scan_layers,
        "bytes_per_device": {**exact, "temporaries_estimate": memory.temp_size_in_bytes,
                             "other_outputs": extra_outputs, "total_estimate": total},
        "xla_memory_analysis": {"argument": memory.argument_size_in_bytes, "output": memory.output_size_in_bytes,
                                "alias": memory.alias_size_in_bytes, "temp": memory.temp_size_in_bytes},
        "collectives": {kind: dataclasses.asdict(t) for kind, t in traffic.items()},
        "compile_seconds": time.perf_counter() - tic,
    }


def fits(plan: dict, hbm: Hbm) -> bool:
    return plan["bytes_per_device"]["total_estimate"] <= hbm.bytes


def plan_in_subprocess(requests: list[PlanRequest], timeout_s: float | None = None) -> list[dict]:
    """`make_plan` for each request, in one fresh process with as many fake CPU devices as the largest mesh.

    A request that fails gives {"error": "..."} in its place."""
    devices = max(r.devices for r in requests)
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}".strip()}
    process = subprocess.run([sys.executable, "-m", "t5scale.train.plan"], input=json.dumps(
        [r.to_json() for r in requests]), capture_output=True, text=True, env=env, timeout=timeout_s)
    lines = process.stdout.strip().splitlines()
    if process.returncode != 0 or not lines:
        tail = " | ".join(process.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"the planning process failed (exit {process.returncode}): {tail}")
    return json.loads(lines[-1])


def _worker() -> None:
    """`python -m t5scale.train.plan`: requests as JSON on stdin, plans as one JSON line on stdout."""
    results = []
    for values in json.load(sys.stdin):
        try:
            results.append(make_plan(PlanRequest.from_json(values)))
        except (ValueError, NotImplementedError) as error:
            results.append({"error": str(error).strip().splitlines()[0]})
    print(json.dumps(results))


if __name__ == "__main__":
    _worker()
