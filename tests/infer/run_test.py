"""t5scale.infer.run: predictions over a JSONL file, a seqio task and a TFDS dataset equal what t5scale.load(...)
generates for the same texts, each log-likelihood is the model's (re-derived from its logits in numpy), score mode
equals LoadedModel.score, and a run killed with SIGKILL at a random moment then rerun leaves the files an
uninterrupted run writes, byte for byte."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds
from flax import nnx

import t5scale
from t5scale.cli.main import main as cli_main
from t5scale.infer.run import InferConfig, infer
from t5scale.model import decoding
from t5scale.model.layout import flat_params, load_flat_params
from tests.release.runs import STEP, TEXTS, make_model_dir
from tests.testing import REPO, forward

LENGTHS = {"inputs": 32, "targets": 8}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """make_model_dir's random model, its EOS embedding set to that of the token it decodes most often for the
    tests' texts: so that some rows end (with EOS) before the length limit and the others do not."""
    folder = tmp_path_factory.mktemp("infer") / "run"
    model = make_model_dir(str(folder))
    loaded = t5scale.load(str(folder))
    texts = [f"{text} ({i})" for i, text in enumerate(TEXTS * 5)]
    tokens = np.asarray(decoding.greedy_decode(model, loaded._padded(loaded.tokenize(texts, 32), 16), 8))
    flat = flat_params(model)
    embedding = flat["token_embedder/embedding"] = np.array(flat["token_embedder/embedding"])
    embedding[decoding.EOS_ID] = embedding[np.bincount(tokens.ravel()).argmax()]
    load_flat_params(model, flat)
    shutil.rmtree(folder / f"checkpoint_{STEP}")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(folder / f"checkpoint_{STEP}" / "state", {"params": nnx.state(model, nnx.Param)})
    return folder


@pytest.fixture(scope="module")
def loaded(model_dir):
    return t5scale.load(str(model_dir))


def rows_of(output_dir) -> list[dict]:
    return [json.loads(line) for path in sorted(output_dir.glob("predictions-*.jsonl"))
            for line in path.read_text().splitlines()]


def run(model_dir, output_dir, **config) -> dict:
    return infer(InferConfig(str(model_dir), str(output_dir), task_feature_lengths=LENGTHS, batch_size=4, **config))


def model_log_likelihoods(model, inputs: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """log p(tokens through the first EOS | inputs), from the model's teacher-forced logits, in numpy."""
    logits = np.asarray(forward(model, inputs, np.pad(tokens[:, :-1], ((0, 0), (1, 0)))), np.float64)
    logprobs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    picked = np.take_along_axis(logprobs, tokens[..., None], axis=-1)[..., 0]
    out = []
    for row, values in zip(tokens, picked):
        ends = np.flatnonzero(row == decoding.EOS_ID)
        out.append(values[:ends[0] + 1 if len(ends) else len(row)].sum())
    return np.array(out)


def test_jsonl_predictions_are_greedy_decoding_and_their_log_likelihoods_the_models(model_dir, loaded, tmp_path):
    texts = [f"{text} ({i})" for i, text in enumerate(TEXTS * 5)]  # 15 rows: batches of 4, the last padded
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"inputs": t, "key": f"k{i}"}) + "\n"
                                               for i, t in enumerate(texts)))
    summary = run(model_dir, tmp_path / "out", input_file=str(tmp_path / "in.jsonl"), id_field="key",
                  rows_per_shard=6)
    assert sorted(p.name for p in (tmp_path / "out").glob("predictions-*")) == [
        f"predictions-0000{i}-of-00003.jsonl" for i in range(3)]
    rows = rows_of(tmp_path / "out")
    assert [(r["index"], r["id"], r["input"]) for r in rows] == [(i, f"k{i}", t) for i, t in enumerate(texts)]
    assert [r["prediction"] for r in rows] == loaded.generate(texts, max_length=8, max_input_length=32)
    inputs = loaded._padded(loaded.tokenize(texts, 32), len(texts))
    tokens = np.asarray(decoding.greedy_decode(loaded.nnx_model, inputs, 8))
    ended = (tokens == decoding.EOS_ID).any(axis=1)
    assert 0 < ended.sum() < len(texts)  # rows that end before the limit, and rows that do not
    want = model_log_likelihoods(loaded.nnx_model, inputs, tokens)
    np.testing.assert_allclose([r["log_likelihood"] for r in rows], want, rtol=1e-4)
    assert summary["rows"] == 15 and summary["tokens"] == int(sum(
        min(len(row), (list(row) + [1]).index(1) + 1) for row in tokens))  # decoded tokens through EOS


def test_beam_search_predictions_equal_loads_beam_search(model_dir, loaded, tmp_path):
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
    run(model_dir, tmp_path / "out", input_file=str(tmp_path / "in.txt"), beam_size=3)
    assert [r["prediction"] for r in rows_of(tmp_path / "out")] == loaded.generate(
        TEXTS, max_length=8, beam_size=3, max_input_length=32)


