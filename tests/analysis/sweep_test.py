"""Sweep plans: shapes from names and operator grids (product, zip, parameter-matched), run names that never
collide, budgets and seeds as axes, the train command of a run, and run status from train_end.json."""

import json

import pytest

from t5scale.analysis.sweep import (
    SweepConfig,
    expand_shapes,
    finetune_argv,
    plan_runs,
    run_status,
    sweep_status,
    train_argv,
)
from t5scale.cli.common import split_gin_flags


def test_grid_is_the_product_of_operator_lists_in_order():
    cfg = SweepConfig("s", grids=({"base": "tiny", "NL": [2, 4], "DM": [128, 256]},))
    assert expand_shapes(cfg) == ["tiny-nl2-dm128", "tiny-nl2-dm256", "tiny-nl4-dm128", "tiny-nl4-dm256"]


def test_zipped_grid_pairs_the_lists_and_names_dedupe():
    cfg = SweepConfig("s", shapes=("tiny-nl2-dm128", "small"),
                      grids=({"base": "tiny", "NL": [2, 8], "DM": [128, 64], "zip": True},))
    assert expand_shapes(cfg) == ["tiny-nl2-dm128", "small", "tiny-nl8-dm64"]
    with pytest.raises(ValueError, match="operator lists of one length"):
        expand_shapes(SweepConfig("s", grids=({"base": "tiny", "NL": [2, 8], "DM": [128], "zip": True},)))


def test_param_match_keeps_shapes_of_similar_size():
    """Deep-narrow vs wide at similar params: NL8/DM128 and NL2/DM256 have ~3.7M non-embedding params each;
    NL8/DM256 (~13M) is dropped."""
    cfg = SweepConfig("s", shapes=("tiny-nl8-dm128-ff512-kv32", "tiny-nl2-dm256-ff1024", "tiny-nl3-dm224-ff896",
                                   "tiny-nl8-dm256"), param_match=0.3)
    assert expand_shapes(cfg) == ["tiny-nl8-dm128-ff512-kv32", "tiny-nl2-dm256-ff1024", "tiny-nl3-dm224-ff896"]


def test_runs_cover_shapes_budgets_and_seeds_with_distinct_dirs():
    cfg = SweepConfig("/sweeps/a", shapes=("tiny", "small"),
                      budgets=({"train_steps": 100}, {"train_steps": 400, "time_budget_s": 60}), seeds=(0, 1))
    runs = plan_runs(cfg)
    assert len(runs) == 8 and [r.index for r in runs] == list(range(8))
    assert len({r.model_dir for r in runs}) == 8
    assert runs[0].name == "tiny-steps100-seed0" and runs[3].name == "tiny-steps400-time60-seed1"
    assert runs[3].model_dir == "/sweeps/a/tiny-steps400-time60-seed1"


def test_a_run_trains_its_shape_budget_and_seed_after_the_sweeps_bindings():
    cfg = SweepConfig("/s", shapes=("tiny",), budgets=({"train_steps": 50, "flop_budget": 1e12},), seeds=(3,),
                      run_gin_files=("runs/demo.gin",), bindings=("BATCH_SIZE=8",))
    rest, files, bindings = split_gin_flags(train_argv(cfg, plan_runs(cfg)[0]))
    assert rest == ["train"] and files == ["models/shape.gin", "runs/demo.gin"]
    assert bindings == ["MODEL_SHAPE='tiny'", "MODEL_DIR='/s/tiny-steps50-flops1e+12-seed3'", "TRAIN_STEPS=50",
                        "train_config.flop_budget=1000000000000.0", "train_config.seed=3", "BATCH_SIZE=8"]


@pytest.mark.parametrize("bad, message", [
    (dict(), "give shapes"),
    (dict(shapes=("tiny",), budgets=({"steps": 3},)), "unknown: \\['steps'\\]"),
    (dict(grids=({"NL": [2]},)), "needs a 'base' shape"),
    (dict(grids=({"base": "tiny", "LAYERS": [2]},)), "unknown: \\['LAYERS'\\]"),
    (dict(shapes=("tiny",), seeds=()), "must not be empty"),
])
def test_bad_sweeps_say_what_is_wrong(bad, message):
    with pytest.raises(ValueError, match=message):
        SweepConfig("s", **bad)


def test_run_status_from_the_run_directory(tmp_path):
    assert run_status(str(tmp_path / "nothing")) == "new"
    (tmp_path / "r").mkdir()
    assert run_status(str(tmp_path / "r")) == "new"
    (tmp_path / "r" / "checkpoint_4").mkdir()
    assert run_status(str(tmp_path / "r")) == "interrupted"
    for ended_by, status in [("sigterm", "interrupted"), ("train_steps", "finished"), ("time_budget", "finished"),
                             ("flop_budget", "finished"), ("nan", "diverged")]:
        (tmp_path / "r" / "train_end.json").write_text(json.dumps({"ended_by": ended_by}))
        assert run_status(str(tmp_path / "r")) == status, ended_by


def test_a_sweep_that_fine_tunes_starts_from_each_pretrained_run_and_is_finished_after_both(tmp_path):
    cfg = SweepConfig(str(tmp_path), shapes=("tiny",), budgets=({"train_steps": 5},), seeds=(2,),
                      finetune_gin_files=("runs/finetune.gin",), finetune_bindings=("TRAIN_STEPS=3",))
    (run,) = plan_runs(cfg)
    rest, files, bindings = split_gin_flags(finetune_argv(cfg, run))
    assert rest == ["finetune"] and files == ["runs/finetune.gin"]
    assert bindings == [f"INITIAL_CHECKPOINT_PATH='{run.model_dir}'", f"MODEL_DIR='{run.model_dir}/finetune'",
                        "train_config.seed=2", "TRAIN_STEPS=3"]
    (tmp_path / run.name).mkdir()
    (tmp_path / run.name / "train_end.json").write_text(json.dumps({"ended_by": "train_steps"}))
    assert run_status(run.model_dir) == "finished" and sweep_status(cfg, run) == "interrupted"  # not fine-tuned
    (tmp_path / run.name / "finetune").mkdir()
    for ended_by, status in [("sigterm", "interrupted"), ("nan", "diverged"), ("train_steps", "finished")]:
        (tmp_path / run.name / "finetune" / "train_end.json").write_text(json.dumps({"ended_by": ended_by}))
        assert sweep_status(cfg, run) == status
