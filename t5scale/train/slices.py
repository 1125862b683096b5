"""Cloud TPU slices by name: what `v4-128` or `v5litepod-16` is to libtpu's compiler and to JAX.

    tpu = parse_slice("v4-128")   # Slice(v4, topology "v4:4x4x4", megacore, 64 devices, 16 hosts, ...)
    tpu = parse_slice("v4:4x4x4") # the same slice, by libtpu's own topology string

One table (GENERATIONS): per generation what a JAX device is (a TensorCore on v2/v3, a chip elsewhere), its HBM
and bf16 peak, and the topology of each slice size Cloud TPU sells. Device and host counts here are what libtpu
reports for each topology (tests/train/slices_test.py checks every entry against it).
"""

from __future__ import annotations

import dataclasses
import math
import re

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Generation:
    name: str  # libtpu's prefix in topology strings: v2, v3, v4, v5e, v5p, v6e
    cloud_prefix: str  # the prefix of Cloud TPU's accelerator types: v4-128, v5litepod-16
    device_kind: str  # jax's Device.device_kind
    cores_per_chip: int
    devices_per_chip: int  # JAX devices: one per TensorCore on v2/v3, one per chip (megacore) on v4/v5p
    cloud_counts_cores: bool  # the N of `<prefix>-N` counts TensorCores (v2/v3/v4/v5p) rather than chips
    hbm_per_chip: int
    bf16_flops_per_chip: float
    chips_per_host: int  # a multi-host slice's hosts each have this many chips
    chip_config: str | None  # libtpu's chip_config_name
    topologies: dict[int, str]  # chips -> topology dims ("4x4x4")

    @property
    def hbm_per_device(self) -> int:
        return self.hbm_per_chip // self.devices_per_chip

    @property
    def bf16_flops_per_device(self) -> float:
        return self.bf16_flops_per_chip / self.devices_per_chip


_2D = {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_2D_CORES = {chips: dims for chips, dims in _2D.items() if chips != 8}  # no v2-16 or v3-16 is sold
_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8", 512: "8x8x8",
       1024: "8x8x16", 2048: "8x16x16"}

# HBM and peak bf16 FLOP/s per chip as Cloud TPU's documentation states them.
GENERATIONS = {g.name: g for g in (
    Generation("v2", "v2", "TPU v2", 2, 2, True, 16 * GIB, 45e12, 4, None, _2D_CORES),
    Generation("v3", "v3", "TPU v3", 2, 2, True, 32 * GIB, 123e12, 4, None,
               {**_2D_CORES, 512: "16x32", 1024: "32x32"}),
    Generation("v4", "v4", "TPU v4", 2, 1, True, 32 * GIB, 275e12, 4, "megacore", _3D),
    Generation("v5e", "v5litepod", "TPU v5 lite", 1, 1, False, 16 * GIB, 197e12, 4, None, {1: "1x1", **_2D}),
    Generation("v5p", "v5p", "TPU v5", 2, 1, True, 95 * GIB, 459e12, 4, "megacore",
               {**_3D, 4096: "16x16x16", 6144: "16x16x24"}),
    Generation("v6e", "v6e", "TPU v6 lite", 1, 1, False, 32 * GIB, 918e12, 4, None, {1: "1x1", **_2D}),
)}
_BY_CLOUD_PREFIX = {g.cloud_prefix: g for g in GENERATIONS.values()} | {"v5e": GENERATIONS["v5e"]}
# Single-host slices of more than 4 chips (v5litepod-8, v6e-8): one host holds all 8.
_SINGLE_HOST_CHIPS = 8


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str  # as the user wrote it
    generation: Generation
    dims: tuple[int, ...]  # chips along each axis of the topology
    num_slices: int = 1

    @property
    def topology(self) -> str:
        return f"{self.generation.name}:{'x'.join(map(str, self.dims))}"

    @property
    def chips(self) -> int:
        return math.prod(self.dims) * self.num_slices

    @property
    def devices(self) -> int:
        return self.chips * self.generation.devices_per_chip

    @property
    def host_bounds(self) -> tuple[int, int, int] | None:
        """libtpu's chips_per_host_bounds where its default (2x2x1) is not what Cloud TPU sells."""
        chips = math.prod(self.dims)
        if chips == 1:
            return (1, 1, 1)
        if chips == _SINGLE_HOST_CHIPS and self.generation.name in ("v5e", "v6e"):
            return (*self.dims, 1)
        return None

    @property
    def hosts(self) -> int:
        chips = math.prod(self.dims)
        per_host = chips if self.host_bounds else min(chips, self.generation.chips_per_host)
        return chips // per_host * self.num_slices

    @property
    def cloud_name(self) -> str:
        g = self.generation
        chips = math.prod(self.dims)
        count = chips * g.cores_per_chip if g.cloud_counts_cores else chips
        return f"{g.cloud_prefix}-{count}" + (f" x {self.num_slices} slices" if self.num_slices > 1 else "")

    def topology_kwargs(self) -> dict:
        """Keyword arguments of `jax.experimental.topologies.get_topology_desc` for this slice."""
        kwargs = {"platform": "tpu", "topology_name": self.topology, "num_slices": self.num_slices}
        if self.generation.chip_config:
            kwargs["chip_config_name"] = self.generation.chip_config
        if self.host_bounds:
            kwargs["chips_per_host_bounds"] = list(self.host_bounds)
        return kwargs

    def describe(self) -> str:
        g = self.generation
        return (f"{self.cloud_name} = topology {self.topology}: {self.chips} chips, {self.devices} JAX devices "
                f"(one per {'TensorCore' if g.devices_per_chip > 1 else 'chip'}), {self.hosts} host(s), "
                f"{g.hbm_per_device / GIB:.0f} GiB HBM per device")


