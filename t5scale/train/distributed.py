"""Joining a multi-process run: every host runs the same command, and JAX connects them.

`maybe_initialize()` picks the first that applies, before anything asks JAX for devices:
- T5SCALE_DISTRIBUTED=0: never join (e.g. a one-host `t5scale eval` on a single worker of a pod).
- Explicit: T5SCALE_COORDINATOR=host:port, T5SCALE_NUM_PROCESSES=N, T5SCALE_PROCESS_ID=i (any cluster, or several
  processes on one machine: launch/local_multiprocess.sh).
- Open MPI: `mpirun -n N` with N > 1 (JAX reads OMPI_MCA_orte_hnp_uri and OMPI_COMM_WORLD_*).
- SLURM: an `srun` step of several tasks, i.e. the variables JAX's own SLURM detection reads are all set and
  SLURM_NTASKS > 1. JAX takes the coordinator from SLURM_STEP_NODELIST and gives each task the one GPU
  SLURM_LOCALID names (launch/slurm_gpu.sbatch: one task per GPU).
- Cloud TPU: JAX found libtpu and TPU chips at import. JAX then finds the workers itself: from the GCE metadata
  server on a TPU VM made by `gcloud compute tpus tpu-vm create` / `queued-resources create` (no
  TPU_WORKER_HOSTNAMES there), or from TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES on GKE. A single-host TPU VM
  joins as a one-process "cluster", which costs nothing.
Anything else is a single-process run and nothing happens. See docs/launch.md for what was checked and how.
"""

from __future__ import annotations

import logging
import os

import jax

logger = logging.getLogger(__name__)

# What JAX's SlurmCluster.is_env_present() requires (jax/_src/clusters/slurm_cluster.py). JAX checks Open MPI
# (OMPI_MCA_orte_hnp_uri), then SLURM, then Cloud TPU; so does detect().
SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
EXPLICIT_VARIABLES = ("T5SCALE_COORDINATOR", "T5SCALE_NUM_PROCESSES", "T5SCALE_PROCESS_ID")


def on_cloud_tpu() -> bool:
    """True where JAX's own Cloud TPU cluster detection can apply: `import jax` found libtpu and TPU chips on PCI
    (or JAX_FORCE_TPU_INIT). A private JAX flag, read defensively; False if a JAX release moves it."""
    try:
        from jax._src import cloud_tpu_init
    except ImportError:  # pragma: no cover - depends on the JAX release
        return False
    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def detect(env=None) -> str | None:
    """Which way this process joins: "explicit", "ompi", "slurm", "cloud_tpu", or None (a single process)."""
    env = os.environ if env is None else env
    if env.get("T5SCALE_DISTRIBUTED", "").lower() in ("0", "false", "no", "off"):
        return None
    if env.get("T5SCALE_COORDINATOR"):
        missing = [k for k in EXPLICIT_VARIABLES if not env.get(k)]
        if missing:
            raise ValueError(f"T5SCALE_COORDINATOR is set but {missing} are not; set all three.")
        return "explicit"
    if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "ompi"
    if all(k in env for k in SLURM_VARIABLES) and int(env["SLURM_NTASKS"]) > 1:
        return "slurm"
    if on_cloud_tpu():
        return "cloud_tpu"
    return None


def maybe_initialize() -> str | None:
    """Join the run (see the module docstring); returns how it joined, or None. A second call does nothing."""
    if jax.distributed.is_initialized():
        return None
    how = detect()
    if how == "explicit":
        env = os.environ
        if jax.config.jax_platforms in (None, "", "cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts talk over gloo
        jax.distributed.initialize(coordinator_address=env["T5SCALE_COORDINATOR"],
                                   num_processes=int(env["T5SCALE_NUM_PROCESSES"]),
                                   process_id=int(env["T5SCALE_PROCESS_ID"]))
    elif how in ("ompi", "slurm", "cloud_tpu"):
        jax.distributed.initialize()  # JAX's cluster auto-detection fills in all the arguments
    if how:
        logger.info("joined a multi-process run (%s)", how)
    return how
