"""`t5scale convert mtf|t5x`: an ordinary t5scale checkpoint out (loaded the way a warm start restores it), and
every user mistake as one line with exit code 2."""

import json
import shutil

import numpy as np
import pytest

from t5scale.cli.main import main
from t5scale.config import ModelConfig, released_shapes
from t5scale.train.checkpoints import load_model
from tests.convert.t5x_test import t5x_target, write_orbax
from tests.testing import FIXTURES, forward, random_model, tiny_config

MTF = FIXTURES / "mtf"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_convert_mtf_writes_a_checkpoint_that_loads_like_a_warm_start(capsys, tmp_path):
    code, out, _ = run(capsys, "convert", "mtf", str(MTF / "v1_0"), "--to", str(tmp_path / "out"))
    assert code == 0 and "INITIAL_CHECKPOINT_PATH" in out
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert ModelConfig.from_dict(saved["model"]).operators() == dict(EL=2, DL=3, DM=16, KV=6, NH=4, FF=20)
    assert saved["converted_from"]["format"] == "mtf" and saved["converted_from"]["step"] == 524288
    model, checkpoint = load_model(str(tmp_path / "out"))  # restore_params, as the trainer's warm start
    assert checkpoint.name == "checkpoint_524288"
    ref = np.load(MTF / "v1_0" / "reference.npz")
    logits = forward(model, ref["encoder_input_tokens"], ref["decoder_input_tokens"])
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=1e-4)
    code, _, err = run(capsys, "convert", "mtf", str(MTF / "v1_0"), "--to", str(tmp_path / "out"))
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1


def test_convert_t5x_with_its_shape(capsys, tmp_path):
    original = random_model(tiny_config(name=None), seed=2)
    write_orbax(tmp_path / "t5x" / "checkpoint_40", t5x_target(original))
    code, _, _ = run(capsys, "convert", "t5x", str(tmp_path / "t5x"), "--to", str(tmp_path / "out"))
    assert code == 0
    model, checkpoint = load_model(str(tmp_path / "out"))
    assert checkpoint.name == "checkpoint_40"
    x = np.arange(2, 16, dtype=np.int32).reshape(2, 7)
    np.testing.assert_allclose(forward(model, x, x[:, :3]), forward(original, x, x[:, :3]), atol=1e-6)
    code, _, err = run(capsys, "convert", "t5x", str(tmp_path / "t5x"), "--to", str(tmp_path / "o2"),
                       "--shape", "small")
    assert code == 2 and "disagree" in err and len(err.strip().splitlines()) == 1


def _fixture_copy(tmp_path, name="run"):
    target = tmp_path / name
    shutil.copytree(MTF / "v1_0", target)
    return target


@pytest.mark.parametrize("damage,expected", [
    ("folder", "disagree"),
    ("unknown", "unknown variable"),
    ("truncated", "truncated or corrupt"),
])
def test_bad_mesh_tf_input_is_one_line(damage, expected, capsys, tmp_path):
    if damage == "folder":
        folder = _fixture_copy(tmp_path, released_shapes()["base"].release_folder)
    else:
        folder = _fixture_copy(tmp_path)
    if damage == "unknown":
        from tests.convert.mtf_checkpoints import random_variables, write_checkpoint

        cfg = ModelConfig(num_encoder_layers=2, num_decoder_layers=3, d_model=16, d_kv=6, num_heads=4, d_ff=20,
                          vocab_size=64)
        variables = {**random_variables(cfg, 0), "encoder/block_000/layer_002/MoE/experts": np.zeros(2, np.float32)}
        for path in folder.glob("model.ckpt-*"):
            path.unlink()
        write_checkpoint(str(folder / "model.ckpt-9"), variables)
    if damage == "truncated":
        path = folder / "model.ckpt-524288.data-00000-of-00001"
        path.write_bytes(path.read_bytes()[:1000])
    code, out, err = run(capsys, "convert", "mtf", str(folder), "--to", str(tmp_path / "out"))
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_shapes_lists_params_for_every_release_table_row(capsys):
    names = sorted(released_shapes())
    code, out, _ = run(capsys, "shapes", *names, "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == len(names) == 170
    by_name = {row["name"]: row["params_m"] for row in rows}
    assert by_name["base-skv"] == 201.7 and by_name["small-shkv"] == 38.5 and by_name["xl-sh"] == 1643.6
