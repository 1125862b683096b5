"""`t5scale sweep` end to end on two tiny runs: killed mid-sweep, the rerun skips the finished run and resumes
the interrupted one from its checkpoint; `results` rebuilt from the run dirs equals the table written live;
`pareto` and `curves` write their figures; `fit` refuses two points; `--list` and `--run_index` for clusters."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from t5scale.cli.main import main
from tests.testing import REPO

SWEEP = """
sweep_config.sweep_dir = '{dir}'
sweep_config.shapes = ['tiny-nl1-dm32-kv8-nh2-ff64', 'tiny-nl2-dm32-kv8-nh2-ff64']
sweep_config.budgets = [{{'train_steps': 6}}]
sweep_config.run_gin_files = ['runs/demo.gin']
sweep_config.bindings = ["TASK_FEATURE_LENGTHS={{'inputs': 32, 'targets': 8}}", 'BATCH_SIZE=4',
                         'train_config.save_every=2', 'train_config.log_every=1', 'train_config.eval_every=2',
                         'train_config.eval_batches=1', 'train_config.progress_bar=False']
"""
RUNS = ["tiny-nl1-dm32-kv8-nh2-ff64-steps6-seed0", "tiny-nl2-dm32-kv8-nh2-ff64-steps6-seed0"]


def sweep(gin_file, *extra, **popen):
    return subprocess.Popen([sys.executable, "-m", "t5scale", "sweep", f"--gin_file={gin_file}", *extra], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            **popen)


@pytest.fixture(scope="module")
def killed_and_rerun(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    gin_file = root / "sweep.gin"
    gin_file.write_text(SWEEP.format(dir=root / "runs"))
    first = sweep(gin_file)
    second_run = root / "runs" / RUNS[1]
    deadline = time.time() + 300
    while not (second_run / "checkpoint_2").exists():  # the first run is done, the second has a checkpoint
        assert first.poll() is None, first.communicate()[0][-3000:]
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the sweep and its training process
    first.wait()
    rerun = sweep(gin_file)
    out = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, out[-3000:]
    return root, out


@pytest.mark.slow  # the killed sweep takes ~70 s; .ci/run runs the slow tests
def test_a_killed_sweep_skips_finished_runs_and_resumes_the_interrupted_one(killed_and_rerun):
    root, out = killed_and_rerun
    assert f"[1/2] {RUNS[0]}: finished earlier, skipped" in out
    assert f"[2/2] {RUNS[1]}: resuming" in out and f"[2/2] {RUNS[1]}: finished" in out
    end = json.loads((root / "runs" / RUNS[1] / "train_end.json").read_text())
    assert end["step"] == 6 and end["start_step"] >= 2  # restored a checkpoint, did not start over
    logged = [json.loads(line)["step"] for line in (root / "runs" / RUNS[1] / "metrics.jsonl").open()]
    assert all(logged.count(step) == 1 for step in range(1, end["start_step"] + 1))  # not trained again


@pytest.mark.slow  # the killed sweep takes ~70 s; .ci/run runs the slow tests
def test_results_rebuilt_from_run_dirs_equal_the_live_table(killed_and_rerun, capsys):
    root, _ = killed_and_rerun
    live = json.loads((root / "runs" / "results.json").read_text())
    assert main(["results", str(root / "runs")]) == 0
    assert json.loads((root / "runs" / "results.json").read_text()) == live
    assert [row["name"] for row in live] == RUNS and all(row["steps"] == 6 for row in live)
    assert all(row["final_loss"] and row["step_time_s"] and row["train_seconds"] for row in live)
    assert RUNS[0] in capsys.readouterr().out


@pytest.mark.slow  # the killed sweep takes ~70 s; .ci/run runs the slow tests
def test_pareto_and_curves_write_figures_and_fit_refuses_two_points(killed_and_rerun, capsys):
    runs = killed_and_rerun[0] / "runs"
    assert main(["pareto", str(runs), "--cost", "params,flops"]) == 0
    assert main(["curves", str(runs), "--target_loss", "100"]) == 0
    for figure in ("pareto-params-flops.png", "curves.png"):
        assert (runs / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "frontier of params vs neg_log_perplexity" in out
    assert main(["fit", str(runs)]) == 2
    assert "2 runs cannot pin down 3 parameters; need at least 4" in capsys.readouterr().err


def test_list_prints_one_command_per_run_and_run_index_is_checked(tmp_path, capsys):
    gin_file = tmp_path / "sweep.gin"
    gin_file.write_text(SWEEP.format(dir=tmp_path / "runs"))
    assert main(["sweep", f"--gin_file={gin_file}", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"t5scale sweep --gin_file={gin_file} --run_index={i}" for i in range(2)]
    assert main(["sweep", f"--gin_file={gin_file}", "--run_index=2"]) == 2
    assert "--run_index=2: the sweep has runs 0..1" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # two stages of two processes each; .ci/run runs the slow tests
def test_a_sweep_fine_tunes_each_run_and_the_table_has_the_best_task_score_with_its_step(tmp_path, capsys):
    gin_file = tmp_path / "sweep.gin"
    gin_file.write_text(f"""
sweep_config.sweep_dir = '{tmp_path / "runs"}'
sweep_config.shapes = ['tiny-nl1-dm32-kv8-nh2-ff64']
sweep_config.budgets = [{{'train_steps': 2}}]
sweep_config.run_gin_files = ['runs/demo.gin']
sweep_config.bindings = ["TASK_FEATURE_LENGTHS={{'inputs': 32, 'targets': 8}}", 'BATCH_SIZE=4',
                         'train_config.progress_bar=False']
sweep_config.finetune_gin_files = ['runs/finetune.gin']
sweep_config.finetune_bindings = ["MIXTURE_OR_TASK_NAME='embedded_sst2'", 'TRAIN_STEPS=4', 'BATCH_SIZE=4',
                                  "TASK_FEATURE_LENGTHS={{'inputs': 32, 'targets': 4}}",
                                  'train_config.task_eval_every=2', 'eval_config.num_examples=4',
                                  'train_config.progress_bar=False']
""")
    assert main(["sweep", f"--gin_file={gin_file}"]) == 0
    run_dir = tmp_path / "runs" / "tiny-nl1-dm32-kv8-nh2-ff64-steps2-seed0"
    assert json.loads((run_dir / "finetune" / "train_end.json").read_text())["ended_by"] == "train_steps"
    (row,) = json.loads((tmp_path / "runs" / "results.json").read_text())
    evals = [json.loads(line) for line in (run_dir / "finetune" / "task_eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [2, 4]
    best = max(evals, key=lambda e: (e["tasks"]["embedded_sst2"]["accuracy"], -e["step"]))
    assert row["embedded_sst2/accuracy"] == best["tasks"]["embedded_sst2"]["accuracy"]
    assert row["embedded_sst2/accuracy@step"] == best["step"]
    capsys.readouterr()
    assert main(["sweep", f"--gin_file={gin_file}"]) == 0  # both stages done: skipped
    assert "finished earlier, skipped" in capsys.readouterr().out
