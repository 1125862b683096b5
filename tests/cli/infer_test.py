"""`t5scale infer` from the command line: t5x's gin macros or flags, a release and a compressed checkpoint decode
like the MODEL_DIR they came from, progress lines in a log and the summary line, and one line for each bad input."""

import json
import re

import pytest

import t5scale
from t5scale.cli import common
from t5scale.cli.main import main
from t5scale.compress.checkpoint import save_compressed
from t5scale.compress.compressed import compress_params
from t5scale.compress.settings import Setting
from t5scale.model.layout import flat_params
from tests.release.runs import STEP, TEXTS, make_model_dir

LENGTHS = "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 6}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-infer") / "run"
    make_model_dir(str(folder))
    return folder


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
    return str(tmp_path / "in.txt")


def predictions(folder) -> list[str]:
    return [json.loads(line)["prediction"] for path in sorted(folder.glob("predictions-*.jsonl"))
            for line in path.read_text().splitlines()]


def test_t5x_macros_decode_a_task_with_progress_lines_and_a_summary(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["infer", "--gin_file=runs/infer.gin", f"--gin.CHECKPOINT_PATH='{model_dir}'",
                 "--gin.MIXTURE_OR_TASK_NAME='embedded_sst2'", f"--gin.INFER_OUTPUT_DIR='{out}'", LENGTHS,
                 "--gin.BATCH_SIZE=2", "--gin.infer_config.log_every=2", "--split", "validation",
                 "--num_examples", "7", "--shards", "2"]) == 0
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.glob("predictions-*")) == ["predictions-00000-of-00002.jsonl",
                                                                 "predictions-00001-of-00002.jsonl"]
    assert len(predictions(out)) == 7
    # A log (stderr is no terminal here): one line per 2 batches of the 4, then the summary on stdout.
    lines = [line for line in captured.err.splitlines() if line.startswith("infer: ")]
    assert len(lines) == 2 and all(re.fullmatch(r"infer: \d/7 rows, \S+ rows/s, \S+ tokens/s, ETA \d:\d\d:\d\d", line)
                                   for line in lines), captured.err[-2000:]
    assert re.search(r"^infer: 7 rows, \d+ tokens, [\d.]+ s ", captured.out, re.M), captured.out


def test_a_release_and_a_float32_compressed_checkpoint_decode_like_their_model_dir(model_dir, tmp_path, inputs):
    args = ["--input_file", inputs, LENGTHS]
    assert main(["infer", "--checkpoint", str(model_dir), "--output_dir", str(tmp_path / "dir"), *args]) == 0
    t5scale.release(str(model_dir), str(tmp_path / "release"))
    assert main(["infer", "--checkpoint", str(tmp_path / "release"), "--output_dir", str(tmp_path / "rel"),
                 *args]) == 0
    model = t5scale.load(str(model_dir)).nnx_model
    setting = Setting(bits=None)
    save_compressed(str(tmp_path / "compressed"), model.cfg, *compress_params(flat_params(model), setting), setting,
                    f"{model_dir}/checkpoint_{STEP}", STEP)
    assert main(["infer", "--checkpoint", str(tmp_path / "compressed"), "--output_dir", str(tmp_path / "comp"),
                 *args]) == 0
    want = t5scale.load(str(model_dir)).generate(TEXTS, max_length=6, max_input_length=32)
    assert predictions(tmp_path / "dir") == predictions(tmp_path / "rel") == predictions(tmp_path / "comp") == want


def no_vocabulary(model_dir, tmp_path):
    """A copy of the MODEL_DIR whose config.json names no task (as a converted checkpoint's may)."""
    import shutil

    copy = tmp_path / "bare"
    shutil.copytree(model_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    del config["data"]
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("make_args, message", [
    (lambda m, t, i: ["--input_file", f"{t}/in.jsonl"], r"in.jsonl:1 has no field 'inputs' \(it has: text\)"),
    (lambda m, t, i: ["--input_file", f"{t}/empty.txt"], r"input files \S+empty.txt: no inputs"),
    (lambda m, t, i: ["--input_file", f"{t}/none-*.txt"], r"Input files \S+none-\*.txt match no file"),
    (lambda m, t, i: ["--task", "no_such_task"], r"Unknown task or mixture 'no_such_task'"),
    (lambda m, t, i: [], r"infer reads one source: set MIXTURE_OR_TASK_NAME, --tfds_name or --input_file"),
    (lambda m, t, i: ["--input_file", i, "--mode", "score"], r"--mode score needs --target_field"),
    (lambda m, t, i: ["--input_file", i, "--temperature", "0.5", "--beam_size", "2"],
     r"beam_size must be 1 when temperature > 0"),
    (lambda m, t, i: ["--input_file", i, "--checkpoint", str(no_vocabulary(m, t))],
     r"Cannot tell which vocabulary \S+bare\S* was trained with .* pass --vocabulary PATH"),
])
def test_bad_input_is_one_line_naming_the_culprit(model_dir, tmp_path, inputs, capsys, make_args, message):
    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "empty.txt").write_text("")
    args = make_args(model_dir, tmp_path, inputs)
    checkpoint = [] if "--checkpoint" in args else ["--checkpoint", str(model_dir)]
    assert main(["infer", *checkpoint, "--output_dir", str(tmp_path / "out"), *args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("t5scale: ")]
    assert len(err) == 1 and re.search(message, err[0]), err


def test_a_rerun_with_other_settings_into_the_same_folder_is_refused(model_dir, tmp_path, inputs, capsys):
    out = str(tmp_path / "out")
    assert main(["infer", "--checkpoint", str(model_dir), "--input_file", inputs, "--output_dir", out, LENGTHS]) == 0
    files = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert main(["infer", "--checkpoint", str(model_dir), "--input_file", inputs, "--output_dir", out, LENGTHS,
                 "--beam_size", "2"]) == 2
    assert "holds predictions made with other settings (beam_size differ" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == files


def test_the_demo_calls_it_with_keyword_options(model_dir, tmp_path, inputs):
    summary = common.run_command("infer", ["runs/infer.gin"], [LENGTHS.removeprefix("--gin.")],
                                 checkpoint=str(model_dir), input_file=inputs,
                                 output_dir=str(tmp_path / "out"))
    assert summary["rows"] == len(TEXTS) and len(predictions(tmp_path / "out")) == len(TEXTS)
