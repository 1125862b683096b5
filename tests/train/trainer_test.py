"""The training loop end to end on a tiny shape: artifacts, exact resume after kill -9, SIGTERM, NaN, fallback,
budgets. Runs in separate processes where the test needs to kill one."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from t5scale.train.trainer import NonFiniteLossError, TrainConfig
from tests.testing import REPO
from tests.train.run_training import losses, run


def start(model_dir, steps, *extra, env=None):
    return subprocess.Popen([sys.executable, "-m", "tests.train.run_training", str(model_dir), str(steps), *extra],
                            cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: pathlib.Path, process, timeout=300):
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("uninterrupted")
    result = run(str(model_dir), 8)
    return model_dir, result


def test_a_run_writes_checkpoints_config_metrics_and_events(uninterrupted):
    model_dir, result = uninterrupted
    assert (result.step, result.ended_by) == (8, "train_steps")
    assert {p.name for p in model_dir.glob("checkpoint_*")} == {"checkpoint_4", "checkpoint_6", "checkpoint_8"}
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model"]["d_model"] == 32 and config["train"]["train_steps"] == 8
    assert list(model_dir.glob("events.out.tfevents.*"))
    assert json.loads((model_dir / "train_end.json").read_text())["ended_by"] == "train_steps"
    steps = losses(model_dir)
    assert sorted(steps) == list(range(1, 9))
    assert steps[8] < steps[1] - 0.5  # it learns


def test_rerun_after_kill_9_reproduces_the_uninterrupted_losses_exactly(uninterrupted, tmp_path):
    reference = losses(uninterrupted[0])
    process = start(tmp_path, 8)
    wait_for(tmp_path / "checkpoint_4", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    result = run(str(tmp_path), 8)  # the same command again
    assert result.step == 8
    assert losses(tmp_path) == reference  # bit for bit on CPU


def test_sigterm_checkpoints_then_exits(tmp_path):
    process = start(tmp_path, 1000, "1000")
    wait_for(tmp_path / "metrics.jsonl", process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    step = json.loads(out.strip().splitlines()[-1])["step"]
    assert json.loads(out.strip().splitlines()[-1])["ended_by"] == "sigterm" and 0 < step < 1000
    assert (tmp_path / f"checkpoint_{step}").exists()


def test_unreadable_latest_checkpoint_falls_back_to_the_previous(uninterrupted, tmp_path, caplog):
    # A copy of the finished run whose newest checkpoint is corrupted.
    subprocess.run(["cp", "-r", f"{uninterrupted[0]}/.", str(tmp_path)], check=True)
    for file in (tmp_path / "checkpoint_8" / "state").rglob("*"):
        if file.is_file():
            file.write_bytes(b"corrupted")
    result = run(str(tmp_path), 10)
    assert result.step == 10
    assert "checkpoint_8 is unreadable" in caplog.text
    # Resumed from step 6, so steps 7 and 8 were retrained exactly as before.
    assert losses(tmp_path)[8] == losses(uninterrupted[0])[8]


def test_initial_checkpoint_path_warm_starts_the_params_only(uninterrupted, tmp_path):
    trained = uninterrupted[0] / "checkpoint_8"
    result = run(str(tmp_path), 2, initial_checkpoint_path=str(trained))
    warm, cold = losses(tmp_path), losses(uninterrupted[0])
    assert result.step == 2  # a new run: step, optimizer state and data start afresh
    # Step 1 is the cold run's first batch, now seen by the trained params.
    assert warm[1] < cold[1] - 0.5 and warm[1] == pytest.approx(cold[8], abs=0.5)


def test_initial_checkpoint_path_that_is_not_a_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"INITIAL_CHECKPOINT_PATH {tmp_path} is neither a t5scale checkpoint"):
        run(str(tmp_path / "run"), 2, initial_checkpoint_path=str(tmp_path))


def test_initial_checkpoint_of_another_shape_is_refused_naming_the_fields(uninterrupted, tmp_path, monkeypatch):
    import tests.train.run_training as script

    monkeypatch.setattr(script, "MODEL", script.MODEL.replace(d_ff=128))
    with pytest.raises(ValueError, match=r"another architecture.*'d_ff': \(64, 128\)"):
        run(str(tmp_path), 2, initial_checkpoint_path=str(uninterrupted[0] / "checkpoint_8"))


def test_the_run_reports_throughput_and_mfu_against_a_measured_cpu_peak(uninterrupted):
    result = uninterrupted[1]
    assert result.target_tokens_per_s > 0 and 0 < result.mfu < 1
    assert result.mfu_peak == "float32 matmul measured on this CPU"


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import tests.train.run_training as script
    from t5scale.train.optim import OptimConfig

    monkeypatch.setattr(script, "OPTIM", OptimConfig(schedule="constant", learning_rate=1e38))
    with pytest.raises(NonFiniteLossError, match=r"Loss is (nan|inf) at step \d+.*last checkpoint is intact"):
        run(str(tmp_path), 20, save_every=1)
    saved = sorted(int(p.name.split("_")[1]) for p in tmp_path.glob("checkpoint_*"))
    bad_step = max(losses_or_empty(tmp_path), default=0) + 1
    assert all(step < bad_step for step in saved)


def losses_or_empty(model_dir):
    return losses(model_dir) if (model_dir / "metrics.jsonl").exists() else {}


@pytest.mark.parametrize("budget, ended_by", [
    (dict(flop_budget=1.0), "flop_budget"),  # spent after the first step
    (dict(time_budget_s=1e-9), "time_budget"),
])
def test_budgets_stop_the_run_and_say_which(tmp_path, budget, ended_by):
    result = run(str(tmp_path), 50, **budget)
    assert (result.step, result.ended_by) == (1, ended_by)
    assert json.loads((tmp_path / "train_end.json").read_text())["ended_by"] == ended_by


def test_bad_train_config_is_rejected():
    with pytest.raises(ValueError, match="must be positive"):
        TrainConfig(model_dir="/tmp/x", train_steps=0)


@pytest.mark.parametrize("data, model", [  # (2, 4) splits both batch and weights; the others: make test-all
    pytest.param(8, 1, marks=pytest.mark.slow), pytest.param(4, 2, marks=pytest.mark.slow), (2, 4)])
def test_sharded_meshes_on_8_devices_reproduce_the_single_device_losses(uninterrupted, tmp_path, data, model):
    process = start(tmp_path, 3, "100", str(data), str(model),
                    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    reference, sharded = losses(uninterrupted[0]), losses(tmp_path)
    for step in (1, 2, 3):
        assert sharded[step] == pytest.approx(reference[step], rel=1e-5)


def test_two_processes_reproduce_a_single_process_run_on_the_same_global_batches(tmp_path):
    # Reference: one process with 2 devices reading both hosts' shards, host 0's rows first.
    reference_dir = tmp_path / "one_process"
    reference = start(reference_dir, 4, "4", "2", "1", env={"EMULATE_HOSTS": "2",
                                                             "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert reference.wait(timeout=600) == 0, reference.stderr.read()[-3000:]
    tmp_path = tmp_path / "two_processes"
    port = 20000 + os.getpid() % 20000
    env = {"T5SCALE_COORDINATOR": f"127.0.0.1:{port}", "T5SCALE_NUM_PROCESSES": "2"}
    processes = [start(tmp_path, 4, "4", env={**env, "T5SCALE_PROCESS_ID": str(i)}) for i in range(2)]
    for process in processes:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1]) == {"step": 4, "ended_by": "train_steps"}
    assert (tmp_path / "checkpoint_4").exists()
    # Each process saved its own data position next to the shared checkpoint.
    assert {p.name for p in (tmp_path / "data_state" / "checkpoint_4").iterdir()} >= {
        "process_0.index", "process_1.index"}
    two, one = losses(tmp_path), losses(reference_dir)
    assert sorted(two) == [1, 2, 3, 4]
    for step in two:
        assert two[step] == pytest.approx(one[step], rel=1e-5)
