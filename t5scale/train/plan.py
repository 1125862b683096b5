"""Scale on paper: compile the real train step (or decoding) ahead of time for a mesh, and say what one device
must hold.

    with PlanWorker(tpu=True) as worker:
        plan = worker.plan(PlanRequest(shape("xl-nl32"), MeshConfig(rules="fsdp"), 2048, topology="v4-128"))

No weights and no memory: the trainer's own placements and step are compiled for abstract inputs, in a separate
process (JAX's platform and device count are fixed when it starts), on one of two kinds of devices:
- a TPU slice's (`topology=`): libtpu's ahead-of-time compiler, on this CPU host, for the slice's own devices and
  hosts (`jax.experimental.topologies`). Its memory analysis is the TPU's own number.
- fake CPU devices (`--xla_force_host_platform_device_count`): XLA's CPU compiler, which schedules and fuses
  differently from a TPU's or GPU's, so its temporaries are an estimate, labelled so. Used without a topology, and
  where libtpu is not installed.
Exact either way: parameters, optimizer state and the batch per device, from their shardings. Collective traffic
comes from the compiled HLO (t5scale.train.collectives). `compiled.cost_analysis()` is not used: for whole train
steps libtpu's `optimal_seconds` comes out negative, and a scanned layer's flops are counted once.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

from t5scale.config import ModelConfig
from t5scale.train import slices
from t5scale.train.optim import OptimConfig
from t5scale.train.partitioning import MeshConfig

GIB = 2**30
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": GIB,
          "tib": 2**40}
TPU_HINT = 'pip install "t5scale[tpu]" (libtpu, x86-64 Linux) gives the TPU compiler\'s own numbers'
MODES = ("train", "decode")


def libtpu_missing() -> str | None:
    """Why libtpu's compiler cannot run here (one line), or None when it can."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"libtpu runs on x86-64 Linux only (this is {sys.platform} {platform.machine()})"
    if os.environ.get("TPU_LIBRARY_PATH") or importlib.util.find_spec("libtpu") is not None:
        return None
    return "libtpu is not installed"


@dataclasses.dataclass(frozen=True)
class Chip:
    hbm_bytes: int  # per JAX device
    note: str


# GPUs; TPU chips and slices come from t5scale.train.slices.
CHIPS = {
    "a100": Chip(80 * GIB, "A100 80GB: one JAX device per GPU"),
    "h100": Chip(81559 * 2**20, "H100 80GB: one JAX device per GPU, 81559 MiB as nvidia-smi reports"),
    "h200": Chip(143771 * 2**20, "H200: one JAX device per GPU, 143771 MiB"),
}


@dataclasses.dataclass(frozen=True)
class Hbm:
    bytes: int
    label: str
    devices: int | None = None  # a slice name fixes the device count


def parse_hbm(text: str) -> Hbm:
    """`16GiB`, `512MB`, a chip (`v3`, `h100`) or a TPU slice (`v3-256`, `v4-128`, `v5litepod-16`)."""
    lowered = text.strip().lower()
    if match := re.fullmatch(r"([0-9.]+)\s*([kmgt]?i?b)", lowered):
        return Hbm(int(float(match.group(1)) * _UNITS[match.group(2)]), text)
    if lowered in CHIPS:
        return Hbm(CHIPS[lowered].hbm_bytes, f"{text} ({CHIPS[lowered].note})")
    generation = slices.GENERATIONS.get({"v5litepod": "v5e"}.get(lowered, lowered))
    if generation is not None:
        return Hbm(generation.hbm_per_device, f"{text} ({_hbm_note(generation)})")
    try:
        tpu = slices.parse_slice(lowered)
    except ValueError:
        chips = ", ".join([*slices.GENERATIONS, *CHIPS])
        raise ValueError(f"--hbm {text!r}: give a size (16GiB, 512MB), a chip ({chips}) or a slice (v3-256, v4-128, "
                         "v5litepod-16).") from None
    return Hbm(tpu.generation.hbm_per_device, f"{text} ({_hbm_note(tpu.generation)})", tpu.devices)


def _hbm_note(generation: slices.Generation) -> str:
    per = "TensorCore" if generation.devices_per_chip > 1 else "chip"
    return f"{generation.device_kind}: one JAX device per {per}, {generation.hbm_per_device / GIB:.0f} GiB"


