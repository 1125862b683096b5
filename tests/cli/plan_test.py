"""`t5scale plan`: a table of bytes per device and a verdict; a shape that cannot fit says so; bad flags are one
line (and start no compile)."""

import pytest

from t5scale.cli.main import main

SHAPE = "tiny-nl1-dm64-ff128-nh2"  # one layer per stack: a compile of seconds


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_shape_that_cannot_fit_says_so(capsys):
    code, out, err = run(capsys, "plan", SHAPE, "--mesh", "data=4,model=2", "--rules", "fsdp", "--batch", "8",
                         "--lengths", "32/8", "--hbm", "1MiB")
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"{SHAPE} (") and "data=4 x model=2 (8 devices), fsdp rules; batch 8 x 32/8" in lines[0]
    labels = [line.split("  ")[1] for line in lines[3:9]]
    assert labels == ["parameters (exact)", "optimizer state (exact)", "batch (exact)",
                      "temporaries (XLA CPU estimate)", "other outputs (metrics)", "total (estimate)"]
    assert "all-gather" in out and lines[-1].startswith("HBM 1.00 MiB per device (1MiB): does NOT fit")
    assert err == (f"compiling {SHAPE} for 8 CPU device(s) ...\n"
                   f"t5scale: {SHAPE} does not fit 1MiB per device at batch 8 on this mesh.\n")


@pytest.mark.parametrize("flags, message", [
    (["--mesh", "data=x"], "--mesh 'data=x': write data=D,model=M with positive integers."),
    (["--mesh", "model=2"], "--mesh 'model=2': give data=D (or a slice as --hbm"),
    (["--mesh", "data=8", "--hbm", "v3-256"], "--mesh data=8,model=1 is 8 devices; the slice has 256."),
    (["--mesh", "data=2", "--hbm", "v9"], "--hbm 'v9': give a size (16GiB, 512MB), a chip (v2, v3, v4, v5e"),
    (["--mesh", "data=2", "--lengths", "512"], "--lengths '512': write INPUTS/TARGETS, e.g. 512/114."),
    (["--mesh", "data=3", "--batch", "8"], "batch 8 does not split into 1 microbatch(es) over data=3."),
])
def test_bad_flags_are_one_line(capsys, flags, message):
    code, out, err = run(capsys, "plan", SHAPE, *flags)
    assert code == 2 and out == "" and err.startswith(f"t5scale: error: {message}") and err.count("\n") == 1


def test_an_unknown_shape_is_one_line(capsys):
    code, _, err = run(capsys, "plan", "smal", "--mesh", "data=1")
    assert code == 2 and err.startswith("t5scale: error: ") and "smal" in err and err.count("\n") == 1


@pytest.mark.parametrize("flags, message", [
    (["--topology", "v4-12"], "--topology 'v4-12': no such slice; v4-N with N in 8, 16, 32"),
    (["--topology", "v7x-8"], "--topology 'v7x-8': unknown TPU generation 'v7x'"),
    (["--topology", "v4:2x2"], "--topology 'v4:2x2': a v4 topology has 3 positive dimensions"),
    (["--topology", "v4-8", "--mesh", "data=8"], "--mesh data=8,model=1 is 8 devices; the slice has 4."),
    (["--slices", "2"], "--slices needs --topology."),
    (["--beam", "4"], "--beam needs --mode decode."),
])
def test_bad_topology_flags_are_one_line(capsys, flags, message):
    code, out, err = run(capsys, "plan", SHAPE, *flags)
    assert code == 2 and out == "" and message in err and err.count("\n") == 1


def test_without_libtpu_a_slice_is_planned_on_cpu_devices_and_says_how_to_get_the_tpu_numbers(capsys, monkeypatch):
    from t5scale.train import plan as plan_lib

    monkeypatch.setattr(plan_lib, "libtpu_missing", lambda: "libtpu is not installed")
    code, out, err = run(capsys, "plan", SHAPE, "--topology", "v5litepod-4", "--batch", "8", "--lengths", "32/8")
    assert code == 0
    assert err.splitlines()[0] == ("t5scale plan: libtpu is not installed: temporaries below are XLA's CPU estimate "
                                   'for 4 fake devices; pip install "t5scale[tpu]" (libtpu, x86-64 Linux) gives '
                                   "the TPU compiler's own numbers.")
    assert "temporaries (XLA CPU estimate)" in out and "(4 devices)" in out.splitlines()[0]
    assert "HBM 16.00 GiB per device (v5litepod-4, TPU v5 lite): fits" in out


@pytest.mark.slow
@pytest.mark.tpu
def test_a_shape_that_cannot_fit_a_slice_says_so_from_the_tpu_compiler(capsys):
    # One layer per stack, but 4096 x 262144 MLPs: 4.3G float32 parameters, more than a v5e chip's 16 GiB.
    big = "tiny-nl1-dm4096-ff262144-nh2"
    code, out, err = run(capsys, "plan", big, "--topology", "v5litepod-1", "--batch", "1", "--lengths", "8/8")
    assert code == 1, out + err
    assert "v5litepod-1: topology v5e:1x1, 1 chips, 1 host(s), TPU v5 lite; compiled by libtpu" in out
    assert ("libtpu refused the program: RESOURCE_EXHAUSTED" in out or "total (TPU compiler)" in out)
    assert "does NOT fit" in out
    assert err.splitlines()[-1] == f"t5scale: {big} does not fit v5litepod-1 per device at batch 1 on this mesh."


