"""How a process joins a multi-process run: the environment in, the jax.distributed.initialize call out.

jax.distributed.initialize is replaced by a recorder, so nothing connects anywhere; the real two-process join is
tests/train/trainer_test.py's and tests/launch/local_multiprocess_test.py's."""

import jax
import pytest

from t5scale.train import distributed

SLURM_STEP = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[001-002]", "SLURM_NTASKS": "16",
              "SLURM_PROCID": "3", "SLURM_LOCALID": "3"}
CLUSTER_VARIABLES = (*distributed.EXPLICIT_VARIABLES, *distributed.SLURM_VARIABLES, "T5SCALE_DISTRIBUTED",
                     "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "TPU_WORKER_ID", "TPU_SKIP_MDS_QUERY",
                     "MEGASCALE_COORDINATOR_ADDRESS", "MEGASCALE_NUM_SLICES", "MEGASCALE_SLICE_ID",
                     "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS",
                     "JAX_COORDINATOR_PORT", "JAX_LOCAL_DEVICE_IDS")


@pytest.fixture
def calls(monkeypatch):
    """Records each jax.distributed.initialize call's keyword arguments; starts from an environment with no
    cluster variables and not on a Cloud TPU."""
    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "on_cloud_tpu", lambda: False)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    recorded = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: recorded.append(kwargs))
    return recorded


def test_a_plain_process_joins_nothing(calls):
    assert distributed.maybe_initialize() is None
    assert calls == []


def test_explicit_variables_are_passed_through(calls, monkeypatch):
    monkeypatch.setenv("T5SCALE_COORDINATOR", "10.0.0.1:1234")
    monkeypatch.setenv("T5SCALE_NUM_PROCESSES", "4")
    monkeypatch.setenv("T5SCALE_PROCESS_ID", "2")
    monkeypatch.setenv("SLURM_NTASKS", "16")  # explicit wins over any detection
    assert distributed.maybe_initialize() == "explicit"
    assert calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2}]


def test_a_coordinator_without_the_other_two_is_one_clear_error(calls, monkeypatch):
    monkeypatch.setenv("T5SCALE_COORDINATOR", "127.0.0.1:1234")
    monkeypatch.setenv("T5SCALE_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match=r"\['T5SCALE_PROCESS_ID'\] are not; set all three"):
        distributed.maybe_initialize()
    assert calls == []


def test_an_srun_step_of_several_tasks_lets_jax_detect_slurm(calls, monkeypatch):
    for name, value in SLURM_STEP.items():
        monkeypatch.setenv(name, value)
    assert distributed.maybe_initialize() == "slurm"
    assert calls == [{}]


@pytest.mark.parametrize("size, joins", [("4", "ompi"), ("1", None)])
def test_mpirun_with_several_ranks_lets_jax_detect_open_mpi(calls, monkeypatch, size, joins):
    monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "1531576320.0;tcp://10.96.0.1:34911")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", size)
    assert distributed.maybe_initialize() == joins
    assert calls == ([{}] if joins else [])


@pytest.mark.parametrize("changes", [
    {"SLURM_NTASKS": "1"},  # `srun -n1`, or an sbatch of one task
    {"SLURM_STEP_NODELIST": None},  # the batch script itself, outside srun: JAX could not find a coordinator
    {"SLURM_LOCALID": None},
])
def test_slurm_without_a_multi_task_step_is_a_single_process(calls, monkeypatch, changes):
    for name, value in {**SLURM_STEP, **changes}.items():
        if value is not None:
            monkeypatch.setenv(name, value)
    assert distributed.maybe_initialize() is None
    assert calls == []


def test_a_cloud_tpu_vm_joins_without_tpu_worker_hostnames(calls, monkeypatch):
    # A pod made by `gcloud compute tpus tpu-vm create`: JAX reads the workers from the metadata server.
    monkeypatch.setattr(distributed, "on_cloud_tpu", lambda: True)
    assert distributed.maybe_initialize() == "cloud_tpu"
    assert calls == [{}]