def test_sampled_rows_depend_on_the_seed_and_their_index_not_on_the_batch(model_dir, loaded, tmp_path):
    texts = [f"{text} ({i})" for i, text in enumerate(TEXTS * 3)]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    sampling = dict(input_file=str(tmp_path / "in.txt"), temperature=1.0, top_k=50, seed=3)
    run(model_dir, tmp_path / "four", **sampling)
    infer(InferConfig(str(model_dir), str(tmp_path / "two"), task_feature_lengths=LENGTHS, batch_size=2, **sampling))
    four, two = rows_of(tmp_path / "four"), rows_of(tmp_path / "two")
    assert [r["prediction"] for r in four] == [r["prediction"] for r in two]  # the same text; the sums
    # round differently in programs of other shapes:
    np.testing.assert_allclose([r["log_likelihood"] for r in four], [r["log_likelihood"] for r in two], rtol=1e-5)
    inputs = loaded._padded(loaded.tokenize(texts, 32), len(texts))  # all rows in one batch, ids = their index
    tokens, log_likelihoods = decoding.sample(loaded.nnx_model, inputs, 8, seed=3, row_ids=np.arange(len(texts)),
                                              temperature=1.0, top_k=50)
    assert [r["prediction"] for r in four] == [loaded.detokenize(row) for row in np.asarray(tokens)]
    np.testing.assert_allclose([r["log_likelihood"] for r in four], log_likelihoods, rtol=1e-4)
    assert [r["prediction"] for r in four] != loaded.generate(texts, max_length=8, max_input_length=32)


def test_a_tasks_split_is_decoded_in_order(model_dir, loaded, tmp_path):
    from t5scale.data.finetune_tasks import demo_examples

    run(model_dir, tmp_path / "out", mixture_or_task_name="embedded_sst2", split="validation", num_examples=10)
    texts = [f"sst2 sentence: {e['sentence']}" for e in demo_examples("validation")[:10]]
    rows = rows_of(tmp_path / "out")
    assert [(r["index"], r["input"]) for r in rows] == list(enumerate(texts))
    assert [r["prediction"] for r in rows] == loaded.generate(texts, max_length=8, max_input_length=32)


def test_a_tfds_dataset_is_decoded_in_stored_order_with_its_ids(model_dir, loaded, tmp_path):
    with tfds.testing.mock_data(num_examples=6):
        examples = list(tfds.load("glue/sst2", split="validation", shuffle_files=False).as_numpy_iterator())
        run(model_dir, tmp_path / "out", tfds_name="glue/sst2", split="validation", input_field="sentence",
            id_field="idx")
    texts = [e["sentence"].decode() for e in examples]
    rows = rows_of(tmp_path / "out")
    assert [(r["id"], r["input"]) for r in rows] == [(int(e["idx"]), t) for e, t in zip(examples, texts)]
    assert [r["prediction"] for r in rows] == loaded.generate(texts, max_length=8, max_input_length=32)


def test_score_mode_gives_the_log_likelihood_of_each_target(model_dir, loaded, tmp_path):
    targets = ["positive", "negative", "a longer target text"]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"inputs": i, "label": t}) + "\n"
                                               for i, t in zip(TEXTS, targets)))
    run(model_dir, tmp_path / "out", input_file=str(tmp_path / "in.jsonl"), mode="score", target_field="label")
    rows = rows_of(tmp_path / "out")
    assert [(r["input"], r["target"]) for r in rows] == list(zip(TEXTS, targets)) and "prediction" not in rows[0]
    np.testing.assert_allclose([r["log_likelihood"] for r in rows], loaded.score(TEXTS, targets), rtol=1e-5)


def test_a_rerun_skips_finished_shards_and_redoes_a_missing_one_identically(model_dir, tmp_path):
    (tmp_path / "in.txt").write_text("\n".join(TEXTS * 3) + "\n")
    first = run(model_dir, tmp_path / "out", input_file=str(tmp_path / "in.txt"), rows_per_shard=4)
    files = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("predictions-*")}
    assert first["shards"] == 3 and first["skipped_shards"] == 0
    (tmp_path / "out" / "predictions-00001-of-00003.jsonl").unlink()
    again = run(model_dir, tmp_path / "out", input_file=str(tmp_path / "in.txt"), rows_per_shard=4)
    assert (again["skipped_shards"], again["rows"]) == (2, 4)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").glob("predictions-*")} == files


KILL_ROWS, KILL_SHARDS = 64, 8  # two batches of 4 per shard: a kill lands within a shard, between two, or in a write