@pytest.mark.slow
@pytest.mark.tpu
def test_a_slice_plan_prints_the_tpu_compilers_numbers(capsys):
    code, out, _ = run(capsys, "plan", SHAPE, "--topology", "v4-8", "--batch", "8", "--lengths", "32/8")
    assert code == 0
    for label in ("arguments (TPU compiler, tiled)", "temporaries (TPU compiler)", "generated code (TPU compiler)",
                  "total (TPU compiler)"):
        assert label in out
    assert "v4-8: topology v4:2x2x1, 4 chips, 1 host(s), TPU v4; compiled by libtpu" in out
    assert "HBM 32.00 GiB per device (v4-8, TPU v4): fits" in out


SWEEP_GIN = """
SWEEP_DIR = %gin.REQUIRED
sweep_config.sweep_dir = %SWEEP_DIR
sweep_config.shapes = ['tiny-nl1-dm64-ff128-nh2', 'tiny-nl2-dm64-ff128-nh2']
sweep_config.budgets = [{'train_steps': 10}, {'train_steps': 20}]
sweep_config.run_gin_files = ['runs/demo.gin']
sweep_config.bindings = ["TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}", 'BATCH_SIZE=6']
"""


@pytest.mark.slow
def test_a_sweep_is_planned_shape_by_shape_at_its_runs_batch_and_lengths(capsys, tmp_path):
    from t5scale.analysis.results import add_plan_columns
    from t5scale.model.flops import count_params, training_flops

    (tmp_path / "sweep.gin").write_text(SWEEP_GIN)
    csv_path = tmp_path / "plan.csv"
    code, out, err = run(capsys, "plan", "--sweep", str(tmp_path / "sweep.gin"), "--mesh", "data=2", "--hbm",
                         "1GiB", "--csv", str(csv_path))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["shape", "params", "FLOPs/example", "batch", "lengths", "HBM/device", "fits"]
    shapes = ["tiny-nl1-dm64-ff128-nh2", "tiny-nl2-dm64-ff128-nh2"]  # each once, whatever its budgets
    assert [line.split()[0] for line in lines[1:]] == shapes
    assert all(line.split()[3:5] == ["6", "32/8"] and line.split()[-1] == "yes" for line in lines[1:])
    assert "[1/2] tiny-nl1-dm64-ff128-nh2 at batch 6 ..." in err and f"wrote {csv_path}" in err
    import csv

    rows = list(csv.DictReader(csv_path.open()))
    for row, shape in zip(rows, shapes, strict=True):
        from t5scale import config as config_lib

        cfg = config_lib.shape(shape)
        assert (row["shape"], int(row["params"]), int(row["batch"]), row["fits"]) == (
            shape, count_params(cfg).total, 6, "True")
        assert int(row["training_flops_per_example"]) == training_flops(cfg, 32, 8).total
        assert int(row["params_per_device"]) == count_params(cfg).total * 4  # t5x rules, model=1: replicated
    # `t5scale results --plan` joins these columns onto a sweep's rows by shape.
    joined = add_plan_columns([{"shape": shapes[1], "name": "a"}, {"shape": "other", "name": "b"}], str(csv_path))
    assert joined[0]["plan_hbm_per_device"] == int(rows[1]["hbm_per_device"]) and joined[0]["plan_fits"] is True
    assert joined[1]["plan_hbm_per_device"] is None


@pytest.mark.slow
def test_search_finds_the_largest_batch_that_fits(capsys, tmp_path):
    import json

    flags = ["--mesh", "data=1", "--lengths", "32/8", "--rules", "t5x", "--remat", "none"]
    totals = {}
    for batch in (4, 8):
        code, out, _ = run(capsys, "plan", SHAPE, *flags, "--batch", str(batch), "--json")
        totals[batch] = json.loads(out)["bytes_per_device"]["total_estimate"]
    hbm = f"{(totals[4] + totals[8]) // 2}B"
    code, out, err = run(capsys, "plan", SHAPE, *flags, "--hbm", hbm, "--search", "--batch", "4")
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.strip().startswith("t5x"))
    largest = int(row.split()[3])
    assert 4 <= largest < 8
    assert "recommended: rules t5x, remat none, model=1" in out
    assert err.count("(cached)") >= 2  # the two batches planned above, from the plan cache
    # The answer, checked plan by plan: the largest batch fits and one more does not.
    assert run(capsys, "plan", SHAPE, *flags, "--hbm", hbm, "--batch", str(largest))[0] == 0
    assert run(capsys, "plan", SHAPE, *flags, "--hbm", hbm, "--batch", str(largest + 1))[0] == 1
