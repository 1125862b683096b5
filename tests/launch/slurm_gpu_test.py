"""launch/slurm_gpu.sbatch: the srun line and environment of a dry run; and, with a stand-in `srun` that runs the
tasks here, TERM forwarding + requeue, failures, and a real 2-task join through JAX's own SLURM detection."""

import os
import stat
import subprocess
import sys
import time

import pytest

from tests.launch import LAUNCH, run_script
from tests.testing import REPO

COMMAND = ["t5scale", "train", "--gin_file=models/small.gin", "--gin.MODEL_DIR='/shared/runs/x'"]
JOB = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "16", "SLURM_NTASKS_PER_NODE": "8",
       "SLURM_GPUS_ON_NODE": "8"}
UNSET = ["SLURM_JOB_ID", "SLURM_JOB_NUM_NODES", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_GPUS_ON_NODE",
         "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"]


@pytest.fixture(autouse=True)
def no_slurm_job(monkeypatch):
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)


def dry_run(*args, env=None):
    result = run_script("slurm_gpu.sbatch", *args, env={"DRY_RUN": "1", **(env or {})})
    assert result.returncode == 0, result.stderr
    return result


def test_dry_run_prints_the_environment_and_the_srun_line():
    result = dry_run(*COMMAND, env=JOB)
    assert result.stdout.splitlines() == [
        "SLURM_JOB_ID=4242", "SLURM_JOB_NUM_NODES=2", "SLURM_NTASKS=16", "SLURM_NTASKS_PER_NODE=8",
        "SLURM_GPUS_ON_NODE=8", "SLURM_ARRAY_TASK_ID=<unset>", "SLURM_RESTART_COUNT=<unset>",
        "# srun sets SLURM_PROCID, SLURM_LOCALID and SLURM_STEP_NODELIST for each task; JAX reads them",
        f"# JAX's coordinator: the step's first node, port {4242 % 4096 + 61440} (from SLURM_JOB_ID)",
        "srun --kill-on-bad-exit=1 t5scale train --gin_file=models/small.gin \"--gin.MODEL_DIR='/shared/runs/x'\""]
    assert result.stderr == ""


def test_the_dry_run_flag_works_like_DRY_RUN():
    result = run_script("slurm_gpu.sbatch", "--dry-run", *COMMAND)
    assert result.returncode == 0 and result.stdout.splitlines()[-1].startswith("srun --kill-on-bad-exit=1 t5scale")


def test_an_array_task_runs_its_sweep_point():
    result = dry_run("t5scale", "sweep", "--gin_file=sweeps/x.gin", env={**JOB, "SLURM_ARRAY_TASK_ID": "5"})
    assert "SLURM_ARRAY_TASK_ID=5" in result.stdout.splitlines()
    assert result.stdout.splitlines()[-1] == (
        "srun --kill-on-bad-exit=1 t5scale sweep --gin_file=sweeps/x.gin --run_index=5")
    # A --run_index the user gave wins.
    result = dry_run("t5scale", "sweep", "--run_index=2", env={"SLURM_ARRAY_TASK_ID": "5"})
    assert result.stdout.splitlines()[-1] == "srun --kill-on-bad-exit=1 t5scale sweep --run_index=2"


def test_warnings_for_a_node_local_model_dir_and_tasks_that_are_not_one_per_gpu():
    result = dry_run("t5scale", "train", "--gin.MODEL_DIR='/tmp/run'",
                     env={**JOB, "SLURM_NTASKS_PER_NODE": "1"})
    assert result.stderr.splitlines() == [
        "slurm_gpu.sbatch: warning: MODEL_DIR /tmp/run is node-local; other nodes and a requeued job will not see it",
        "slurm_gpu.sbatch: warning: 1 tasks per node but 8 GPUs; JAX expects one task per GPU"]
    assert dry_run("t5scale", "train", "--gin.MODEL_DIR='gs://b/tmp/run'", env=JOB).stderr == ""


def test_the_sbatch_header_asks_for_a_warning_signal_to_the_batch_shell_and_requeue():
    header = [line for line in (LAUNCH / "slurm_gpu.sbatch").read_text().splitlines() if line.startswith("#SBATCH")]
    assert {"#SBATCH --signal=B:TERM@120", "#SBATCH --requeue", "#SBATCH --open-mode=append",
            "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8"} <= set(header)


def test_help():
    result = run_script("slurm_gpu.sbatch", "--help")
    assert result.returncode == 0 and result.stdout.startswith("Usage: sbatch [sbatch options] launch/slurm_gpu.sbatch")


@pytest.mark.parametrize("args, message", [
    ((), "no COMMAND given (e.g. sbatch launch/slurm_gpu.sbatch t5scale train --gin_file=...)"),
    (("--nodes=2", "t5scale", "train"), "unknown option '--nodes=2' (sbatch options go before the script name)"),
])
def test_a_bad_or_missing_argument_is_one_clear_error(args, message):
    result = run_script("slurm_gpu.sbatch", *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"slurm_gpu.sbatch: {message}", "Try 'bash launch/slurm_gpu.sbatch --help'."]