def _known(generation: Generation) -> str:
    counts = sorted(c * generation.cores_per_chip if generation.cloud_counts_cores else c
                    for c in generation.topologies)
    return f"{generation.cloud_prefix}-N with N in {', '.join(map(str, counts))}"


def parse_slice(text: str, num_slices: int = 1) -> Slice:
    """A Cloud TPU accelerator type (`v3-32`, `v4-128`, `v5litepod-256`, `v5p-64`, `v6e-16`) or a libtpu topology
    string (`v4:4x4x4`, `v5e:16x16`); ValueError naming what is wrong and what would be right."""
    name = text.strip().lower()
    if num_slices < 1:
        raise ValueError(f"--slices {num_slices}: a positive number of slices.")
    generations = ", ".join(GENERATIONS)
    if match := re.fullmatch(r"([a-z0-9]+):([0-9]+(?:x[0-9]+)*)", name):
        generation = GENERATIONS.get(match.group(1))
        if generation is None:
            raise ValueError(f"--topology {text!r}: unknown TPU generation {match.group(1)!r}; known: {generations}.")
        dims = tuple(int(d) for d in match.group(2).split("x"))
        rank = len(next(iter(generation.topologies.values())).split("x"))
        if len(dims) != rank or min(dims) < 1:
            raise ValueError(f"--topology {text!r}: a {generation.name} topology has {rank} positive dimensions, "
                             f"e.g. {generation.name}:{generation.topologies[max(generation.topologies)]}.")
        return Slice(text, generation, dims, num_slices)
    if match := re.fullmatch(r"([a-z0-9]+)-([0-9]+)", name):
        generation = _BY_CLOUD_PREFIX.get(match.group(1))
        if generation is None:
            raise ValueError(f"--topology {text!r}: unknown TPU generation {match.group(1)!r}; known: "
                             f"{', '.join(g.cloud_prefix for g in GENERATIONS.values())}.")
        count = int(match.group(2))
        chips, rest = divmod(count, generation.cores_per_chip) if generation.cloud_counts_cores else (count, 0)
        if rest or chips not in generation.topologies:
            raise ValueError(f"--topology {text!r}: no such slice; {_known(generation)} (or a topology string "
                             f"such as {generation.name}:{generation.topologies[max(generation.topologies)]}).")
        dims = tuple(int(d) for d in generation.topologies[chips].split("x"))
        return Slice(text, generation, dims, num_slices)
    raise ValueError(f"--topology {text!r}: write a Cloud TPU slice (v3-32, v4-128, v5litepod-16, v5p-64, v6e-16) "
                     f"or a topology (v4:4x4x4); generations: {generations}.")
