"""t5scale.evaluate: pretrain -> `t5scale finetune` -> `t5scale eval` through the real task definitions (TFDS
mocked, the embedded vocabulary instead of T5's), of the checkpoint and of a compressed copy, and the summary's
averages and table."""

import json

import pytest
import seqio
import tensorflow_datasets as tfds

from t5scale.cli.main import main as cli_main
from t5scale.compress.checkpoint import save_compressed
from t5scale.compress.compressed import compress_params
from t5scale.compress.settings import Setting
from t5scale.data import finetune_tasks as ft
from t5scale.data import metrics as metrics_lib
from t5scale.data import registry, vocab
from t5scale.evaluate import EvalConfig, benchmark_averages, evaluate, format_table
from t5scale.model.layout import flat_params
from t5scale.weights.load import load_any
from tests.train.run_training import run

OFFLINE = "_offline"
TASKS = ("glue_rte_v002", "super_glue_cb_v102", ft.SQUAD)  # one GLUE, one SuperGLUE, SQuAD
MIXTURE = "e2e_rte_cb_squad_offline"
LENGTHS = "{'inputs': 64, 'targets': 16}"


@pytest.fixture(scope="module")
def mixture():
    names = [registry.copy_with_vocabulary(task, vocab.embedded_vocabulary(), OFFLINE) for task in TASKS]
    if MIXTURE not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(MIXTURE, [(name, 1.0) for name in names])
    return names


@pytest.fixture(scope="module")
def finetuned(mixture, tmp_path_factory):
    """A tiny model pretrained 2 steps, then fine-tuned 3 steps on the mixture by the CLI with finetune.gin."""
    pretrained = tmp_path_factory.mktemp("pretrained")
    run(str(pretrained), 2)
    model_dir = tmp_path_factory.mktemp("finetuned")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(seqio.TfdsDataSource, "num_input_examples", lambda self, split: None)  # mock: no sizes
    with tfds.testing.mock_data(num_examples=12):
        code = cli_main(["finetune", "--gin_file=runs/finetune.gin", f"--gin.MODEL_DIR='{model_dir}'",
                         f"--gin.INITIAL_CHECKPOINT_PATH='{pretrained}/checkpoint_2'", "--gin.TRAIN_STEPS=3",
                         f"--gin.MIXTURE_OR_TASK_NAME='{MIXTURE}'", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
                         "--gin.BATCH_SIZE=4"])
        assert code == 0
        yield model_dir, monkeypatch
    monkeypatch.undo()


