"""launch/local_multiprocess.sh: N processes joined on 127.0.0.1, logs per process, non-zero if any fails."""

import json
import os
import shlex
import subprocess
import sys
import time

import pytest

from t5scale.data.vocab import embedded_vocabulary
from tests.launch import run_script
from tests.testing import REPO
from tests.train.run_training import losses


def test_dry_run_prints_one_command_per_process():
    result = run_script("local_multiprocess.sh", "--dry-run", "-n", "2", "--port", "1234", "--log-dir", "logs/x",
                        "--", "t5scale", "train", "--gin_file=runs/demo.gin", "--gin.MODEL_DIR='/tmp/run'")
    assert result.returncode == 0, result.stderr
    command = "t5scale train --gin_file=runs/demo.gin \"--gin.MODEL_DIR='/tmp/run'\""
    assert result.stdout.splitlines() == [
        f"T5SCALE_COORDINATOR=127.0.0.1:1234 T5SCALE_NUM_PROCESSES=2 T5SCALE_PROCESS_ID={i} {command}"
        f" > logs/x/process_{i}.log 2>&1 &" for i in range(2)]
    # Each printed line is shell: the quoting gives back the original arguments.
    assert shlex.split(result.stdout.splitlines()[0])[4:7] == ["train", "--gin_file=runs/demo.gin",
                                                               "--gin.MODEL_DIR='/tmp/run'"]


def test_help():
    result = run_script("local_multiprocess.sh", "--help")
    assert result.returncode == 0 and result.stdout.startswith("Usage: launch/local_multiprocess.sh")


@pytest.mark.parametrize("args, message", [
    ((), "no COMMAND given"),
    (("--", ), "no COMMAND given"),
    (("-n", "0", "--", "true"), "--num-processes must be a positive integer, not '0'"),
    (("--port", "http", "--", "true"), "--port must be a port number, not 'http'"),
    (("--port",), "--port needs a value"),
    (("--bogus", "--", "true"), "unknown argument '--bogus'"),
])
def test_a_bad_argument_is_one_clear_error(args, message):
    result = run_script("local_multiprocess.sh", *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines()[0] == f"local_multiprocess.sh: {message}" + (
        " (the command goes after --)" if "unknown" in message else " (put it after --)" if "COMMAND" in message
        else "")


def test_one_failing_process_fails_the_launch_and_stops_the_others(tmp_path):
    script = ('echo "I am $T5SCALE_PROCESS_ID of $T5SCALE_NUM_PROCESSES"; '
              '[ "$T5SCALE_PROCESS_ID" != 1 ] || exit 7; sleep 60')
    start = time.monotonic()
    result = run_script("local_multiprocess.sh", "-n", "3", "--log-dir", str(tmp_path), "--", "bash", "-c", script)
    assert time.monotonic() - start < 50  # the others were stopped, not left to sleep 60 s
    assert result.returncode == 7
    assert "process 1 failed (exit 7); stopping the others" in result.stderr
    assert (tmp_path / "process_1.log").read_text() == "I am 1 of 3\n"
    assert all((tmp_path / f"process_{i}.log").exists() for i in range(3))


@pytest.mark.slow  # ~50 s: two trainers and a reference; .ci/run runs the slow tests
def test_two_cpu_processes_train_like_one_process_reading_the_same_global_batches(tmp_path):
    # As tests/train/trainer_test.py defines it: one process with 2 devices reading both hosts' shards (host 0's
    # rows first) is the reference. It runs while the launch does.
    embedded_vocabulary()  # into this session's cache now, not by all three processes at once
    steps = ("3", "3")  # STEPS SAVE_EVERY of tests/train/run_training.py
    reference_dir, launched_dir = tmp_path / "one_process", tmp_path / "two_processes"
    reference_log = tmp_path / "one_process.log"  # a file, not a pipe nobody reads while the launch runs
    with reference_log.open("w") as out:
        reference = subprocess.Popen(
            [sys.executable, "-m", "tests.train.run_training", str(reference_dir), *steps, "2", "1"], cwd=REPO,
            env={**os.environ, "EMULATE_HOSTS": "2", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
            stdout=out, stderr=subprocess.STDOUT)
    port = str(20000 + (os.getpid() + 7) % 20000)
    launched = run_script("local_multiprocess.sh", "-n", "2", "--port", port, "--log-dir", str(tmp_path / "logs"),
                          "--", sys.executable, "-m", "tests.train.run_training", str(launched_dir), *steps,
                          timeout=600)
    logs = [(tmp_path / "logs" / f"process_{i}.log").read_text() for i in range(2)]
    assert launched.returncode == 0, launched.stderr + logs[0][-3000:] + logs[1][-3000:]
    assert reference.wait(timeout=600) == 0, reference_log.read_text()[-3000:]
    for log in logs:
        assert json.loads(log.strip().splitlines()[-1]).items() >= {"step": 3, "ended_by": "train_steps"}.items()
    assert {p.name for p in (launched_dir / "data_state" / "checkpoint_3").iterdir()} >= {
        "process_0.index", "process_1.index"}
    two, one = losses(launched_dir), losses(reference_dir)
    assert sorted(two) == [1, 2, 3]
    for step in two:
        assert two[step] == pytest.approx(one[step], rel=1e-5)
