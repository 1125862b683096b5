"""The metrics logger's plain files: windows timed by the training clock (which stops for pauses and compiles),
validation rows, run info, and JSON lines appended without losing earlier ones, locally and on gs:// (an
emulator); TensorBoard files copied to a gs:// MODEL_DIR while the run goes on, not only at its end; progress as a
bar on a terminal, as lines in a log."""

import json
import sys

import pytest
from etils import epath

from t5scale.train import metrics


def test_append_lines_keeps_earlier_lines_locally_and_on_gcs(tmp_path, gcs):
    bucket = gcs.create_bucket()
    for path in (epath.Path(tmp_path) / "m.jsonl", epath.Path(f"gs://{bucket}/run/m.jsonl")):
        metrics.append_lines(path, [{"step": 1}])
        metrics.append_lines(path, [{"step": 2}, {"step": 3}])
        assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3], path


def tensorboard_losses(model_dir: str, local_copy) -> dict[int, float]:
    import tensorflow as tf

    losses = {}
    for remote in epath.Path(model_dir).glob("events.out.tfevents.*"):
        (local_copy / remote.name).write_bytes(remote.read_bytes())
        for event in tf.compat.v1.train.summary_iterator(str(local_copy / remote.name)):
            for value in event.summary.value:
                if value.tag == "loss":
                    losses[event.step] = float(tf.make_ndarray(value.tensor))
    return losses


def test_tensorboard_files_reach_a_gcs_model_dir_during_the_run_and_roll_over(tmp_path, gcs, monkeypatch):
    import jax.numpy as jnp

    bucket = gcs.create_bucket()
    model_dir = f"gs://{bucket}/run"
    logger = metrics.MetricsLogger(model_dir, flops_per_step=1.0, learning_rate_fn=lambda step: 0.1,
                                   peak_flops=None, total_steps=4, start_step=0, progress_bar=False)

    def log(step):
        logger.record(step, {"loss": jnp.float32(step), "accuracy": jnp.float32(0.5), "tokens": jnp.float32(10)})
        logger.flush(step)

    log(1)  # the first window is copied up at once: a run killed after it has its curve
    assert tensorboard_losses(model_dir, tmp_path) == {1: 1.0}
    log(2)  # within UPLOAD_EVERY_S of the last copy: local only
    assert tensorboard_losses(model_dir, tmp_path) == {1: 1.0}
    monkeypatch.setattr(metrics, "UPLOAD_EVERY_S", 0.0)
    monkeypatch.setattr(metrics, "ROLL_AT_BYTES", 1)  # every copy completes its file and starts another
    log(3)
    log(4)
    assert tensorboard_losses(model_dir, tmp_path) == {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}
    logger.write_eval(4, {"loss": 1.5, "accuracy": 0.6})
    logger.close()
    events = [n for n in gcs.objects(bucket) if "/events.out.tfevents." in n]
    assert len(events) >= 3, events
    assert [n for n in gcs.objects(bucket) if not n.startswith("run/events.")] == ["run/eval.jsonl",
                                                                                     "run/metrics.jsonl",
                                                                                     "run/throughput.jsonl"]


def test_the_logger_writes_windows_timed_by_the_training_clock_eval_rows_and_run_info(tmp_path, monkeypatch):
    import jax.numpy as jnp

    now = [100.0]
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: now[0])
    clock = metrics.TrainingClock(train_seconds=7.0, compile_seconds=2.5)  # resumed, 7 s in
    clock.resume()
    logger = metrics.MetricsLogger(str(tmp_path), flops_per_step=1.0, learning_rate_fn=lambda step: 0.1,
                                   peak_flops=None, total_steps=4, start_step=0, progress_bar=False, clock=clock)
    for step, seconds in ((1, 0.5), (2, 0.5), (3, 0.25), (4, 0.25)):
        logger.record(step, {"loss": jnp.float32(2.0), "accuracy": jnp.float32(0.5), "tokens": jnp.float32(10)})
        now[0] += seconds
        if step % 2 == 0:
            logger.flush(step)
    with clock.paused():
        now[0] += 60.0  # evaluating
        logger.write_eval(4, {"loss": 1.5, "accuracy": 0.6})
    logger.close()
    metrics.write_run_info(str(tmp_path))
    assert [json.loads(line) for line in (tmp_path / "throughput.jsonl").open()] == [
        {"step": 2, "steps": 2, "seconds": 1.0, "target_tokens": 20.0, "train_seconds": 8.0, "compile_seconds": 2.5,
         "after_start": True},
        {"step": 4, "steps": 2, "seconds": 0.5, "target_tokens": 20.0, "train_seconds": 8.5, "compile_seconds": 2.5}]
    assert logger.last_scalars["step_time_s"] == 0.25 and logger.last_scalars["target_tokens_per_s"] == 40.0
    assert [json.loads(line) for line in (tmp_path / "eval.jsonl").open()] == [
        {"step": 4, "loss": 1.5, "accuracy": 0.6, "train_seconds": 8.5}]
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["device_count"] >= 1 and info["platform"] == "cpu" and info["versions"]["jax"]


def test_the_training_clock_stops_for_pauses_and_counts_compiles_apart(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: now[0])
    clock = metrics.TrainingClock(train_seconds=10.0, compile_seconds=1.0)  # resumed
    now[0] += 9.0  # setting up: the clock starts with the first step
    clock.resume()
    now[0] += 2.0  # training
    with clock.compiling():
        now[0] += 30.0
    now[0] += 1.0
    with clock.paused():  # an evaluation or a checkpoint, which writes logs (a pause within a pause)
        now[0] += 5.0
        with clock.paused():
            now[0] += 1.0
        now[0] += 1.0
        assert clock.train_seconds == 13.0
    now[0] += 0.5
    assert (clock.train_seconds, clock.compile_seconds, clock.start_seconds) == (13.5, 31.0, 10.0)
    clock.pause()
    now[0] += 4.0
    assert clock.train_seconds == 13.5


@pytest.mark.parametrize("where", ["log", "terminal", "notebook"])
def test_progress_is_a_bar_on_a_terminal_and_one_line_per_window_in_a_log(tmp_path, capsys, monkeypatch, where):
    import jax.numpy as jnp

    monkeypatch.setattr(sys.stderr, "isatty", lambda: where == "terminal")
    if where == "notebook":  # Jupyter's stderr is no terminal, but it redraws a bar
        monkeypatch.setitem(sys.modules, "ipykernel", object())
    else:
        monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    terminal = where != "log"
    logger = metrics.MetricsLogger(str(tmp_path), flops_per_step=1.0, learning_rate_fn=lambda step: 0.1,
                                   peak_flops=None, total_steps=4, start_step=0, progress_bar=True)
    for step in (1, 2, 3, 4):
        logger.record(step, {"loss": jnp.float32(step), "accuracy": jnp.float32(0.5), "tokens": jnp.float32(10)})
        if step % 2 == 0:
            logger.flush(step)
    logger.write_eval(4, {"loss": 1.5, "accuracy": 0.6})
    logger.close()
    out, err = capsys.readouterr()
    assert "step 4: validation loss 1.5000, accuracy 0.6000\n" in out
    lines = [line for line in err.splitlines() if line.startswith("step ")]
    if terminal:
        assert not lines and "\r" in err  # tqdm redraws its bar in place
    else:
        assert [line.split(", tok_s")[0] for line in lines] == ["step 2/4: loss 1.500, acc 0.500",
                                                                 "step 4/4: loss 3.500, acc 0.500"]
        assert "\r" not in err and "it/s" not in err and "step/s" not in err