def test_tpu_worker_hostnames_without_tpu_chips_is_not_a_tpu_pod(calls, monkeypatch):
    # JAX's GKE detection also needs libtpu + chips; initialize() would fail for want of a coordinator.
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "host-0,host-1")
    assert distributed.maybe_initialize() is None
    assert calls == []


def test_slurm_is_checked_before_tpu_like_jax_does(calls, monkeypatch):
    monkeypatch.setattr(distributed, "on_cloud_tpu", lambda: True)
    for name, value in SLURM_STEP.items():
        monkeypatch.setenv(name, value)
    assert distributed.maybe_initialize() == "slurm"


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_t5scale_distributed_0_opts_out_everywhere(calls, monkeypatch, value):
    monkeypatch.setenv("T5SCALE_DISTRIBUTED", value)
    monkeypatch.setattr(distributed, "on_cloud_tpu", lambda: True)
    monkeypatch.setenv("T5SCALE_COORDINATOR", "127.0.0.1:1234")
    assert distributed.maybe_initialize() is None
    assert calls == []


def test_a_second_call_in_the_same_process_does_nothing(calls, monkeypatch):
    monkeypatch.setattr(distributed, "on_cloud_tpu", lambda: True)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    assert distributed.maybe_initialize() is None
    assert calls == []


def test_this_machine_is_not_a_cloud_tpu():
    # The real check, unpatched: no libtpu / TPU chips here (a CPU test machine).
    assert distributed.on_cloud_tpu() is False


def test_our_slurm_variables_are_the_ones_jax_reads():
    from jax._src.clusters import slurm_cluster

    jax_reads = {slurm_cluster._JOBID_PARAM, slurm_cluster._NODE_LIST, slurm_cluster._PROCESS_COUNT,
                 slurm_cluster._PROCESS_ID, slurm_cluster._LOCAL_PROCESS_ID}
    assert set(distributed.SLURM_VARIABLES) == jax_reads


# What JAX's own auto-detection (what initialize() with no arguments runs) makes of those environments. Private
# JAX API, pinned to the installed release; the metadata server is faked, so this is JAX's logic, not a pod.
def auto_detect():
    from jax._src import clusters

    return clusters.ClusterEnv.auto_detect_unset_distributed_params(None, None, None, None, None, 10)


def test_jax_reads_the_srun_step_as_one_process_per_gpu(calls, monkeypatch):
    for name, value in SLURM_STEP.items():
        monkeypatch.setenv(name, value)
    port = 4242 % 2**12 + 65535 - 2**12 + 1
    assert auto_detect() == (f"gpu001:{port}", 16, 3, [3])


def test_jax_finds_a_tpu_vm_pods_workers_in_the_metadata_server(calls, monkeypatch):
    from jax._src.clusters import cloud_tpu_cluster

    metadata = {"agent-worker-number": "1", "worker-network-endpoints": "10.0.0.2,10.0.0.3,10.0.0.4,10.0.0.5",
                "tpu-env": "ACCELERATOR_TYPE: 'v4-32'\n"}
    monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
    monkeypatch.setattr(cloud_tpu_cluster, "get_metadata", lambda key: (metadata.get(key, ""), 200))
    assert auto_detect() == ("10.0.0.2:8482", 4, 1, None)


def test_jax_finds_a_gke_pods_workers_in_tpu_worker_hostnames(calls, monkeypatch):
    from jax._src.clusters import cloud_tpu_cluster

    monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
    # JAX tries the GCE TPU VM detection first: no agent-worker-number in GKE's metadata (404). Unset MEGASCALE_*
    # variables are still looked up in the metadata's tpu-env: an empty one.
    metadata = {"tpu-env": ("", 200)}
    monkeypatch.setattr(cloud_tpu_cluster, "get_metadata", lambda key: metadata.get(key, ("not found", 404)))
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.7,10.0.0.8")
    monkeypatch.setenv("TPU_WORKER_ID", "1")
    assert auto_detect() == ("10.0.0.7:8482", 2, 1, None)
