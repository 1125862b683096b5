"""`t5scale train` through the CLI: runs/pretrain.gin's t5x macros reach the run's dataclasses, and a default run
that cannot reach gs:// fails in one line before anything is written."""

import json
import os
import socket
import subprocess
import sys

import pytest

from t5scale.cli.main import main

TINY = ["--gin.MODEL_SHAPE='tiny'", "--gin.NL=1", "--gin.DM=32", "--gin.KV=8", "--gin.NH=2", "--gin.FF=48"]


def test_pretrain_gin_macros_configure_the_run(tmp_path, capsys):
    model_dir = tmp_path / "run"
    code = main(["train", "--gin_file=models/shape.gin", "--gin_file=runs/pretrain.gin", *TINY,
                 "--gin.MIXTURE_OR_TASK_NAME='embedded_span_corruption'", "--gin.BATCH_SIZE=4",
                 "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}", "--gin.TRAIN_STEPS=2",
                 f"--gin.MODEL_DIR='{model_dir}'", "--gin.train_config.progress_bar=False"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "stopped at step 2 (train_steps)" in out
    config = json.loads((model_dir / "config.json").read_text())
    assert (config["model"]["num_encoder_layers"], config["model"]["d_model"], config["model"]["d_ff"]) == (1, 32, 48)
    assert config["model"]["vocab_size"] == 2176  # the embedded vocabulary's 2100 ids, padded to 128
    assert config["data"]["mixture_or_task_name"] == "embedded_span_corruption"
    assert (config["data"]["batch_size"], config["data"]["task_feature_lengths"]) == (4, {"inputs": 32, "targets": 8})
    # pretrain.gin's own values: T5's optimizer and schedule, z-loss, checkpoint cadence.
    assert config["optim"]["schedule"].lower().endswith("rsqrt")
    assert (config["optim"]["learning_rate"], config["optim"]["warmup_steps"]) == (1.0, 10000)
    assert (config["train"]["z_loss"], config["train"]["save_every"], config["train"]["train_steps"]) == (1e-4, 5000, 2)
    assert "TRAIN_STEPS = 2" in (model_dir / "config.gin").read_text()
    steps = [json.loads(line)["step"] for line in (model_dir / "metrics.jsonl").open()]
    assert steps == [1, 2] and (model_dir / "checkpoint_2").is_dir()


def test_rerunning_a_finished_run_stops_at_once(tmp_path, capsys):
    """The second run resumes the finished checkpoint and runs no step (so it has no loss): exit 0, no crash."""
    argv = ["train", "--gin_file=models/shape.gin", "--gin_file=runs/pretrain.gin", *TINY,
            "--gin.MIXTURE_OR_TASK_NAME='embedded_span_corruption'", "--gin.BATCH_SIZE=4",  # the shapes of the
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}", "--gin.TRAIN_STEPS=1",  # test above: no compile
            f"--gin.MODEL_DIR='{tmp_path / 'run'}'", "--gin.train_config.progress_bar=False"]
    assert main(argv) == 0
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "stopped at step 1 (train_steps); last training loss none (no step ran: already finished)" in out


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_default_run_without_storage_access_is_one_line_and_writes_nothing(tmp_path):
    """T5's vocabulary lives on gs://; here the storage service is a closed port, as good as no network."""
    model_dir = tmp_path / "run"
    env = {**os.environ, "STORAGE_EMULATOR_HOST": f"127.0.0.1:{closed_port()}"}
    env.pop("T5_VOCAB_PATH", None)
    result = subprocess.run([sys.executable, "-m", "t5scale", "train", "--gin_file=models/small.gin",
                             "--gin_file=runs/pretrain.gin", f"--gin.MODEL_DIR='{model_dir}'"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        "t5scale: error: the vocabulary of task 'c4_v220_span_corruption' gs://t5-data/vocabs/cc_all.32000.100extra/"
        "sentencepiece.model: cannot reach 127.0.0.1 (Connection refused: no network here?). Copy it to this machine "
        "and set T5_VOCAB_PATH to the copy.\n")  # one line: no traceback, no TensorFlow start-up noise
    assert not model_dir.exists()


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny model pretrained one step on the embedded corpus (fine-tuning tests start from it)."""
    model_dir = tmp_path_factory.mktemp("pretrained")
    assert main(["train", "--gin_file=models/shape.gin", "--gin_file=runs/pretrain.gin", *TINY,
                 "--gin.MIXTURE_OR_TASK_NAME='embedded_span_corruption'", "--gin.BATCH_SIZE=4",
                 "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}", "--gin.TRAIN_STEPS=1",
                 f"--gin.MODEL_DIR='{model_dir}'", "--gin.train_config.progress_bar=False"]) == 0
    return model_dir


def test_finetune_prunes_with_runs_prune_gin(pretrained, tmp_path, capsys):
    model_dir = tmp_path / "pruned"
    argv = ["finetune", "--gin_file=runs/finetune.gin", "--gin_file=runs/prune.gin",
            f"--gin.INITIAL_CHECKPOINT_PATH='{pretrained}'", f"--gin.MODEL_DIR='{model_dir}'",
            "--gin.MIXTURE_OR_TASK_NAME='embedded_sst2'", "--gin.BATCH_SIZE=4",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}", "--gin.TRAIN_STEPS=3",
            "--gin.PRUNE_SPARSITY=0.75", "--gin.PRUNE_END_STEP=2", "--gin.PRUNE_EVERY=1",
            "--gin.train_config.progress_bar=False"]
    assert main(argv) == 0, capsys.readouterr().err
    pruning = json.loads((model_dir / "config.json").read_text())["train"]["pruning"]
    assert (pruning["final_sparsity"], pruning["end_step"], pruning["groups"]) == (
        0.75, 2, ["attention", "mlp", "embedding"])
    assert (model_dir / "checkpoint_3" / "masks").is_dir()
    from t5scale.model.layout import flat_params
    from t5scale.train.checkpoints import load_model

    kernel = flat_params(load_model(str(model_dir))[0])["encoder/layers/0/mlp/wi/kernel"]
    assert abs((kernel == 0).mean() - 0.75) < 1e-9
    # A missing sparsity is named with the flag that sets it.
    capsys.readouterr()
    assert main([a for a in argv if "PRUNE_SPARSITY" not in a] + [f"--gin.MODEL_DIR='{tmp_path / 'x'}'"]) == 2
    assert "--gin.PRUNE_SPARSITY=" in capsys.readouterr().err


def test_finetune_evaluates_the_task_every_n_steps_and_results_take_the_best(pretrained, tmp_path, capsys):
    from etils import epath

    from t5scale.analysis.results import downstream_scores, read_jsonl

    model_dir = tmp_path / "ft"
    assert main(["finetune", "--gin_file=runs/finetune.gin", f"--gin.INITIAL_CHECKPOINT_PATH='{pretrained}'",
                 f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='embedded_sst2'",
                 "--gin.BATCH_SIZE=4", "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}",
                 "--gin.TRAIN_STEPS=5", "--gin.train_config.task_eval_every=2", "--gin.eval_config.num_examples=8",
                 "--gin.train_config.progress_bar=False"]) == 0, capsys.readouterr().err
    rows = read_jsonl(epath.Path(model_dir) / "task_eval.jsonl")
    assert [r["step"] for r in rows] == [2, 4, 5]  # every 2 steps, and the final state
    assert all(set(r["tasks"]) == {"embedded_sst2"} and 0 <= r["tasks"]["embedded_sst2"]["accuracy"] <= 100
               for r in rows)
    summary = json.loads((model_dir / "task_eval" / "metrics.json").read_text())  # the latest, as `t5scale eval`
    assert summary["step"] == 5 and summary["tasks"] == rows[-1]["tasks"]
    assert len((model_dir / "task_eval" / "embedded_sst2-000004.jsonl").read_text().splitlines()) == 8
    best = max(rows, key=lambda r: (r["tasks"]["embedded_sst2"]["accuracy"], -r["step"]))
    scores = downstream_scores(epath.Path(model_dir))
    assert (scores["embedded_sst2/accuracy"], scores["embedded_sst2/accuracy@step"]) == (
        best["tasks"]["embedded_sst2"]["accuracy"], best["step"])
    assert "step 2: embedded_sst2/accuracy" in capsys.readouterr().out