@dataclasses.dataclass(frozen=True)
class PlanRequest:
    model_cfg: ModelConfig
    mesh_cfg: MeshConfig  # data may be None with a topology: the slice's devices over the model axis
    batch_size: int  # global
    input_len: int = 512
    target_len: int = 114  # decode: the longest output
    microbatches: int = 1
    optim_cfg: OptimConfig = OptimConfig()
    topology: str | None = None  # a TPU slice (v4-128, v4:4x4x4): libtpu's compiler; None: fake CPU devices
    num_slices: int = 1  # multi-slice: the data axis spans slices over DCN
    mode: str = "train"  # or "decode": greedy (beam_size 1) or beam search
    beam_size: int = 1

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"--mode {self.mode!r}: choose one of {', '.join(MODES)}.")
        if self.topology is not None:
            tpu = slices.parse_slice(self.topology, self.num_slices)
            mesh = self.mesh_cfg
            data = mesh.data if mesh.data is not None else tpu.devices // mesh.model
            if data * mesh.model != tpu.devices:
                raise ValueError(f"mesh data={data} x model={mesh.model} is {data * mesh.model} devices; "
                                 f"{tpu.cloud_name} has {tpu.devices}.")
            object.__setattr__(self, "mesh_cfg", dataclasses.replace(mesh, data=data, dcn_data=self.num_slices))
        elif self.num_slices != 1:
            raise ValueError("several slices need a --topology.")
        if self.mesh_cfg.data is None:
            raise ValueError("PlanRequest: the mesh needs its data size (or a topology).")
        if min(self.batch_size, self.input_len, self.target_len, self.microbatches, self.beam_size) < 1:
            raise ValueError("batch size, lengths, microbatches and beam size must be positive.")
        if self.batch_size % (self.mesh_cfg.data * self.microbatches):
            raise ValueError(f"batch {self.batch_size} does not split into {self.microbatches} microbatch(es) "
                             f"over data={self.mesh_cfg.data}.")

    @property
    def devices(self) -> int:
        return self.mesh_cfg.data * self.mesh_cfg.model

    @property
    def tpu(self) -> slices.Slice | None:
        return slices.parse_slice(self.topology, self.num_slices) if self.topology else None

    def to_json(self) -> dict:
        return {"model": self.model_cfg.to_dict(), "mesh": dataclasses.asdict(self.mesh_cfg),
                "batch_size": self.batch_size, "input_len": self.input_len, "target_len": self.target_len,
                "microbatches": self.microbatches,
                "optim": {**dataclasses.asdict(self.optim_cfg), "schedule": self.optim_cfg.schedule.value},
                "topology": self.topology, "num_slices": self.num_slices, "mode": self.mode,
                "beam_size": self.beam_size}

    @classmethod
    def from_json(cls, values: dict) -> PlanRequest:
        return cls(ModelConfig.from_dict(values["model"]), MeshConfig(**values["mesh"]), values["batch_size"],
                   values["input_len"], values["target_len"], values["microbatches"], OptimConfig(**values["optim"]),
                   values.get("topology"), values.get("num_slices", 1), values.get("mode", "train"),
                   values.get("beam_size", 1))


# The trainer's batch: seqio's packed encoder-decoder features, all int32 [batch, length].
ENCODER_FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")
DECODER_FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids",
                    "decoder_positions")


def _per_device_bytes(tree) -> int:
    """Bytes one device holds of abstract arrays with shardings (the largest shard where they differ)."""
    import jax

    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _devices(request: PlanRequest) -> list:
    import jax

    if request.tpu is None:
        if jax.device_count() < request.devices:
            raise ValueError(f"the mesh needs {request.devices} devices; this process has {jax.device_count()}.")
        return jax.devices()[:request.devices]
    from jax.experimental import topologies

    devices = topologies.get_topology_desc(**request.tpu.topology_kwargs()).devices
    if len(devices) != request.tpu.devices:  # the name table disagrees with libtpu: say so rather than plan wrong
        raise ValueError(f"libtpu gives {len(devices)} devices for {request.tpu.topology}; t5scale's table says "
                         f"{request.tpu.devices}.")
    return devices


