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
    assert err == f"t5scale: {SHAPE} does not fit 1MiB per device at batch 8 on this mesh.\n"


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