def test_finetune_then_eval_writes_metrics_for_a_glue_a_super_glue_and_the_squad_task(finetuned, mixture, capsys):
    model_dir, _ = finetuned
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model"]["dropout_rate"] == 0.1  # finetune.gin's DROPOUT_RATE
    assert config["train"]["initial_checkpoint_path"].endswith("checkpoint_2")
    out = model_dir / "eval"
    code = cli_main(["eval", "--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH='{model_dir}'",
                     f"--gin.MIXTURE_OR_TASK_NAME='{MIXTURE}'", f"--gin.EVAL_OUTPUT_DIR='{out}'",
                     f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.BATCH_SIZE=5"])  # 12 rows: a padded batch
    assert code == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["step"] == 3 and summary["checkpoint"].endswith("checkpoint_3")
    assert set(summary["tasks"]) == set(mixture)
    glue, super_glue, squad = (summary["tasks"][name] for name in mixture)
    assert set(glue) == {"accuracy"}
    assert set(super_glue) == {"accuracy", "mean_3class_f1"}
    assert set(squad) == {"em", "f1"}
    for values in summary["tasks"].values():
        assert all(0 <= value <= 100 for value in values.values()), values
    assert summary["averages"] == {}  # only 2 of GLUE's 8 and SuperGLUE's 8 tasks
    for name in mixture:  # seqio's per-task predictions, one line per validation example
        assert len((out / f"{name}-000003.jsonl").read_text().splitlines()) == 12
    printed = capsys.readouterr().out
    assert "squad_v010_allanswers_offline  em" in printed


def test_beam_search_evaluates_too(finetuned, mixture, tmp_path):
    model_dir, _ = finetuned
    cfg = EvalConfig(checkpoint_path=str(model_dir / "checkpoint_3"), mixture_or_task_name=mixture[0],
                     output_dir=str(tmp_path), task_feature_lengths={"inputs": 64, "targets": 16}, batch_size=4,
                     beam_size=3, num_examples=6)
    summary = evaluate(cfg)
    assert set(summary["tasks"]) == {mixture[0]}
    assert len((tmp_path / f"{mixture[0]}-000003.jsonl").read_text().splitlines()) == 6


def test_sampling_draws_each_example_by_its_index_in_the_split_whatever_the_batch_size(finetuned, mixture):
    model_dir, _ = finetuned
    argv = ["eval", "--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH='{model_dir}'",
            f"--gin.MIXTURE_OR_TASK_NAME='{mixture[0]}'", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
            "--gin.eval_config.temperature=1.5", "--gin.eval_config.top_k=40"]
    predictions = {}
    for batch_size, seed in ((4, 3), (6, 3), (6, 4)):
        out = model_dir / f"sampled-{batch_size}-{seed}"
        assert cli_main([*argv, f"--gin.EVAL_OUTPUT_DIR='{out}'", f"--gin.BATCH_SIZE={batch_size}",
                         f"--gin.eval_config.seed={seed}"]) == 0
        rows = [json.loads(line) for line in (out / f"{mixture[0]}-000003.jsonl").read_text().splitlines()]
        predictions[batch_size, seed] = [(row["input"]["idx"], row["output"]) for row in rows]  # the text
    assert len(predictions[4, 3]) == 12 and predictions[4, 3] == predictions[6, 3]
    assert all(a != b for a, b in zip(predictions[6, 4], predictions[6, 3]))  # the seed decides the draws


@pytest.mark.parametrize("binding, message", [("top_p=1.5", "top_p must be in (0, 1]"),
                                              ("beam_size=4", "beam_size must be 1 when temperature > 0")])
def test_bad_sampling_settings_are_one_line_before_anything_is_read(binding, message, tmp_path, capsys):
    code = cli_main(["eval", "--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH='{tmp_path / 'none'}'",
                     "--gin.MIXTURE_OR_TASK_NAME='embedded_sst2'", f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval'}'",
                     "--gin.eval_config.temperature=0.8", f"--gin.eval_config.{binding}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("t5scale: error: ") and err.count("\n") == 1 and message in err, err


def test_the_predict_fn_samples_each_example_with_its_index_as_row_id():
    import numpy as np
    import tensorflow as tf

    from t5scale.evaluate import make_predict_fn
    from t5scale.model import decoding
    from tests.testing import random_model, random_tokens, tiny_config

    model = random_model(tiny_config(), seed=2)
    indices = np.array([7, 2, 9, 0, 5])  # seqio enumerates the split; here out of order
    features = {"encoder_input_tokens": random_tokens(np.random.default_rng(0), (5, 8)),
                "decoder_target_tokens": np.zeros((5, 6), np.int32)}
    dataset = tf.data.Dataset.from_tensor_slices((indices, features))
    expected, _ = decoding.sample(model, features["encoder_input_tokens"], 6, seed=11, row_ids=indices,
                                  temperature=0.9, top_p=0.8)
    for batch_size in (2, 5):
        cfg = EvalConfig(checkpoint_path="unused", mixture_or_task_name="unused", output_dir="unused",
                         batch_size=batch_size, temperature=0.9, top_p=0.8, seed=11)
        assert make_predict_fn(model, cfg)(dataset) == list(zip(indices.tolist(), np.asarray(expected).tolist()))
    with pytest.raises(ValueError, match="beam_size must be 1 when temperature > 0"):
        EvalConfig(checkpoint_path="unused", mixture_or_task_name="unused", output_dir="unused", beam_size=4,
                   temperature=0.9)


def test_eval_reads_a_compressed_checkpoint_under_its_source_step(finetuned, mixture, tmp_path):
    model_dir, _ = finetuned
    model, checkpoint, step = load_any(str(model_dir))
    folder = tmp_path / "int8"
    save_compressed(str(folder), model.cfg, *compress_params(flat_params(model), Setting(bits=8)), Setting(bits=8),
                    str(checkpoint), step)
    out = tmp_path / "eval"
    code = cli_main(["eval", "--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH='{folder}'",
                     f"--gin.MIXTURE_OR_TASK_NAME='{mixture[0]}'", f"--gin.EVAL_OUTPUT_DIR='{out}'",
                     f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.BATCH_SIZE=6"])
    assert code == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["step"] == 3 and summary["checkpoint"] == str(folder)
    assert set(summary["tasks"][mixture[0]]) == {"accuracy"}
    assert len((out / f"{mixture[0]}-000003.jsonl").read_text().splitlines()) == 12


def test_benchmark_averages_are_reported_once_every_task_is_there():
    tasks = {}
    for entry in metrics_lib.GLUE_AVERAGE_TASKS:
        for i, name in enumerate([entry] if isinstance(entry, str) else entry):
            tasks[name] = {"accuracy": 80.0 + 10 * i}  # MNLI-m 80, MNLI-mm 90: pooled into one entry of 85
    want = (7 * 80 + 85) / 8
    assert benchmark_averages(tasks) == {"glue_average": pytest.approx(want)}
    assert benchmark_averages({k: v for k, v in tasks.items() if k != "glue_rte_v002"}) == {}
    table = format_table({"tasks": tasks, "averages": benchmark_averages(tasks)})
    assert table.splitlines()[-1].split() == ["glue_average", f"{want:.2f}"]


@pytest.mark.slow  # three CLI processes; the row order across hosts is tested below by default
def test_two_processes_evaluate_to_the_one_process_predictions_and_metrics(tmp_path):
    """Every host runs the same `t5scale eval`: each decodes its half of every batch; process 0 writes."""
    import os
    import subprocess
    import sys

    from tests.testing import REPO

    run(str(tmp_path / "trained"), 1)
    argv = ["eval", "--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH='{tmp_path / 'trained'}'",
            "--gin.MIXTURE_OR_TASK_NAME='embedded_sst2'", "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}",
            "--gin.BATCH_SIZE=4", "--gin.eval_config.num_examples=10"]  # 10 rows: the last batch padded
    assert cli_main([*argv, f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'one'}'"]) == 0
    port = 20000 + (os.getpid() + 11) % 20000
    processes = [subprocess.Popen(
        [sys.executable, "-m", "t5scale", *argv, f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'two'}'"], cwd=REPO,
        env={**os.environ, "T5SCALE_COORDINATOR": f"127.0.0.1:{port}", "T5SCALE_NUM_PROCESSES": "2",
             "T5SCALE_PROCESS_ID": str(i)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outs[1][1][-3000:]
    assert "embedded_sst2  accuracy" in outs[0][0] and "accuracy" not in outs[1][0]  # process 0 prints the table
    one, two = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "two"))
    assert one["tasks"] == two["tasks"] and one["step"] == two["step"] == 1
    outputs = [[(r["input"]["idx"], r["output"]) for r in map(json.loads, (
        tmp_path / name / "embedded_sst2-000001.jsonl").read_text().splitlines())] for name in ("one", "two")]
    assert len(outputs[0]) == 10 and outputs[0] == outputs[1]  # (a 1-step model's outputs are all empty: the
    # order of rows across hosts is checked on outputs that differ per row below)


# Each process of a 2-process run: the rows of _over_batches for a per-row function of the inputs, as JSON.
OVER_BATCHES = """
import json, jax, jax.numpy as jnp, numpy as np, tensorflow as tf
from t5scale.train import distributed
from t5scale.train.partitioning import MeshConfig, make_mesh
from t5scale.evaluate import _over_batches
distributed.maybe_initialize()
rows = np.arange(10 * 3).reshape(10, 3)
dataset = tf.data.Dataset.from_tensor_slices((np.arange(10), {"encoder_input_tokens": rows}))
out = _over_batches(jax.jit(lambda b: b["encoder_input_tokens"] @ jnp.array([1, 10, 100])), dataset, 4,
                    make_mesh(MeshConfig()))
print(json.dumps([[i, v] for i, v in out]))
"""


def test_over_batches_gives_every_process_every_row_in_order(tmp_path):
    import os
    import subprocess
    import sys

    from tests.testing import REPO

    port = 20000 + (os.getpid() + 13) % 20000
    processes = [subprocess.Popen(
        [sys.executable, "-c", OVER_BATCHES], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "T5SCALE_COORDINATOR": f"127.0.0.1:{port}", "T5SCALE_NUM_PROCESSES": "2",
             "T5SCALE_PROCESS_ID": str(i)}) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outs[0][1][-2000:]
    expected = [[i, 3 * i + 10 * (3 * i + 1) + 100 * (3 * i + 2)] for i in range(10)]  # row i is [3i, 3i+1, 3i+2]
    assert [json.loads(out.strip().splitlines()[-1]) for out, _ in outs] == [expected, expected]


# --- Metrics end to end against hand-computed values (issue 27, item 6): a model whose predictions are known. ---


def test_evaluate_scores_known_predictions_over_real_tasks_as_computed_by_hand(mixture, tmp_path, monkeypatch):
    """Always "entailment" on RTE and CB, the reference answer itself on SQuAD: accuracy is the share of entailment
    labels in the split, CB's mean F1 over its 3 classes is that of entailment alone (2s / (1 + s)) / 3, SQuAD's EM
    and F1 are 100."""
    import numpy as np

    from t5scale import evaluate as evaluate_lib

    rte, cb, squad = mixture
    entailment = np.array(vocab.embedded_vocabulary().encode("entailment") + [1])  # then EOS

    def always_entailment(model, batch, **kwargs):
        rows = np.zeros_like(np.asarray(batch["decoder_target_tokens"]))
        rows[:, :entailment.size] = entailment
        return rows

    def the_reference_answer(model, batch, **kwargs):
        return np.asarray(batch["decoder_target_tokens"])

    monkeypatch.setattr(seqio.TfdsDataSource, "num_input_examples", lambda self, split: None)
    summaries = {}
    with tfds.testing.mock_data(num_examples=12):
        labels = {task: [int(x["label"]) for x in seqio.get_mixture_or_task(task).source.get_dataset(
            split="validation", shuffle=False).as_numpy_iterator()] for task in (rte, cb)}
        for task, predict in ((rte, always_entailment), (cb, always_entailment), (squad, the_reference_answer)):
            monkeypatch.setattr(evaluate_lib.decoding, "predict_batch", predict)
            cfg = EvalConfig(checkpoint_path="unused", mixture_or_task_name=task, output_dir=str(tmp_path / task),
                             batch_size=5)  # each feature's longest: no answer cut short
            summaries[task] = evaluate_lib.evaluate_model(None, 7, cfg, checkpoint="known")["tasks"][task]
    share = {task: np.mean(np.asarray(values) == 0) for task, values in labels.items()}  # label 0: entailment
    assert len(labels[rte]) == len(labels[cb]) == 12 and 0 < share[rte] < 1 and 0 < share[cb] < 1
    assert summaries[rte] == pytest.approx({"accuracy": 100 * share[rte]})
    assert summaries[cb] == pytest.approx({"accuracy": 100 * share[cb],
                                           "mean_3class_f1": 100 * 2 * share[cb] / (1 + share[cb]) / 3})
    assert summaries[squad] == pytest.approx({"em": 100.0, "f1": 100.0})


def test_a_task_with_metrics_over_scores_is_refused_naming_it(tmp_path):
    """t5scale decodes, as T5 does for every GLUE, SuperGLUE and SQuAD task; rank classification is not run."""
    import tensorflow as tf

    from t5scale.evaluate import evaluate_model

    name = "scored_by_rank_offline"
    if name not in seqio.TaskRegistry.names():
        features = {k: seqio.Feature(vocab.embedded_vocabulary()) for k in ("inputs", "targets")}
        seqio.TaskRegistry.add(
            name, source=seqio.FunctionDataSource(lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensors(
                {"inputs": "a question", "targets": "an answer"}), splits=["validation"]),
            preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos], output_features=features,
            metric_fns=[lambda targets, scores: {"mean_score": float(sum(scores))}])
    cfg = EvalConfig(checkpoint_path="unused", mixture_or_task_name=name, output_dir=str(tmp_path))
    with pytest.raises(ValueError, match=f"^{name}: metrics over scores"):
        evaluate_model(None, 0, cfg, checkpoint="unused")
