"""The results table from run directories alone: a step logged twice counts once (its last entry), a torn last
line is skipped, compile windows are left out of step time, downstream scores are found below the run."""

import json

import pytest

from t5scale import shape
from t5scale.analysis import results
from t5scale.model.flops import count_params, training_flops

LENGTHS = {"inputs": 64, "targets": 16}


def make_run(root, name, shape_name, *, losses, evals, windows, ended_by="train_steps", downstream=None):
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
    (run / "train_end.json").write_text(json.dumps({"step": max(s for s, _ in losses), "ended_by": ended_by,
                                                    "train_seconds": 12.5, "compile_seconds": 3.0}))
    if downstream:
        (run / "finetune" / "eval").mkdir(parents=True)
        (run / "finetune" / "eval" / "metrics.json").write_text(json.dumps(downstream))
    return cfg


def test_rows_from_run_directories(tmp_path):
    cfg = make_run(tmp_path, "a", "tiny-nl2-dm64", losses=[(1, 5.0), (2, 4.0), (3, 3.5), (2, 4.1), (3, 3.4)],
                   evals=[(2, 4.5, 5.0), (3, 4.2, 8.0), (3, 4.0, 9.0)],
                   windows=[{"step": 1, "steps": 1, "seconds": 9.0, "target_tokens": 100, "compile": True},
                            {"step": 3, "steps": 2, "seconds": 1.0, "target_tokens": 200},
                            {"step": 3, "steps": 2, "seconds": 1.2, "target_tokens": 200}],  # rewritten on resume
                   downstream={"tasks": {"embedded_sst2": {"accuracy": 80.0}}, "averages": {}})
    (row,) = results.sweep_rows(str(tmp_path))
    params = count_params(cfg)
    assert (row["name"], row["shape"], row["NL" if "NL" in row else "EL"]) == ("a", "tiny-nl2-dm64", 2)
    assert row["params"] == params.total and row["params_non_embedding"] == params.encoder + params.decoder
    assert row["train_flops_per_example"] == training_flops(cfg, 64, 16).total
    assert row["flops_spent"] == row["train_flops_per_example"] * 8 * 3
    assert row["steps"] == 3 and row["train_tokens"] == 300  # steps 2 and 3 once each, with their last entries
    assert row["final_loss"] == 4.0 and row["best_loss"] == 4.0 and row["neg_log_perplexity"] == -4.0
    assert row["step_time_s"] == pytest.approx(0.6)  # the compiling window left out; step 3's last window
    assert row["target_tokens_per_s"] == pytest.approx(200 / 1.2)
    assert (row["train_seconds"], row["compile_seconds"]) == (12.5, 3.0)
    assert row["embedded_sst2/accuracy"] == 80.0


def test_csv_json_and_table_hold_every_run(tmp_path):
    for name, nl in (("b", 1), ("a", 2)):
        make_run(tmp_path, name, f"tiny-nl{nl}-dm64", losses=[(1, 5.0)], evals=[(1, 5.0 - nl, 1.0)],
                 windows=[{"step": 1, "steps": 1, "seconds": 1.0, "target_tokens": 10}])
    rows = results.sweep_rows(str(tmp_path))
    assert [r["name"] for r in rows] == ["a", "b"]
    csv_path, json_path = results.write_results(rows, str(tmp_path))
    assert json.loads(json_path.read_text()) == rows
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("name,shape,EL,DL,DM") and len(lines) == 3
    table = results.format_table(rows).splitlines()
    assert table[2].split()[0] == "a" and table[3].split()[0] == "b"


def test_curves_and_time_to_loss(tmp_path):
    make_run(tmp_path, "a", "tiny-nl1-dm64", losses=[(1, 5.0)], evals=[(10, 5.0, 2.0), (20, 4.0, 4.0)], windows=[])
    curves = results.curves(str(tmp_path))
    assert curves["a"]["step"] == [10, 20] and curves["a"]["train_seconds"] == [2.0, 4.0]
    hit, miss = results.time_to_loss(curves, 4.5)[0], results.time_to_loss(curves, 3.0)[0]
    assert (hit["step"], hit["train_seconds"]) == (20, 4.0) and miss["step"] is None


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
