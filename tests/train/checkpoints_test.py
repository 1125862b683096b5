"""t5scale.train.checkpoints: finding the checkpoint a path means, what is kept, and how a restore reads a saved
layout (trainer_test covers torn checkpoints, fallbacks and resumes end to end)."""

import pathlib

import jax
import numpy as np
import pytest

from t5scale.model.layout import convert_layer_layout
from t5scale.train.checkpoints import (
    STATE,
    Checkpointer,
    CheckpointReadError,
    IncompatibleCheckpointError,
    Layout,
    resolve_checkpoint,
)
from t5scale.train.trainer import TrainConfig


def make_checkpoints(model_dir, *steps):
    for step in steps:
        (model_dir / f"checkpoint_{step}" / STATE).mkdir(parents=True)


def test_a_model_dir_means_its_newest_checkpoint_by_step_number(tmp_path):
    make_checkpoints(tmp_path, 2, 10, 9)
    (tmp_path / "checkpoint_11").mkdir()  # not finished: no state in it
    assert resolve_checkpoint(str(tmp_path)) == tmp_path / "checkpoint_10"
    assert resolve_checkpoint(str(tmp_path / "checkpoint_2")) == tmp_path / "checkpoint_2"


def test_a_relative_path_becomes_absolute(tmp_path, monkeypatch):
    make_checkpoints(tmp_path / "run", 4)
    monkeypatch.chdir(tmp_path)
    resolved = resolve_checkpoint("run")
    assert resolved.is_absolute() and resolved == tmp_path / "run" / "checkpoint_4"


def test_a_path_without_checkpoints_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"INITIAL_CHECKPOINT_PATH .*empty is neither a t5scale checkpoint"):
        resolve_checkpoint(str(tmp_path / "empty"), "INITIAL_CHECKPOINT_PATH")


# A train-state-like tree, small enough to save in milliseconds: a stacked [layers=3, 4, 5] kernel, its optimizer
# moment and an Adafactor-style (1,) placeholder, and a step.
def stacked_state(scale=1.0):
    kernel = scale * np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    return {"step": np.int32(7), "params": {"layers": {"kernel": kernel}, "norm": np.ones(4, np.float32)},
            "opt": {"v": {"layers": {"kernel": kernel**2}}, "v_row": {"layers": {"kernel": np.zeros(1, np.float32)}}}}


def unrolled_state(state):
    per_layer = lambda x: {str(i): {"kernel": x[i]} for i in range(3)}  # noqa: E731
    return {"step": state["step"], "params": {"layers": per_layer(state["params"]["layers"]["kernel"]),
                                              "norm": state["params"]["norm"]},
            "opt": {"v": {"layers": per_layer(state["opt"]["v"]["layers"]["kernel"])},
                    "v_row": {"layers": {str(i): {"kernel": np.zeros(1, np.float32)} for i in range(3)}}}}


def abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), tree)


def write_data_state(path):
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(path + ".index").write_text("position")


def save_steps(model_dir, steps, state, masks=None, **options):
    checkpointer = Checkpointer(str(model_dir), async_save=False, **options)
    for step in steps:
        checkpointer.save(step, state, {"step": step}, write_data_state, masks=masks)
    checkpointer.close()


def test_keep_every_keeps_those_steps_for_good_beside_the_newest(tmp_path):
    save_steps(tmp_path, range(1, 11), stacked_state(), keep=2, keep_every=4)
    assert Checkpointer(str(tmp_path)).steps() == [4, 8, 9, 10]
    # The data positions of deleted checkpoints go with them.
    assert sorted(p.name for p in (tmp_path / "data_state").iterdir()) == [
        "checkpoint_10", "checkpoint_4", "checkpoint_8", "checkpoint_9"]


def test_without_keep_every_only_the_newest_stay(tmp_path):
    save_steps(tmp_path, range(1, 6), stacked_state(), keep=2)
    assert Checkpointer(str(tmp_path)).steps() == [4, 5]


def test_keep_every_must_be_positive():
    with pytest.raises(ValueError, match="keep_every must be positive or None, got 0"):
        TrainConfig(model_dir="/tmp/x", train_steps=1, keep_every=0)


