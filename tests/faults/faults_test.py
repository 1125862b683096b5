"""Fault injection: a run is killed (-9) again and again at random moments, including while an asynchronous
checkpoint is being written; SIGTERM arrives during a save; the filesystem fails a write. Each time nothing
committed is lost, every rerun resumes from the newest committed checkpoint, and the losses are those of the
uninterrupted run, bit for bit.

Torn checkpoints and data-state files, incompatible ones, and a NaN inside one microbatch are in
tests/train/trainer_test.py (marked `faults` too): `pytest -m faults` runs the whole suite.
"""

import errno
import json
import os
import pathlib
import random
import signal
import time

import pytest

from t5scale.train.checkpoints import CheckpointWriteError
from tests.train.run_training import assert_resumed_from, committed_steps, finish, losses, rerun, rows, run, start

pytestmark = pytest.mark.faults


def writing(model_dir: pathlib.Path) -> bool:
    """An asynchronous save is under way: orbax writes into a temporary directory and renames it when done."""
    return any(not p.name.removeprefix("checkpoint_").isdigit() for p in model_dir.glob("checkpoint_*"))


def kill_at_a_random_moment(process, model_dir, rng: random.Random, trained: int) -> str:
    """Once the process trains past step `trained`, SIGKILL it: half the time as soon as a checkpoint write is
    under way, else after a random delay. Returns when it was killed ('' if it finished first)."""
    deadline = time.time() + 300
    while (not rows(model_dir) or rows(model_dir)[-1][0] <= trained) and process.poll() is None:
        assert time.time() < deadline, "the run made no progress"
        time.sleep(0.01)
    moment = "during a checkpoint write" if rng.random() < 0.5 else f"{rng.uniform(0, 0.4):.2f} s later"
    if moment.startswith("during"):
        until = time.time() + 5
        while not writing(model_dir) and process.poll() is None and time.time() < until:
            time.sleep(0.002)
        moment = moment if writing(model_dir) else "after a step (no write seen)"
    else:
        time.sleep(float(moment.split()[0]))
    if process.poll() is not None:
        return ""
    process.send_signal(signal.SIGKILL)
    process.wait()
    return moment


# Both slow (~40 s, and minutes); .ci/run runs them after the default run, which keeps the resumes from torn and
# copied checkpoints (tests/train/trainer_test) and the SIGTERM during a save (below).
@pytest.mark.parametrize("kills, steps", [pytest.param(3, 30, marks=pytest.mark.slow),
                                          pytest.param(20, 150, marks=pytest.mark.slow)])
def test_repeated_kill_9_loses_nothing_committed_and_reproduces_the_uninterrupted_losses(tmp_path, kills, steps):
    reference = run(str(tmp_path / "reference"), steps, save_every=1000)
    assert reference.step == steps
    model_dir, rng, moments = tmp_path / "killed", random.Random(13), []
    # Every kill may land before the first commit (each during checkpoint_3's write): then kill again, so that the
    # final rerun resumes from a checkpoint rather than starting afresh.
    while len(moments) < kills or not committed_steps(model_dir):
        trained = rows(model_dir)[-1][0] if rows(model_dir) else 0
        before = len(rows(model_dir))
        committed = committed_steps(model_dir)
        process = start(model_dir, steps, "3")  # asynchronous checkpoints every 3 steps, the default kind
        moment = kill_at_a_random_moment(process, model_dir, rng, trained)
        assert moment, f"the run finished before kill {len(moments) + 1}; give it more steps"
        moments.append(moment)
        # This life started from the newest checkpoint committed before it: its first step is the one after.
        assert rows(model_dir)[before][0] == (committed[-1] if committed else 0) + 1
        assert max(committed_steps(model_dir), default=0) >= max(committed, default=0)  # nothing committed lost
    assert any(m.startswith("during") for m in moments), moments
    newest = committed_steps(model_dir)[-1]
    result, new_rows = rerun(model_dir, steps, save_every=3)
    assert_resumed_from(result, new_rows, newest, steps)
    assert losses(model_dir) == losses(tmp_path / "reference")  # every step, bit for bit


def test_sigterm_during_an_asynchronous_save_finishes_it_saves_the_stop_step_and_resumes(tmp_path):
    process = start(tmp_path, 1000, "2")
    deadline = time.time() + 300
    while not (in_flight := [p.name for p in tmp_path.glob("checkpoint_*.orbax-checkpoint-tmp*")]):
        assert process.poll() is None and time.time() < deadline, "no checkpoint write seen"
        time.sleep(0.002)
    process.send_signal(signal.SIGTERM)
    (end,) = finish([process])
    step, saving = end["step"], int(in_flight[0].split(".")[0].removeprefix("checkpoint_"))
    assert end["ended_by"] == "sigterm"
    # The save under way when the signal came was completed, then the stop step saved; nothing half-written.
    assert {saving, step} <= set(committed_steps(tmp_path)) and not writing(tmp_path)
    result, new_rows = rerun(tmp_path, step + 1, save_every=2)
    assert_resumed_from(result, new_rows, step, step + 1)
    run(str(tmp_path / "reference"), step + 1, save_every=1000)
    assert losses(tmp_path) == losses(tmp_path / "reference")


def test_a_filesystem_write_error_stops_the_run_saying_so_and_the_rerun_resumes(tmp_path, monkeypatch):
    from t5scale.train import checkpoints

    real_write_manifest = checkpoints._write_manifest

    def disk_full_at_step_4(path):
        if "checkpoint_4" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write_manifest(path)

    monkeypatch.setattr(checkpoints, "_write_manifest", disk_full_at_step_4)
    with pytest.raises(CheckpointWriteError, match=r"Writing checkpoint_4 to .* failed \(OSError: \[Errno 28\] No "
                                                   r"space left on device.*The committed checkpoints are intact "
                                                   r"\(newest: step 2\).*rerun the same command to resume"):
        run(str(tmp_path), 6)
    assert committed_steps(tmp_path) == [2]
    assert not (tmp_path / "train_end.json").exists()
    monkeypatch.undo()
    result, new_rows = rerun(tmp_path, 6)
    assert_resumed_from(result, new_rows, 2, 6)
    run(str(tmp_path / "reference"), 6, save_every=1000)
    assert losses(tmp_path) == losses(tmp_path / "reference")
    assert json.loads((tmp_path / "train_end.json").read_text())["start_step"] == 2