# Stand-ins: `srun` runs FAKE_NTASKS tasks here with the variables srun gives each task and, like srun, passes a
# TERM on to them; `scontrol` only records its arguments.
FAKE_SRUN = r"""#!/usr/bin/env bash
echo "srun $*" >>"$FAKE/calls"
while [[ $1 == --* ]]; do shift; done
n=${FAKE_NTASKS:-1} pids=()
for ((i = 0; i < n; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NTASKS=$n SLURM_STEP_NODELIST=127.0.0.1 "$@" &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}"' TERM
rc=0
for pid in "${pids[@]}"; do
  while true; do
    status=0; wait "$pid" || status=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  ((status == 0)) || rc=$status
done
exit "$rc"
"""


@pytest.fixture
def job(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"srun": FAKE_SRUN, "scontrol": '#!/bin/sh\necho "scontrol $*" >>"$FAKE/calls"\n'}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    return tmp_path, {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE": str(tmp_path), "SLURM_JOB_ID": "4242"}


def test_term_to_the_batch_shell_reaches_every_task_then_the_job_is_requeued(job):
    tmp_path, env = job
    # Each task: "checkpoints" (writes saved) when it gets the TERM, then exits 0, like the trainer.
    task = ('trap "echo saved $SLURM_PROCID >>$FAKE/tasks; exit 0" TERM; echo started >>$FAKE/tasks; '
            'while :; do sleep 0.1; done')
    script = subprocess.Popen(["bash", str(LAUNCH / "slurm_gpu.sbatch"), "bash", "-c", task], cwd=REPO,
                              env={**os.environ, **env, "FAKE_NTASKS": "2"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    tasks = tmp_path / "tasks"
    deadline = time.time() + 30
    while not (tasks.exists() and tasks.read_text().count("started") == 2):
        assert time.time() < deadline and script.poll() is None
        time.sleep(0.1)
    script.send_signal(15)  # what --signal=B:TERM@120 does: the batch shell only
    out, err = script.communicate(timeout=30)
    assert script.returncode == 0, err
    assert sorted(line for line in tasks.read_text().splitlines() if line.startswith("saved")) == [
        "saved 0", "saved 1"]
    assert (tmp_path / "calls").read_text().splitlines()[-1] == "scontrol requeue 4242"
    assert "requeueing job 4242 (tasks exited 0)" in err


def test_no_requeue_after_max_requeues(job):
    tmp_path, env = job
    script = subprocess.Popen(["bash", str(LAUNCH / "slurm_gpu.sbatch"), "bash", "-c",
                               "trap 'exit 0' TERM; echo up >$FAKE/up; while :; do sleep 0.1; done"], cwd=REPO,
                              env={**os.environ, **env, "SLURM_RESTART_COUNT": "3", "MAX_REQUEUES": "3"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not (tmp_path / "up").exists():
        assert time.time() < deadline and script.poll() is None
        time.sleep(0.1)
    script.send_signal(15)
    out, err = script.communicate(timeout=30)
    assert script.returncode == 1 and "requeued 3 times already; not again" in err
    assert "scontrol" not in (tmp_path / "calls").read_text()


def test_a_failing_task_fails_the_job_without_requeue(job):
    tmp_path, env = job
    result = run_script("slurm_gpu.sbatch", "sh", "-c", "exit 3", env=env)
    assert result.returncode == 3
    assert (tmp_path / "calls").read_text().splitlines() == ["srun --kill-on-bad-exit=1 sh -c exit 3"]


def test_two_tasks_join_through_jax_s_own_slurm_detection(job):
    # The real thing minus SLURM: t5scale's maybe_initialize() sees a 2-task step, JAX's SlurmCluster finds the
    # coordinator (the step's first node, here 127.0.0.1), process ids and count; gloo connects the CPU processes.
    tmp_path, env = job
    port = str(20000 + (os.getpid() + 13) % 20000)
    program = ("import os, jax, numpy as np; from jax.experimental import multihost_utils as m;"
               "from t5scale.train import distributed; how = distributed.maybe_initialize(); i = jax.process_index();"
               "seen = m.process_allgather(np.int32(i)).tolist();"
               "open(f'{os.environ[\"FAKE\"]}/task_{i}', 'w').write(f'{how} {i} of {jax.process_count()} saw {seen}')")
    result = run_script("slurm_gpu.sbatch", sys.executable, "-c", program, timeout=120,
                        env={**env, "FAKE_NTASKS": "2", "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_PORT": port,
                             "JAX_COORDINATOR_BIND_ADDRESS": f"127.0.0.1:{port}"})
    assert result.returncode == 0, result.stderr[-3000:]
    for i in range(2):
        assert (tmp_path / f"task_{i}").read_text() == f"slurm {i} of 2 saw [0, 1]"
