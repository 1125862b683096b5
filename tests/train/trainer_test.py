"""The training loop end to end on a tiny shape: artifacts, torn and incompatible checkpoints, layouts, meshes,
NaN, budgets, two hosts stopping together. Runs in separate processes where the test needs to signal one.
Repeated kill -9, SIGTERM during a save and write errors: tests/faults."""

import dataclasses
import json
import os
import pathlib
import shutil
import signal
import subprocess

import numpy as np
import orbax.checkpoint as ocp
import pytest

from t5scale.train.checkpoints import IncompatibleCheckpointError
from t5scale.train.pruning import PruningConfig
from t5scale.train.trainer import NonFiniteLossError, TrainConfig
from tests.train.run_training import (
    assert_resumed_from,
    committed_steps,
    emulated_hosts_dataset,
    finish,
    losses,
    rerun,
    rows,
    run,
    start,
    wait_for,
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("uninterrupted")
    result = run(str(model_dir), 8)
    return model_dir, result


def test_a_run_writes_checkpoints_config_metrics_and_events(uninterrupted):
    model_dir, result = uninterrupted
    assert (result.step, result.ended_by) == (8, "train_steps")
    assert {p.name for p in model_dir.glob("checkpoint_*")} == {"checkpoint_4", "checkpoint_6", "checkpoint_8"}
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model"]["d_model"] == 32 and config["train"]["train_steps"] == 8
    assert list(model_dir.glob("events.out.tfevents.*"))
    assert json.loads((model_dir / "train_end.json").read_text())["ended_by"] == "train_steps"
    steps = losses(model_dir)
    assert sorted(steps) == list(range(1, 9))
    assert steps[8] < steps[1] - 0.5  # it learns


def snapshot(model_dir) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(model_dir)): (p.stat().st_size, p.stat().st_mtime)
            for p in pathlib.Path(model_dir).rglob("*") if p.is_file()}


def copy_run(source, target, drop_steps=()):
    subprocess.run(["cp", "-r", f"{source}/.", str(target)], check=True)
    for step in drop_steps:
        shutil.rmtree(target / f"checkpoint_{step}")
        shutil.rmtree(target / "data_state" / f"checkpoint_{step}")


@pytest.mark.faults
def test_torn_latest_checkpoint_falls_back_to_the_previous(uninterrupted, tmp_path, caplog):
    # A copy of the finished run whose newest checkpoint is corrupted.
    copy_run(uninterrupted[0], tmp_path)
    for file in (tmp_path / "checkpoint_8" / "state").rglob("*"):
        if file.is_file():
            file.write_bytes(b"corrupted")
    result, new_rows = rerun(tmp_path, 10)
    assert result.step == 10
    assert "checkpoint_8 is torn or corrupted" in caplog.text
    assert_resumed_from(result, new_rows, 6, 10)
    # Steps 7 and 8 were retrained exactly as before.
    assert dict(new_rows)[7] == losses(uninterrupted[0])[7] and dict(new_rows)[8] == losses(uninterrupted[0])[8]


