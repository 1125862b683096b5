"""Collective traffic of one step, read from a compiled program's HLO text (`compiled.as_text()`).

Each collective is counted as often as it runs: an op inside a `while` body (a scanned layer stack) counts once per
iteration (XLA's `known_trip_count`). Bytes are per device, since an SPMD program is one device's program:

    buffer_bytes  the data the collective works on (all-gather: what it returns; reduce-scatter: what it is given)
    sent_bytes    what each device sends with ring algorithms: all-reduce 2(g-1)/g of the buffer, all-gather and
                  reduce-scatter and all-to-all (g-1)/g, collective-permute all of it; g = devices per group
"""

from __future__ import annotations

import dataclasses
import math
import re

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_BITS = {"pred": 8, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "f8e4m3fn": 8, "f8e5m2": 8, "s16": 16, "u16": 16,
         "f16": 16, "bf16": 16, "s32": 32, "u32": 32, "f32": 32, "s64": 64, "u64": 64, "f64": 64, "c64": 64,
         "c128": 128}

_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) .*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%\S+ = (.+?) ([a-z][a-z0-9-]*)\(")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_WHILE_BODY = re.compile(r"\bbody=%([^,\s]+)")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CALLEES = re.compile(r"\b(?:calls|branch_computations)=\{?([^}]*?)\}?(?:, [a-z_]+=|$)")


@dataclasses.dataclass
class Traffic:
    count: int = 0  # executions per step
    buffer_bytes: int = 0
    sent_bytes: float = 0.0

    def add(self, other: Traffic, times: int = 1) -> None:
        self.count += other.count * times
        self.buffer_bytes += other.buffer_bytes * times
        self.sent_bytes += other.sent_bytes * times


def _array_bytes(shapes: str) -> int:
    """Bytes of the arrays in an HLO result type: `f32[16,64]{1,0}` or a tuple `(f32[2], bf16[3,4])`."""
    total = 0
    for dtype, dims in _ARRAY.findall(shapes):
        if dtype in _BITS:
            total += math.prod(int(d) for d in dims.split(",") if d) * _BITS[dtype] // 8
    return total


def group_size(line: str, num_devices: int) -> int:
    """Devices per replica group, from any of XLA's three spellings (explicit lists, iota `[2,4]<=[8]`, or a
    named mesh `mesh['axis_0'=8,'axis_1'=1] {'axis_0'}`); collective-permute has none (pairs)."""
    if match := re.search(r"replica_groups=\{(\{[^}]*\})", line):
        return len(match.group(1).strip("{}").split(","))
    if match := re.search(r"replica_groups=\[([0-9,]+)\]<=", line):
        return int(match.group(1).split(",")[-1])
    if match := re.search(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", line):
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", match.group(1)))
        return math.prod(int(sizes[axis]) for axis in re.findall(r"'([^']+)'", match.group(2)))
    return num_devices


def _sent(kind: str, buffer: int, groups: int) -> float:
    if kind == "collective-permute":
        return float(buffer)
    share = (groups - 1) / groups if groups > 1 else 0.0
    return (2 if kind == "all-reduce" else 1) * share * buffer


def _parse(hlo: str, num_devices: int):
    """Per computation: its own collectives, and the computations it runs (callee, times)."""
    own: dict[str, dict[str, Traffic]] = {}
    calls: dict[str, list[tuple[str, int]]] = {}
    entry, current = None, None
    for line in hlo.splitlines():
        if match := _COMPUTATION.match(line):
            current = match.group(1)
            own[current], calls[current] = {}, []
            entry = current if line.startswith("ENTRY") else entry
            continue
        if current is None or not (match := _INSTRUCTION.match(line)):
            continue
        result, op = match.groups()
        kind = op.removesuffix("-start")
        if kind in KINDS and not op.endswith("-done"):
            buffer = _array_bytes(result)
            if op.endswith("-start"):  # async: the result tuple repeats the operands
                buffer //= 2
            groups = group_size(line, num_devices)
            if kind == "reduce-scatter":
                buffer *= groups  # the result is one device's shard of the reduced buffer
            traffic = own[current].setdefault(kind, Traffic())
            traffic.add(Traffic(1, buffer, _sent(kind, buffer, groups)))
        if op == "while" and (body := _WHILE_BODY.search(line)):
            trips = _TRIP_COUNT.search(line)
            calls[current].append((body.group(1), int(trips.group(1)) if trips else 1))
        elif op != "while":
            for group in _CALLEES.findall(line):
                calls[current].extend((name.strip().lstrip("%"), 1) for name in group.split(",") if name.strip())
    return entry, own, calls


def collective_traffic(hlo: str, num_devices: int) -> dict[str, Traffic]:
    """Per collective kind, what one step of the compiled program `hlo` moves, per device."""
    entry, own, calls = _parse(hlo, num_devices)
    memo: dict[str, dict[str, Traffic]] = {}

    def total(name: str) -> dict[str, Traffic]:
        if name not in memo:
            out = {kind: Traffic() for kind in KINDS}
            for kind, traffic in own.get(name, {}).items():
                out[kind].add(traffic)
            for callee, times in calls.get(name, []):
                for kind, traffic in total(callee).items():
                    out[kind].add(traffic, times)
            memo[name] = out
        return memo[name]

    return total(entry) if entry else {kind: Traffic() for kind in KINDS}