def test_a_checkpoint_of_the_other_layer_layout_restores_through_its_converter(tmp_path):
    save_steps(tmp_path, [3], stacked_state())
    run_state = abstract(unrolled_state(stacked_state()))
    layout = Layout("scan_layers=True", lambda: abstract(stacked_state()),
                    lambda restored: convert_layer_layout(restored, run_state))
    step, state, record, _ = Checkpointer(str(tmp_path)).restore_latest(run_state, lambda path: None,
                                                                        layouts=(layout,))
    assert (step, record) == (3, {"step": 3})
    expected = unrolled_state(stacked_state())
    jax.tree.map(np.testing.assert_array_equal, state, expected)
    # And back: per-layer arrays stack again, placeholders stay (1,).
    back = convert_layer_layout(state, abstract(stacked_state()))
    jax.tree.map(np.testing.assert_array_equal, back, stacked_state())


def test_a_checkpoint_of_another_shape_is_incompatible_not_torn(tmp_path):
    save_steps(tmp_path, [3], stacked_state())
    other = stacked_state()
    other["params"]["norm"] = np.ones(6, np.float32)
    with pytest.raises(IncompatibleCheckpointError,
                       match=r"checkpoint_3 does not fit this run: it has 1 arrays of another shape or dtype, e\.g\. "
                             r"params/norm is float32\[4\] there and float32\[6\] here\. Settings changed since it "
                             r"was written: model\.d \(4 -> 6\)\. To proceed: .*restart_from_scratch=True"):
        Checkpointer(str(tmp_path)).restore_latest(abstract(other), lambda path: None,
                                                   settings_changed="model.d (4 -> 6)")


def test_data_positions_of_another_process_count_stop_the_restore_unless_the_caller_can_place_the_data(tmp_path):
    save_steps(tmp_path, [3], stacked_state())
    (tmp_path / "data_state" / "checkpoint_3" / "process_1.manifest.json").write_text("{}")
    with pytest.raises(IncompatibleCheckpointError, match=r"checkpoint_3 holds the data positions of 2 processes "
                                                          r"and this run has 1; a data position cannot be split"):
        Checkpointer(str(tmp_path)).restore_latest(abstract(stacked_state()), lambda path: None)
    placed = []
    step, _, _, _ = Checkpointer(str(tmp_path)).restore_latest(abstract(stacked_state()), lambda path: None,
                                                               derive_data_position=placed.append)
    assert step == 3 and placed == [3]


def masks_of(state):
    """Masks in the params' tree: a bool array for the pruned kernel, a shape-() placeholder for the norm."""
    return {"layers": {"kernel": state["params"]["layers"]["kernel"] % 2 == 0}, "norm": np.ones((), bool)}


def test_masks_are_their_own_item_and_restore_with_the_state(tmp_path):
    save_steps(tmp_path, [3], stacked_state(), masks=masks_of(stacked_state()))
    assert (tmp_path / "checkpoint_3" / "masks").is_dir() and (tmp_path / "checkpoint_3" / STATE).is_dir()
    step, state, _, masks = Checkpointer(str(tmp_path)).restore_latest(
        abstract(stacked_state()), lambda path: None, abstract_masks=abstract(masks_of(stacked_state())))
    assert step == 3
    jax.tree.map(np.testing.assert_array_equal, masks, masks_of(stacked_state()))


def test_masks_convert_with_the_layer_layout(tmp_path):
    save_steps(tmp_path, [3], stacked_state(), masks=masks_of(stacked_state()))
    unrolled_masks = {"layers": {str(i): {"kernel": masks_of(stacked_state())["layers"]["kernel"][i]}
                                 for i in range(3)}, "norm": np.ones((), bool)}
    run_state, run_masks = abstract(unrolled_state(stacked_state())), abstract(unrolled_masks)
    layout = Layout("scan_layers=True", lambda: abstract(stacked_state()),
                    lambda restored: convert_layer_layout(restored, run_state),
                    lambda: abstract(masks_of(stacked_state())),
                    lambda restored: convert_layer_layout(restored, run_masks))
    _, _, _, masks = Checkpointer(str(tmp_path)).restore_latest(run_state, lambda path: None,
                                                                abstract_masks=run_masks, layouts=(layout,))
    jax.tree.map(np.testing.assert_array_equal, masks, unrolled_masks)