@pytest.mark.faults
def test_torn_data_state_falls_back_to_the_previous_checkpoint(uninterrupted, tmp_path, caplog):
    copy_run(uninterrupted[0], tmp_path)
    data = next((tmp_path / "data_state" / "checkpoint_8").glob("process_0.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # a truncated file
    result, new_rows = rerun(tmp_path, 8)
    assert "checkpoint_8 is torn or corrupted (data-state files" in caplog.text
    assert_resumed_from(result, new_rows, 6, 8)
    assert dict(new_rows)[8] == losses(uninterrupted[0])[8]


@pytest.mark.faults
def test_a_model_dir_whose_checkpoints_are_all_torn_stops_without_writing_unless_asked_to_start_over(
        uninterrupted, tmp_path):
    copy_run(uninterrupted[0], tmp_path)
    for step in (4, 6, 8):
        (tmp_path / f"checkpoint_{step}" / "state" / "_METADATA").write_bytes(b"")
    before = snapshot(tmp_path)
    with pytest.raises(IncompatibleCheckpointError) as error:
        run(str(tmp_path), 10)
    message = str(error.value)
    assert "\n" not in message
    assert "None of the checkpoints in" in message and "(steps [4, 6, 8]) can be restored" in message
    assert "--gin.train_config.restart_from_scratch=True" in message and "a new MODEL_DIR" in message
    assert snapshot(tmp_path) == before  # nothing written: no fresh-init checkpoint beside the old ones
    result, new_rows = rerun(tmp_path, 2, restart_from_scratch=True)
    assert_resumed_from(result, new_rows, 0, 2)
    assert committed_steps(tmp_path) == [2]
    assert [loss for _, loss in new_rows] == [losses(uninterrupted[0])[s] for s in (1, 2)]


@pytest.mark.faults
@pytest.mark.parametrize("change, differs, setting", [
    (dict(model=dict(param_dtype="bfloat16")), "92 arrays of another shape or dtype, e.g. opt_state/0/v/decoder/"
     "decoder_norm/scale/value is float32[32] there and bfloat16[32] here",
     "model.param_dtype ('float32' -> 'bfloat16')"),
    (dict(optim=dict(momentum=0.9)), "the run needs, e.g. opt_state/", "optim.momentum (None -> 0.9)"),
])
def test_a_checkpoint_that_does_not_fit_the_run_stops_it_with_one_line_and_writes_nothing(
        uninterrupted, tmp_path, monkeypatch, change, differs, setting):
    import tests.train.run_training as script

    copy_run(uninterrupted[0], tmp_path)
    if "model" in change:
        monkeypatch.setattr(script, "MODEL", script.MODEL.replace(**change["model"]))
    else:
        monkeypatch.setattr(script, "OPTIM", dataclasses.replace(script.OPTIM, **change["optim"]))
    before = snapshot(tmp_path)
    with pytest.raises(IncompatibleCheckpointError) as error:
        run(str(tmp_path), 10)
    message = str(error.value)
    assert "\n" not in message and isinstance(error.value, ValueError)  # the CLI prints it as one line
    assert "checkpoint_8 does not fit this run: it has" in message and differs in message
    assert setting in message and "--gin.train_config.restart_from_scratch=True" in message
    assert snapshot(tmp_path) == before


@pytest.mark.faults
def test_a_checkpoint_of_another_architecture_with_the_same_arrays_stops_the_run_with_one_line(
        uninterrupted, tmp_path, monkeypatch):
    """relative_max_distance changes no array's shape, so the checkpoint's arrays would restore into this run: only
    the saved config.json can tell that it is another network, and the run must stop rather than go on with it."""
    import tests.train.run_training as script

    copy_run(uninterrupted[0], tmp_path)
    monkeypatch.setattr(script, "MODEL", script.MODEL.replace(relative_max_distance=64))
    before = snapshot(tmp_path)
    with pytest.raises(IncompatibleCheckpointError) as error:
        run(str(tmp_path), 10)
    message = str(error.value)
    assert "\n" not in message and "holds a run of another architecture" in message
    assert "'relative_max_distance': (128, 64)" in message and "--gin.train_config.restart_from_scratch=True" in message
    assert snapshot(tmp_path) == before


@pytest.mark.faults
def test_data_positions_of_another_process_count_restart_the_data_from_the_step_with_a_warning(
        uninterrupted, tmp_path, caplog):
    # checkpoint_4 as if two processes had saved it: their positions cannot be merged into this one process's.
    copy_run(uninterrupted[0], tmp_path, drop_steps=(6, 8))
    (tmp_path / "data_state" / "checkpoint_4" / "process_1.manifest.json").write_text("{}")
    result, new_rows = rerun(tmp_path, 8)
    assert "checkpoint_4 holds the data positions of 2 processes and this run has 1: each process's data restarts " \
           "from the position derived from step 4" in caplog.text
    assert_resumed_from(result, new_rows, 4, 8)
    # One shard read from its start with 4 batches skipped is where the uninterrupted run was: same losses.
    assert dict(new_rows) == {s: losses(uninterrupted[0])[s] for s in (5, 6, 7, 8)}


def test_a_run_resumed_with_the_other_layer_layout_converts_and_continues_the_losses(
        uninterrupted, tmp_path, monkeypatch, caplog):
    import tests.train.run_training as script

    reference = losses(uninterrupted[0])
    copy_run(uninterrupted[0], tmp_path, drop_steps=(6, 8))
    monkeypatch.setattr(script, "MODEL", script.MODEL.replace(scan_layers=False))
    result, unrolled = rerun(tmp_path, 8)  # scanned checkpoint_4 -> unrolled
    assert "saved with scan_layers=True; converting" in caplog.text
    assert_resumed_from(result, unrolled, 4, 8)
    # The converted state is the saved one exactly: the first step's loss is bit for bit the same. Later steps
    # differ by float rounding only (the layouts order their sums differently): ~2e-5 here.
    assert unrolled[0] == (5, reference[5])
    for step, loss in unrolled:
        assert loss == pytest.approx(reference[step], rel=1e-4)
    shutil.rmtree(tmp_path / "checkpoint_8")
    monkeypatch.setattr(script, "MODEL", script.MODEL.replace(scan_layers=True))
    result, scanned = rerun(tmp_path, 8)  # unrolled checkpoint_6 -> scanned
    assert "saved with scan_layers=False; converting" in caplog.text
    assert_resumed_from(result, scanned, 6, 8)
    assert scanned[0] == unrolled[2]  # step 7 from the converted checkpoint_6 = the unrolled run's step 7
    for step, loss in scanned:
        assert loss == pytest.approx(reference[step], rel=1e-4)


def test_initial_checkpoint_path_warm_starts_the_params_only(uninterrupted, tmp_path):
    trained = uninterrupted[0] / "checkpoint_8"
    result = run(str(tmp_path), 2, initial_checkpoint_path=str(trained))
    warm, cold = losses(tmp_path), losses(uninterrupted[0])
    assert result.step == 2  # a new run: step, optimizer state and data start afresh
    # Step 1 is the cold run's first batch, now seen by the trained params.
    assert warm[1] < cold[1] - 0.5 and warm[1] == pytest.approx(cold[8], abs=0.5)


def test_initial_checkpoint_path_that_is_not_a_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"INITIAL_CHECKPOINT_PATH {tmp_path} is neither a t5scale checkpoint"):
        run(str(tmp_path / "run"), 2, initial_checkpoint_path=str(tmp_path))


def test_initial_checkpoint_of_another_shape_is_refused_naming_the_fields(uninterrupted, tmp_path, monkeypatch):
    import tests.train.run_training as script

    monkeypatch.setattr(script, "MODEL", script.MODEL.replace(d_ff=128))
    with pytest.raises(ValueError, match=r"another architecture.*'d_ff': \(64, 128\)"):
        run(str(tmp_path), 2, initial_checkpoint_path=str(uninterrupted[0] / "checkpoint_8"))


def test_the_run_reports_throughput_and_mfu_against_a_measured_cpu_peak(uninterrupted):
    result = uninterrupted[1]
    assert result.target_tokens_per_s > 0 and 0 < result.mfu < 1
    assert result.mfu_peak == "float32 matmul measured on this CPU"


@pytest.mark.faults
def test_nan_inside_one_microbatch_stops_the_run_and_the_last_good_checkpoint_restores(tmp_path, monkeypatch):
    from t5scale.train import trainer

    real_global_batch, calls = trainer._global_batch, []

    def poison_step_5(local, sharding):  # float loss weights, one NaN in the second microbatch of step 5
        calls.append(None)
        weights = local["decoder_loss_weights"].astype(np.float32)
        if len(calls) == 5:
            weights[5, 0] = np.nan
        return real_global_batch({**local, "decoder_loss_weights": weights}, sharding)

    monkeypatch.setattr(trainer, "_global_batch", poison_step_5)
    with pytest.raises(NonFiniteLossError, match=r"Loss is nan at step 5; stopped without saving that state. The "
                                                 r"last checkpoint is intact"):
        run(str(tmp_path), 8, microbatches=2, log_every=4)  # no flush at step 6: found by the check before saving it
    assert [s for s, _ in rows(tmp_path)] == [1, 2, 3, 4]  # the NaN step was never logged as a loss
    assert committed_steps(tmp_path) == [2, 4]  # the state reached through the NaN was not saved
    assert json.loads((tmp_path / "train_end.json").read_text())["ended_by"] == "nan"  # a sweep: diverged
    monkeypatch.undo()
    result, new_rows = rerun(tmp_path, 6, microbatches=2)  # the data is fixed: the run resumes
    assert_resumed_from(result, new_rows, 4, 6)
    assert all(np.isfinite(loss) for _, loss in new_rows)


@pytest.mark.parametrize("budget, ended_by", [
    (dict(flop_budget=1.0), "flop_budget"),  # spent after the first step
    (dict(time_budget_s=1e-9), "time_budget"),
])
def test_budgets_stop_the_run_and_say_which(tmp_path, budget, ended_by):
    result = run(str(tmp_path), 50, **budget)
    assert (result.step, result.ended_by) == (1, ended_by)
    assert json.loads((tmp_path / "train_end.json").read_text())["ended_by"] == ended_by


def test_bad_train_config_is_rejected():
    with pytest.raises(ValueError, match="must be positive"):
        TrainConfig(model_dir="/tmp/x", train_steps=0)


@pytest.mark.parametrize("data, model, rules", [  # (2, 4) splits both batch and weights; the others: make test-all
    pytest.param(8, 1, "t5x", marks=pytest.mark.slow), pytest.param(4, 2, "t5x", marks=pytest.mark.slow),
    (2, 4, "t5x"), pytest.param(2, 4, "fsdp", marks=pytest.mark.slow)])  # fsdp: the mesh-resume test below
def test_sharded_meshes_on_8_devices_reproduce_the_single_device_losses(uninterrupted, tmp_path, data, model, rules):
    process = start(tmp_path, 3, "100", str(data), str(model), rules,
                    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    reference, sharded = losses(uninterrupted[0]), losses(tmp_path)
    for step in (1, 2, 3):
        assert sharded[step] == pytest.approx(reference[step], rel=1e-5)
    # The placement the run trained with, as orbax recorded it: [vocab 2176, embed 32].
    saved = ocp.StandardCheckpointer().metadata(tmp_path / "checkpoint_3" / "state").item_metadata.tree
    placement = saved["params"]["token_embedder"]["embedding"]["value"].sharding.partition_spec
    assert tuple(placement) == {"t5x": ("model", None), "fsdp": ("model", "data")}[rules]


def test_a_run_resumed_on_another_mesh_reshards_params_and_optimizer_state(uninterrupted, tmp_path):
    reference = losses(uninterrupted[0])
    copy_run(uninterrupted[0], tmp_path, drop_steps=(6, 8))
    before = len(rows(tmp_path))
    # 1 device -> 8 fake devices, fsdp over (data 2, model 4): orbax restores into the new placements.
    process = start(tmp_path, 8, "2", "2", "4", "fsdp", env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    (end,) = finish([process])
    assert end == {"step": 8, "ended_by": "train_steps", "start_step": 4}
    assert [s for s, _ in rows(tmp_path)[before:]] == [5, 6, 7, 8]
    saved = ocp.StandardCheckpointer().metadata(tmp_path / "checkpoint_6" / "state").item_metadata.tree
    assert tuple(saved["params"]["token_embedder"]["embedding"]["value"].sharding.partition_spec) == (
        "model", "data")  # trained under fsdp: [vocab, embed] split over both axes
    # ... and back to 1 device from the 8-device checkpoint_6.
    shutil.rmtree(tmp_path / "checkpoint_8")
    result, new_rows = rerun(tmp_path, 8)
    assert_resumed_from(result, new_rows, 6, 8)
    for step, loss in losses(tmp_path).items():
        assert loss == pytest.approx(reference[step], rel=1e-5)


def start_two_processes(model_dir, steps, save_every, port):
    env = {"T5SCALE_COORDINATOR": f"127.0.0.1:{port}", "T5SCALE_NUM_PROCESSES": "2"}
    return [start(model_dir, steps, str(save_every), env={**env, "T5SCALE_PROCESS_ID": str(i)}) for i in range(2)]


@pytest.mark.faults
@pytest.mark.slow  # ~60 s: five trainer processes; .ci/run runs the slow tests
def test_two_processes_stop_together_when_only_one_gets_sigterm_and_resume_exactly(tmp_path, monkeypatch, caplog):
    port = 20000 + os.getpid() % 20000
    model_dir = tmp_path / "two_processes"
    processes = start_two_processes(model_dir, 1000, 1000, port)
    wait_for(model_dir / "metrics.jsonl", processes[0])
    processes[1].send_signal(signal.SIGTERM)  # host 1 only
    ends = finish(processes)
    step = ends[0]["step"]
    assert ends[0] == ends[1] == {"step": step, "ended_by": "sigterm", "start_step": 0} and 0 < step < 1000
    assert committed_steps(model_dir) == [step]
    # Each process saved its own data position next to the shared checkpoint.
    assert {p.name for p in (model_dir / "data_state" / f"checkpoint_{step}").iterdir()} >= {
        "process_0.index", "process_0.manifest.json", "process_1.index", "process_1.manifest.json"}
    before = len(rows(model_dir))
    ends = finish(start_two_processes(model_dir, step + 2, 1000, port + 1))
    assert ends[0] == ends[1] == {"step": step + 2, "ended_by": "train_steps", "start_step": step}
    assert [s for s, _ in rows(model_dir)[before:]] == [step + 1, step + 2]
    # Reference: this one process reading both hosts' shards, host 0's rows first.
    from t5scale.train import trainer

    monkeypatch.setattr(trainer, "make_dataset", emulated_hosts_dataset(2))
    run(str(tmp_path / "one_process"), step + 4, save_every=1000)
    # And on with one process: the two processes' params and optimizer state restore into it; their data positions
    # cannot merge, so the data restarts from the step, here (both shards, skipped) exactly where they left off.
    result, new_rows = rerun(model_dir, step + 4)
    assert_resumed_from(result, new_rows, step + 2, step + 4)
    assert "holds the data positions of 2 processes and this run has 1" in caplog.text
    two, one = losses(model_dir), losses(tmp_path / "one_process")
    assert sorted(two) == list(range(1, step + 5))
    for s in two:
        assert two[s] == pytest.approx(one[s], rel=1e-5)


@pytest.mark.faults
@pytest.mark.slow  # two more processes; the other direction (two -> one) is in the default run, above
def test_two_processes_resume_a_one_process_checkpoint_with_the_data_from_the_step(tmp_path, monkeypatch):
    from t5scale.train import trainer

    # One process reading both hosts' shards: its data from step 4 on is what two processes read after 4 steps.
    monkeypatch.setattr(trainer, "make_dataset", emulated_hosts_dataset(2))
    run(str(tmp_path / "reference"), 6, save_every=1000)
    run(str(tmp_path / "run"), 4, save_every=4)
    ends = finish(start_two_processes(tmp_path / "run", 6, 1000, 20000 + (os.getpid() + 7) % 20000))
    assert ends[0] == ends[1] == {"step": 6, "ended_by": "train_steps", "start_step": 4}
    resumed, reference = losses(tmp_path / "run"), losses(tmp_path / "reference")
    for step in (5, 6):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5)


# Gradual pruning: masks updated at steps 0, 3, 6 (before the update that follows), final 0.5 from step 6 on.
PRUNING = PruningConfig(final_sparsity=0.5, begin_step=0, end_step=6, update_every=3, groups=("attention", "mlp"))


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("pruned")
    return model_dir, run(str(model_dir), 8, pruning=PRUNING, keep_checkpoints=None)


def saved_masks_and_params(model_dir, step):
    restore = ocp.StandardCheckpointer().restore
    masks = restore(model_dir / f"checkpoint_{step}" / "masks")
    params = restore(model_dir / f"checkpoint_{step}" / "state")["params"]
    flat = lambda tree: {k: np.asarray(v) for k, v in ocp.tree.to_flat_dict(tree).items()}  # noqa: E731
    return flat(masks), flat(params)


@pytest.mark.parametrize("step, last_update", [(2, 0), (4, 3), (8, 6)])
def test_gradual_pruning_follows_the_cubic_schedule_and_pruned_weights_stay_zero(pruned, step, last_update):
    masks, params = saved_masks_and_params(pruned[0], step)
    sparsity = PRUNING.sparsity_at(last_update)
    kernels = [name for name, mask in masks.items() if mask.ndim]
    assert kernels and all("embedder" not in "/".join(n) and "norm" not in "/".join(n) for n in kernels)
    for name in kernels:
        mask, weight = masks[name], params[name]
        assert mask.shape == weight.shape
        for layer_mask, layer_weight in zip(mask, weight):  # scanned: one count per layer of the stack
            assert np.sum(~layer_mask) == round(sparsity * layer_mask.size), (name, step)
            assert np.all(layer_weight[~layer_mask] == 0), name  # zero after the updates since the mask changed
    # the rest is left alone
    assert all(np.all(params[n] != 0) for n, m in masks.items() if not m.ndim and "norm" in "/".join(n))


def test_a_pruning_run_resumes_its_masks_exactly(pruned, tmp_path):
    # From checkpoint_4, between mask updates: masks recomputed there instead of restored would differ.
    copy_run(pruned[0], tmp_path, drop_steps=(6, 8))
    result, new_rows = rerun(tmp_path, 8, pruning=PRUNING)
    assert_resumed_from(result, new_rows, 4, 8)
    assert dict(new_rows) == {s: loss for s, loss in losses(pruned[0]).items() if s > 4}
    masks, params = saved_masks_and_params(tmp_path, 8)
    reference_masks, reference_params = saved_masks_and_params(pruned[0], 8)
    for name in masks:
        np.testing.assert_array_equal(masks[name], reference_masks[name])
    for name in params:
        np.testing.assert_array_equal(params[name], reference_params[name])


def test_pruning_over_a_dense_checkpoint_stops_with_one_line_and_writes_nothing(uninterrupted, tmp_path):
    copy_run(uninterrupted[0], tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(IncompatibleCheckpointError, match=r"checkpoint_8 has no pruning masks and this run prunes"):
        run(str(tmp_path), 10, pruning=PRUNING)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