def make_plan(request: PlanRequest) -> dict:
    """Compile the trainer's step (or decoding) for `request`, on its TPU slice or this process's CPU devices."""
    import jax

    from t5scale.train import collectives
    from t5scale.train.partitioning import make_mesh

    tic = time.perf_counter()
    devices = _devices(request)
    mesh = make_mesh(request.mesh_cfg, devices)
    lowered, exact = (_lower_train if request.mode == "train" else _lower_decode)(request, mesh)
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as error:
        if request.tpu is None or "RESOURCE_EXHAUSTED" not in str(error):
            raise
        # libtpu refuses a program that cannot fit the chip's HBM: that is the verdict, with its numbers.
        return {**_describe(request, devices), "bytes_per_device": exact,
                "out_of_memory": str(error).strip().splitlines()[0], "compile_seconds": time.perf_counter() - tic}
    memory = compiled.memory_analysis()
    # Donated state comes back in place; what else the step returns (metrics, tokens) is new memory.
    extra_outputs = max(memory.output_size_in_bytes - memory.alias_size_in_bytes, 0)
    if request.tpu is not None:
        # libtpu's own accounting: arguments as laid out on the chip (tiled, so padded), plus the program.
        total = (memory.argument_size_in_bytes + memory.temp_size_in_bytes + extra_outputs
                 + memory.generated_code_size_in_bytes)
    else:
        total = sum(exact.values()) + memory.temp_size_in_bytes + extra_outputs
    traffic = collectives.collective_traffic(compiled.as_text(), request.devices)
    return {**_describe(request, devices),
        "bytes_per_device": {**exact, "temporaries_estimate": memory.temp_size_in_bytes,
                             "other_outputs": extra_outputs, "total_estimate": total},
        "xla_memory_analysis": {"argument": memory.argument_size_in_bytes, "output": memory.output_size_in_bytes,
                                "alias": memory.alias_size_in_bytes, "temp": memory.temp_size_in_bytes,
                                "generated_code": memory.generated_code_size_in_bytes},
        "collectives": {kind: dataclasses.asdict(t) for kind, t in traffic.items()},
        "compile_seconds": time.perf_counter() - tic,
    }


def _describe(request: PlanRequest, devices: list) -> dict:
    import jax

    from t5scale.model.flops import count_params

    cfg, tpu = request.model_cfg, request.tpu
    return {
        "shape": cfg.name, "params": count_params(cfg).total, "devices": request.devices,
        "mesh": dataclasses.asdict(request.mesh_cfg), "batch_size": request.batch_size, "mode": request.mode,
        "beam_size": request.beam_size, "lengths": [request.input_len, request.target_len],
        "microbatches": request.microbatches, "dtype": cfg.dtype.name, "remat": cfg.remat.value,
        "scan_layers": cfg.scan_layers, "compiler": "tpu" if tpu else "cpu", "jax_version": jax.__version__,
        "slice": None if tpu is None else {
            "name": tpu.name, "cloud_name": tpu.cloud_name, "topology": tpu.topology, "num_slices": tpu.num_slices,
            "chips": tpu.chips, "hosts": len({d.process_index for d in devices}),
            "device_kind": devices[0].device_kind, "hbm_per_device": tpu.generation.hbm_per_device,
            "bf16_flops_per_device": tpu.generation.bf16_flops_per_device},
    }


