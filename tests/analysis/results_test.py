"""The results table from run directories alone: the seconds, step times and curves of files a real (tiny) training
run wrote, compile left out; a step logged twice counts once (its last entry), a torn last line is skipped,
downstream scores are found below the run."""

import json
import shutil
import statistics
import time

import jax
import pytest

from t5scale import shape
from t5scale.analysis import results
from t5scale.model.flops import count_params, training_flops
from tests.train import run_training

LENGTHS = {"inputs": 64, "targets": 16}
SLOW_COMPILE_S = 2.0  # added to compiling the train step, so that leaving it out of training seconds shows


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A sweep folder with one real tiny run: 6 steps, a window every 2 steps, validation every 3; its compile of the
    train step takes SLOW_COMPILE_S longer than it would."""
    root = tmp_path_factory.mktemp("sweep")
    real_compile = jax.stages.Lowered.compile

    def slow_compile(lowered, *args, **kwargs):
        time.sleep(SLOW_COMPILE_S)
        return real_compile(lowered, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jax.stages.Lowered, "compile", slow_compile)
        result = run_training.run(str(root / "run"), 6, save_every=6, log_every=2, eval_every=3, eval_batches=1)
    assert result.train_seconds == json.loads((root / "run" / "train_end.json").read_text())["train_seconds"]
    return root


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_real_runs_seconds_leave_compiling_out(sweep, tmp_path):
    end = json.loads((sweep / "run" / "train_end.json").read_text())
    windows = read_lines(sweep / "run" / "throughput.jsonl")
    assert [(w["step"], w["steps"], w.get("after_start")) for w in windows] == [
        (2, 2, True), (3, 1, None), (4, 1, None), (6, 2, None)]  # the validation at step 3 ends a window
    # The step compiled once, timed apart from the training seconds.
    assert SLOW_COMPILE_S < end["compile_seconds"]
    assert end["train_seconds"] < end["compile_seconds"], (end, windows)  # 6 tiny steps against a slow compile
    # The windows read the same clock: each one's seconds are the training seconds since the one before.
    assert [w["seconds"] for w in windows] == pytest.approx(
        [w["train_seconds"] - s for w, s in zip(windows, [0.0, *[w["train_seconds"] for w in windows]])])
    assert windows[-1]["train_seconds"] == pytest.approx(end["train_seconds"], abs=0.01)
    assert all(w["compile_seconds"] == end["compile_seconds"] for w in windows)

    (row,) = results.sweep_rows(str(sweep))
    assert (row["train_seconds"], row["compile_seconds"], row["steps"]) == (
        end["train_seconds"], end["compile_seconds"], 6)
    steady = [w["seconds"] / w["steps"] for w in windows[1:]]  # the first ran a new compile's first steps
    assert row["step_time_s"] == statistics.median(steady)
    assert row["target_tokens_per_s"] == pytest.approx(
        sum(w["target_tokens"] for w in windows[1:]) / sum(w["seconds"] for w in windows[1:]))

    # A run still going (or killed) has no train_end.json: its seconds are the last window's.
    shutil.copytree(sweep / "run", tmp_path / "run")
    (tmp_path / "run" / "train_end.json").unlink()
    (going,) = results.sweep_rows(str(tmp_path))
    assert going["ended_by"] == "running or killed"
    assert (going["train_seconds"], going["compile_seconds"]) == (windows[-1]["train_seconds"],
                                                                 end["compile_seconds"])


def test_curves_and_time_to_loss_of_a_real_run_count_training_seconds(sweep, tmp_path):
    evals = read_lines(sweep / "run" / "eval.jsonl")
    windows = {w["step"]: w for w in read_lines(sweep / "run" / "throughput.jsonl")}
    curve = results.curves(str(sweep))["run"]
    assert curve["step"] == [3, 6] and curve["loss"] == [e["loss"] for e in evals]
    # The seconds at each validation: the training clock then, which the window ending at that step also read.
    assert curve["train_seconds"] == [e["train_seconds"] for e in evals]
    assert curve["train_seconds"] == pytest.approx([windows[s]["train_seconds"] for s in (3, 6)], abs=0.01)
    end = json.loads((sweep / "run" / "train_end.json").read_text())
    assert 0 < curve["train_seconds"][0] < curve["train_seconds"][1] <= end["train_seconds"]
    # An eval.jsonl without them (written before the trainer recorded them) reads them off the windows.
    (tmp_path / "run").mkdir()
    for name in ("config.json", "throughput.jsonl"):
        shutil.copy(sweep / "run" / name, tmp_path / "run" / name)
    (tmp_path / "run" / "eval.jsonl").write_text("".join(
        json.dumps({k: v for k, v in e.items() if k != "train_seconds"}) + "\n" for e in evals))
    older = results.curves(str(tmp_path))["run"]
    assert older["train_seconds"] == [windows[s]["train_seconds"] for s in (3, 6)]

    losses = curve["loss"]
    assert losses[0] > losses[1]  # it learns
    (row,) = results.time_to_loss({"run": curve}, (losses[0] + losses[1]) / 2)
    assert (row["step"], row["train_seconds"]) == (6, evals[1]["train_seconds"])
    assert row["flops"] == 6 * 8 * training_flops(run_training.MODEL, 32, 10).total  # 6 steps of 8 examples
    assert results.time_to_loss({"run": curve}, losses[1] - 1)[0]["step"] is None


def make_run(root, name, shape_name, *, losses, evals, windows, ended_by="train_steps", downstream=None):
    """A run directory written by hand, for what a real run rarely writes: a torn last line, rewritten steps."""
    run = root / name
    run.mkdir(parents=True)
    cfg = shape(shape_name).replace(vocab_size=2176)
    (run / "config.json").write_text(json.dumps({"model": cfg.to_dict(), "data": {
        "task_feature_lengths": LENGTHS, "batch_size": 8}}, default=str))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": v, "tokens": 100}) + "\n"
                                               for s, v in losses) + '{"step": 9, "lo')  # a killed writer
    (run / "eval.jsonl").write_text("".join(json.dumps({"step": s, "loss": v, "accuracy": 0.1, "train_seconds": t})
                                            + "\n" for s, v, t in evals))
    (run / "throughput.jsonl").write_text("".join(json.dumps(w) + "\n" for w in windows))
    (run / "train_end.json").write_text(json.dumps({"step": max(s for s, _ in losses), "ended_by": ended_by}))
    if downstream:
        (run / "finetune" / "eval").mkdir(parents=True)
        (run / "finetune" / "eval" / "metrics.json").write_text(json.dumps(downstream))
    return cfg


def window(step, steps, seconds, train_seconds, **extra):
    return {"step": step, "steps": steps, "seconds": seconds, "target_tokens": 100 * steps,
            "train_seconds": train_seconds, "compile_seconds": 3.0, **extra}


def test_rows_from_run_directories(tmp_path):
    cfg = make_run(tmp_path, "a", "tiny-nl2-dm64", losses=[(1, 5.0), (2, 4.0), (3, 3.5), (2, 4.1), (3, 3.4)],
                   evals=[(2, 4.5, 5.0), (3, 4.2, 8.0), (3, 4.0, 9.0)],
                   windows=[window(1, 1, 9.0, 9.0, after_start=True), window(3, 2, 1.0, 10.0),
                            window(3, 2, 1.2, 10.2)],  # rewritten on resume
                   downstream={"tasks": {"embedded_sst2": {"accuracy": 80.0}}, "averages": {}})
    (row,) = results.sweep_rows(str(tmp_path))
    params = count_params(cfg)
    assert (row["name"], row["shape"], row["NL" if "NL" in row else "EL"]) == ("a", "tiny-nl2-dm64", 2)
    assert row["params"] == params.total and row["params_non_embedding"] == params.encoder + params.decoder
    assert row["train_flops_per_example"] == training_flops(cfg, 64, 16).total
    assert row["flops_spent"] == row["train_flops_per_example"] * 8 * 3
    assert row["steps"] == 3 and row["train_tokens"] == 300  # steps 2 and 3 once each, with their last entries
    assert row["final_loss"] == 4.0 and row["best_loss"] == 4.0 and row["neg_log_perplexity"] == -4.0
    assert row["step_time_s"] == pytest.approx(0.6)  # the first window after a start left out; step 3's last one
    assert row["target_tokens_per_s"] == pytest.approx(200 / 1.2)
    assert (row["train_seconds"], row["compile_seconds"]) == (10.2, 3.0)
    assert row["embedded_sst2/accuracy"] == 80.0


def test_csv_json_and_table_hold_every_run(tmp_path):
    for name, nl in (("b", 1), ("a", 2)):
        make_run(tmp_path, name, f"tiny-nl{nl}-dm64", losses=[(1, 5.0)], evals=[(1, 5.0 - nl, 1.0)],
                 windows=[window(1, 1, 1.0, 1.0)])
    rows = results.sweep_rows(str(tmp_path))
    assert [r["name"] for r in rows] == ["a", "b"]
    csv_path, json_path = results.write_results(rows, str(tmp_path))
    assert json.loads(json_path.read_text()) == rows
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("name,shape,EL,DL,DM") and len(lines) == 3
    table = results.format_table(rows).splitlines()
    assert table[2].split()[0] == "a" and table[3].split()[0] == "b"


@pytest.mark.parametrize("read", [results.sweep_rows, results.curves])
def test_an_empty_or_missing_sweep_dir_is_a_clear_error(tmp_path, read):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="No runs in"):
        read(str(tmp_path))


def test_training_seconds_of_an_eval_between_logged_windows_come_from_the_window_before():
    assert results.seconds_at({10: 2.0, 20: 4.5}, 15) == 2.0
    assert results.seconds_at({10: 2.0, 20: 4.5}, 20) == 4.5
    assert results.seconds_at({10: 2.0}, 5) is None


def test_downstream_scores_are_the_best_over_fine_tuning_evaluations_with_their_step(tmp_path):
    """T5 reports the best validation score over fine-tuning checkpoints: per metric, with the step it came from."""
    run = tmp_path / "run"
    (run / "finetune" / "eval").mkdir(parents=True)
    evals = [{"step": 100, "tasks": {"cola": {"mcc": 20.0}, "sst2": {"accuracy": 80.0}}, "averages": {}},
             {"step": 200, "tasks": {"cola": {"mcc": 35.0}, "sst2": {"accuracy": 79.0}}, "averages": {}},
             {"step": 300, "tasks": {"cola": {"mcc": 35.0}, "sst2": {"accuracy": 78.0}}, "averages": {}},
             {"step": 200, "tasks": {"cola": {"mcc": 30.0}, "sst2": {"accuracy": 79.0}}, "averages": {}}]  # resumed
    (run / "finetune" / "task_eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    (run / "finetune" / "eval" / "metrics.json").write_text(json.dumps(
        {"step": 400, "tasks": {"cola": {"mcc": 10.0}, "sst2": {"accuracy": 81.0}}, "averages": {}}))
    assert results.downstream_scores(run) == {"cola/mcc": 35.0, "cola/mcc@step": 300,  # 200's last entry is 30
                                              "sst2/accuracy": 81.0, "sst2/accuracy@step": 400}