@pytest.mark.faults
def test_sigkill_at_a_random_moment_then_rerun_gives_the_uninterrupted_files(model_dir, tmp_path):
    """The CLI in a subprocess is killed (SIGKILL) at a random moment after a random number of its shards appeared
    (the compiled programs come from the persistent cache the in-process run filled); a rerun finishes the job."""
    (tmp_path / "in.txt").write_text("".join(f"{TEXTS[i % 3]} {i}\n" for i in range(KILL_ROWS)))
    argv = ["infer", "--checkpoint", str(model_dir), "--input_file", str(tmp_path / "in.txt"), "--batch_size", "4",
            "--shards", str(KILL_SHARDS), "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}"]
    assert cli_main([*argv, "--output_dir", str(tmp_path / "whole")]) == 0
    killed, rng = tmp_path / "killed", random.Random(os.getpid())
    for attempt in range(3):  # on a busy machine the run may finish before the kill lands: then kill a new one
        shutil.rmtree(killed, ignore_errors=True)
        after = rng.randint(1, KILL_SHARDS - 2)
        process = subprocess.Popen([sys.executable, "-m", "t5scale", *argv, "--output_dir", str(killed)], cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while len(list(killed.glob("predictions-*"))) < after and process.poll() is None:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.05))
        process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate()
        written = len(list(killed.glob("predictions-*")))
        if process.returncode == -signal.SIGKILL and written < KILL_SHARDS:
            break
    assert process.returncode == -signal.SIGKILL and 0 < written < KILL_SHARDS, (written, stderr[-2000:])
    assert cli_main([*argv, "--output_dir", str(killed)]) == 0
    whole = {p.name: p.read_bytes() for p in (tmp_path / "whole").iterdir()}
    assert {p.name: p.read_bytes() for p in killed.iterdir()} == whole  # no temporary file left either
    assert [r["index"] for r in rows_of(killed)] == list(range(KILL_ROWS))


def two_processes(argv: list[str], port: int) -> list[subprocess.Popen]:
    return [subprocess.Popen(
        [sys.executable, "-m", "t5scale", *argv], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "T5SCALE_COORDINATOR": f"127.0.0.1:{port}", "T5SCALE_NUM_PROCESSES": "2",
             "T5SCALE_PROCESS_ID": str(i)}) for i in range(2)]


@pytest.mark.slow  # six CLI processes
@pytest.mark.faults
def test_two_processes_killed_with_sigkill_then_rerun_give_the_uninterrupted_files(model_dir, tmp_path):
    """Every host runs the same command; both are killed (a preempted pod) after a random number of shards, then
    rerun. The files equal an uninterrupted two-process run's, whose predictions are the one-process run's."""
    (tmp_path / "in.txt").write_text("".join(f"{TEXTS[i % 3]} {i}\n" for i in range(KILL_ROWS)))
    argv = ["infer", "--checkpoint", str(model_dir), "--input_file", str(tmp_path / "in.txt"), "--batch_size", "4",
            "--shards", str(KILL_SHARDS), "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}"]
    assert cli_main([*argv, "--output_dir", str(tmp_path / "one")]) == 0
    port = 20000 + (os.getpid() + 17) % 20000
    whole = two_processes([*argv, "--output_dir", str(tmp_path / "whole")], port)
    outs = [p.communicate(timeout=600) for p in whole]
    assert [p.returncode for p in whole] == [0, 0], outs[1][1][-3000:]

    killed, rng = tmp_path / "killed", random.Random(os.getpid())
    after = rng.randint(1, KILL_SHARDS - 2)
    processes = two_processes([*argv, "--output_dir", str(killed)], port + 1)
    while len(list(killed.glob("predictions-*"))) < after and all(p.poll() is None for p in processes):
        time.sleep(0.001)
    time.sleep(rng.uniform(0, 0.05))
    for p in processes:
        p.send_signal(signal.SIGKILL)
    outs = [p.communicate() for p in processes]
    written = len(list(killed.glob("predictions-*")))
    assert [p.returncode for p in processes] == [-signal.SIGKILL] * 2 and 0 < written < KILL_SHARDS, (
        written, outs[0][1][-2000:])
    rerun = two_processes([*argv, "--output_dir", str(killed)], port + 2)
    outs = [p.communicate(timeout=600) for p in rerun]
    assert [p.returncode for p in rerun] == [0, 0], outs[0][1][-3000:]
    assert {p.name: p.read_bytes() for p in killed.iterdir()} == {
        p.name: p.read_bytes() for p in (tmp_path / "whole").iterdir()}
    assert [r["index"] for r in rows_of(killed)] == list(range(KILL_ROWS))
    one, two = rows_of(tmp_path / "one"), rows_of(tmp_path / "whole")
    assert [r["prediction"] for r in one] == [r["prediction"] for r in two]
    np.testing.assert_allclose([r["log_likelihood"] for r in one], [r["log_likelihood"] for r in two], rtol=1e-5)