def test_a_pruning_run_refuses_a_checkpoint_without_masks_and_a_dense_run_one_with_them(tmp_path):
    save_steps(tmp_path / "dense", [3], stacked_state())
    with pytest.raises(IncompatibleCheckpointError, match=r"checkpoint_3 has no pruning masks and this run prunes"):
        Checkpointer(str(tmp_path / "dense")).restore_latest(abstract(stacked_state()), lambda path: None,
                                                             abstract_masks=abstract(masks_of(stacked_state())))
    save_steps(tmp_path / "pruned", [3], stacked_state(), masks=masks_of(stacked_state()))
    with pytest.raises(IncompatibleCheckpointError, match=r"checkpoint_3 holds pruning masks .* this run does not"):
        Checkpointer(str(tmp_path / "pruned")).restore_latest(abstract(stacked_state()), lambda path: None)
    other = masks_of(stacked_state())
    other["norm"] = np.ones(4, bool)  # another choice of pruned parameters
    with pytest.raises(IncompatibleCheckpointError, match=r"pruning masks in .*checkpoint_3 do not fit this run"):
        Checkpointer(str(tmp_path / "pruned")).restore_latest(abstract(stacked_state()), lambda path: None,
                                                              abstract_masks=abstract(other))


def test_a_storage_failure_reading_the_data_position_is_not_called_incompatible(tmp_path):
    save_steps(tmp_path, [3], stacked_state())

    def outage(path):
        raise OSError("Could not resolve host: storage.googleapis.com")

    with pytest.raises(CheckpointReadError, match=r"Reading the data position .* failed \(OSError: Could not resolve "
                                                  r"host.*checkpoint_3 is intact\. Rerun the same command"):
        Checkpointer(str(tmp_path)).restore_latest(abstract(stacked_state()), outage)


@pytest.mark.parametrize("damage", ["every file", "metadata"])
def test_torn_masks_fall_back_to_the_previous_checkpoint(tmp_path, caplog, damage):
    save_steps(tmp_path, [3, 4], stacked_state(), masks=masks_of(stacked_state()))
    if damage == "metadata":
        (tmp_path / "checkpoint_4" / "masks" / "_METADATA").unlink()
    for file in (tmp_path / "checkpoint_4" / "masks").rglob("*") if damage == "every file" else ():
        if file.is_file():
            file.write_bytes(b"corrupted")
    step, _, _, masks = Checkpointer(str(tmp_path)).restore_latest(
        abstract(stacked_state()), lambda path: None, abstract_masks=abstract(masks_of(stacked_state())))
    assert step == 3 and "checkpoint_4 is torn or corrupted" in caplog.text
    jax.tree.map(np.testing.assert_array_equal, masks, masks_of(stacked_state()))


# In a process with 8 fake devices: load_model onto a (data 2, model 4) fsdp mesh; per parameter its placement,
# the shape of one shard and the float64 sum of the whole, as JSON.
SHARDED_LOAD = """
import json, sys, jax, numpy as np
from flax import nnx
from t5scale.train.checkpoints import load_model
from t5scale.train.partitioning import MeshConfig, make_mesh
model, _ = load_model(sys.argv[1], mesh=make_mesh(MeshConfig(data=2, model=4)), rules="fsdp")
print(json.dumps({jax.tree_util.keystr(path): [list(value.sharding.spec), list(value.addressable_shards[0].data.shape),
                                               float(np.asarray(value, np.float64).sum())]
                  for path, value in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))}))
"""


def test_a_model_loaded_onto_a_mesh_is_placed_by_the_rules_with_the_same_values(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from flax import nnx

    from t5scale.train.checkpoints import load_model
    from tests.testing import REPO
    from tests.train.run_training import run

    run(str(tmp_path), 1)
    process = subprocess.run([sys.executable, "-c", SHARDED_LOAD, str(tmp_path)], cwd=REPO, capture_output=True,
                             text=True, timeout=300,
                             env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert process.returncode == 0, process.stderr[-3000:]
    sharded = json.loads(process.stdout.strip().splitlines()[-1])
    whole = {jax.tree_util.keystr(path): float(np.asarray(value, np.float64).sum())
             for path, value in jax.tree_util.tree_leaves_with_path(nnx.state(load_model(str(tmp_path))[0], nnx.Param))}
    assert {name: total for name, (_, _, total) in sharded.items()} == whole
    embedding = next(v for name, v in sharded.items() if "token_embedder" in name)
    assert embedding[:2] == [["model", "data"], [2176 // 4, 32 // 2]]  # [vocab, embed] over (model, data)
    query = next(v for name, v in sharded.items() if "encoder" in name and "query" in name)
    assert query[:2] == [[None, "data", "model", None], [2, 32 // 2, 4 // 4, 8]]  # [layers, embed, heads, kv]
