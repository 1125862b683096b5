"""Keep freed host memory in the process: glibc malloc tunables, applied by re-executing the command.

XLA on CPU allocates and frees GBs of temporaries every training step; glibc hands large blocks back to the
kernel (munmap, heap trimming), so the next step faults every page in again: ~1M page faults and ~1.9 s of system
time per step of the `small` shape at 8 x 512/114 on 2 cores (the step itself is ~6 s). With mmap off, no trimming
and one arena, the memory is reused: no faults after the first step. The price: the process keeps its peak
memory. Tunables can only be set before a process starts, hence the re-exec. Set GLIBC_TUNABLES yourself (any
value, even empty) to keep your own setting, or T5SCALE_SYSTEM_MALLOC=1 to leave malloc alone.

Kept memory is the high-water mark, so it also matters how many steps are in flight at once. With JAX's
asynchronous CPU dispatch the trainer's next step is enqueued, with its temporaries allocated, while the previous
one runs: two steps' temporaries at the peak (T5-small, 8 x 512/114: 8.4 GB resident instead of 3.5 GB, and the
page faults of growing into it). On a CPU the host is the device, so nothing is lost by running each computation
when it is called: `run_cpu_computations_inline` turns that on (JAX applies it to single-device computations only).
"""

from __future__ import annotations

import os
import sys

TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776:glibc.malloc.arena_max=1"


def reexec_with_reused_memory() -> None:
    """Restart this very command with TUNABLES, once, on Linux; returns at once if they are set or unwanted."""
    if (sys.platform != "linux" or "GLIBC_TUNABLES" in os.environ or os.environ.get("T5SCALE_SYSTEM_MALLOC")
            or not sys.orig_argv):
        return
    os.environ["GLIBC_TUNABLES"] = TUNABLES
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def run_cpu_computations_inline() -> None:
    """Run each single-device CPU computation when it is called, not queued behind the previous one (see above).
    Call before JAX runs anything; accelerators are not affected."""
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)
