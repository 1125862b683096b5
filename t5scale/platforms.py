"""No TPU probe where there is no TPU: libtpu installed on a CPU-only machine leaves JAX on the CPU, quietly.

libtpu comes with the `[tpu]` extra, which `t5scale plan --topology` uses on any x86-64 Linux host to compile for
TPU slices. With libtpu in the environment, JAX's first call loads it and looks for chips; on a machine with none
that costs 0.2-0.4 s, prints libtpu's warnings (host bounds, worker hostnames) to stderr and takes
/tmp/libtpu_lockfile. When the user has not chosen platforms (JAX_PLATFORMS) and no TPU chip is on this machine's
PCI bus, t5scale tells JAX to use the CPU. Imports nothing heavy besides jax.
"""

from __future__ import annotations

import importlib.util
import os


def leave_out_absent_tpu() -> bool:
    """Set JAX's platforms to the CPU when libtpu is installed, no TPU is attached, no GPU plugin is installed and
    nobody chose platforms; True when it did."""
    if os.environ.get("JAX_PLATFORMS") or os.environ.get("TPU_ACCELERATOR_TYPE"):
        return False
    if importlib.util.find_spec("libtpu") is None and not os.environ.get("TPU_LIBRARY_PATH"):
        return False
    if any(importlib.util.find_spec(name) for name in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin")):
        return False  # a GPU machine: JAX's own choice stands
    import jax
    from jax._src import hardware_utils, xla_bridge

    if jax.config.jax_platforms or xla_bridge.backends_are_initialized():
        return False
    chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
    if chips:
        return False
    jax.config.update("jax_platforms", "cpu")
    return True