def _lower_train(request: PlanRequest, mesh):
    """The trainer's own step, placements and optimizer state, lowered for `mesh`; exact bytes per device."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    from t5scale.model.t5 import T5
    from t5scale.train.optim import make_optimizer
    from t5scale.train.partitioning import batch_sharding
    from t5scale.train.step import make_train_step
    from t5scale.train.trainer import _make_init_fn

    cfg = request.model_cfg
    tx = make_optimizer(request.optim_cfg)
    # The trainer's placements, as its initialiser declares them (the step count, left to XLA, is replicated). Not
    # compiled: a state too large for the device is the step's verdict to give, not the initialiser's.
    replicated = NamedSharding(mesh, PartitionSpec())
    state = jax.tree.map(lambda x: x if x.sharding is not None else jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                                         sharding=replicated),
                         _make_init_fn(cfg, tx, 0, mesh, request.mesh_cfg.rules).eval_shape())
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
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
        lowered = step.lower(state, batch)
    exact = {"params": _per_device_bytes(state.params), "opt_state": _per_device_bytes(state.opt_state) +
             _per_device_bytes(state.step), "batch": _per_device_bytes(batch)}
    return lowered, exact


def _lower_decode(request: PlanRequest, mesh):
    """Greedy decoding (beam_size 1) or beam search of `batch_size` inputs, params placed as `eval` places them."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from t5scale.model import decoding
    from t5scale.model.t5 import T5
    from t5scale.train.partitioning import batch_sharding, param_shardings

    cfg = request.model_cfg
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: T5(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    shardings = param_shardings(abstract, mesh, request.mesh_cfg.rules)
    params = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.get_value().shape, v.get_value().dtype, sharding=s),
                          abstract, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))
    data_sharding = batch_sharding(mesh)
    tokens = jax.ShapeDtypeStruct((request.batch_size, request.input_len), jnp.int32, sharding=data_sharding)

    def decode(params, tokens):
        model = nnx.merge(graphdef, params)
        if request.beam_size == 1:
            return decoding.greedy_decode(model, tokens, request.target_len)
        return decoding.beam_search(model, tokens, request.target_len, beam_size=request.beam_size)

    with mesh:  # as evaluate decodes
        lowered = jax.jit(decode).lower(params, tokens)
    return lowered, {"params": _per_device_bytes(params), "opt_state": 0, "batch": _per_device_bytes(tokens)}


def fits(plan: dict, hbm: Hbm) -> bool:
    """Whether the plan's total fits `hbm`; a program libtpu refused for want of HBM never does."""
    return "out_of_memory" not in plan and plan["bytes_per_device"]["total_estimate"] <= hbm.bytes


def worker_environment(tpu: bool, cpu_devices: int = 1) -> dict[str, str]:
    """The planning process's environment: JAX on the CPU either way (libtpu compiles without claiming chips)."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={cpu_devices}".strip()}
    if tpu:
        # No metadata server to ask, and several planners (or a TPU-less JAX elsewhere) may load libtpu at once.
        env.update(TPU_SKIP_MDS_QUERY="1", ALLOW_MULTIPLE_LIBTPU_LOAD="1", TF_CPP_MIN_LOG_LEVEL="3",
                   GRPC_VERBOSITY="ERROR")
    return env


class PlanWorker:
    """One planning process that compiles request after request (JAX starts once): `worker.plan(request)`.

    `tpu=True` plans for TPU slices with libtpu; otherwise `cpu_devices` fake CPU devices. A request that fails
    gives {"error": "..."}."""

    def __init__(self, *, tpu: bool = False, cpu_devices: int = 1):
        self.tpu = tpu
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._process = subprocess.Popen([sys.executable, "-m", "t5scale.train.plan"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._stderr, text=True,
                                         env=worker_environment(tpu, cpu_devices))

    def plan(self, request: PlanRequest) -> dict:
        if (request.tpu is not None) != self.tpu:
            raise ValueError("this planning process compiles for " + ("TPU slices" if self.tpu else "CPU devices"))
        self._process.stdin.write(json.dumps(request.to_json()) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            self._process.wait()
            self._stderr.seek(0)
            tail = " | ".join(line for line in self._stderr.read().strip().splitlines()[-3:])
            raise RuntimeError(f"the planning process failed (exit {self._process.returncode}): {tail}")
        return json.loads(line)

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._stderr.close()

    def __enter__(self) -> PlanWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def plan_in_subprocess(requests: list[PlanRequest]) -> list[dict]:
    """`make_plan` for each request, in one fresh process (TPU slices or as many fake CPU devices as the largest
    mesh; requests of one kind). A request that fails gives {"error": "..."} in its place."""
    tpu = requests[0].tpu is not None
    with PlanWorker(tpu=tpu, cpu_devices=1 if tpu else max(r.devices for r in requests)) as worker:
        return [worker.plan(r) for r in requests]


def _worker() -> None:
    """`python -m t5scale.train.plan`: one request as JSON per line on stdin, its plan as one JSON line on stdout."""
    for line in sys.stdin:
        try:
            result = make_plan(PlanRequest.from_json(json.loads(line)))
        except (ValueError, NotImplementedError) as error:
            result = {"error": str(error).strip().splitlines()[0]}
        except Exception as error:  # noqa: BLE001 - e.g. libtpu's JaxRuntimeError: report it, keep serving
            result = {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    _worker()
