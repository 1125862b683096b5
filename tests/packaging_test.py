"""The wheel is the product: built with `python -m build`, it carries every gin and data file, declares its
license and extras, and, installed into a fresh virtualenv, runs the CLI with the packaged gin files from a
directory outside the checkout."""

import json
import os
import pathlib
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

import pytest

from tests.testing import REPO

GIN_FILES = sorted(str(p.relative_to(REPO / "gin")) for p in (REPO / "gin").rglob("*.gin"))


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)], check=True,
                   capture_output=True, text=True)
    return {path.suffix: path for path in out.iterdir()} | {"sdist": next(out.glob("*.tar.gz"))}


def test_the_wheel_carries_every_gin_and_data_file_and_its_metadata(dist):
    with zipfile.ZipFile(dist[".whl"]) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = wheel.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert {f"t5scale/gin/{name}" for name in GIN_FILES} <= names
    assert "t5scale/released_shapes.tsv" in names
    # Older setuptools write .dist-info/LICENSE; newer ones (PEP 639; 84.2 here) .dist-info/licenses/LICENSE.
    assert any(n.endswith((".dist-info/LICENSE", ".dist-info/licenses/LICENSE")) for n in names)
    assert not any(n.startswith(("tests/", "gin/", "benchmarks/")) for n in names)
    assert "License: Apache-2.0" in metadata and "License :: OSI Approved :: Apache Software License" in metadata
    assert {"tpu", "gpu", "hf", "test"} <= {line.split(": ")[1] for line in metadata.splitlines()
                                            if line.startswith("Provides-Extra: ")}
    assert "Requires-Dist: jax[tpu]" in metadata and "Requires-Dist: jax[cuda12]" in metadata
    import t5scale
    assert f"Version: {t5scale.__version__}\n" in metadata
    assert "t5scale = t5scale.cli.main:entry_point" in entry_points


def test_the_sdist_carries_the_sources_of_the_wheel(dist):
    with tarfile.open(dist["sdist"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {f"gin/{name}" for name in GIN_FILES} <= names
    assert {"LICENSE", "setup.py", "t5scale/released_shapes.tsv", "t5scale/cli/main.py"} <= names


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory):
    """A fresh virtualenv with only the wheel installed in it; t5scale's dependencies come from the test's own
    environment through a path entry (its .pth files, the editable install's among them, are not processed)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--no-index", str(dist[".whl"])], check=True)
    return venv


def run_installed(venv, tmp_path, *argv):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(venv / "bin" / "t5scale"), *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_installed_cli_runs_outside_the_checkout(installed, tmp_path):
    where = subprocess.run([str(installed / "bin" / "python"), "-c", "import t5scale; print(t5scale.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert pathlib.Path(where).is_relative_to(installed)
    result = run_installed(installed, tmp_path, "shapes", "tiny", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["params_m"] == 15.6
    result = run_installed(installed, tmp_path, "shapes", "--gin_file=models/small.gin", "--gin.EL=16", "--json")
    assert json.loads(result.stdout)[0]["name"] == "small-el16", result.stderr


def test_the_installed_cli_trains_with_packaged_gin_files_and_no_start_up_noise(installed, tmp_path):
    result = run_installed(installed, tmp_path, "train", "--gin_file=runs/demo.gin", "--gin.NL=1", "--gin.DM=32",
                           "--gin.KV=8", "--gin.NH=2", "--gin.FF=48", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=4",
                           "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}", "--gin.MODEL_DIR='run'",
                           "--gin.train_config.progress_bar=False")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stopped at step 2 (train_steps)" in result.stdout
    assert (tmp_path / "run" / "checkpoint_2").is_dir()
    for noise in ("cuInit", "absl::InitializeLog", "cuda drivers", "oneDNN", "uncached FunctionDataset"):
        assert noise not in result.stderr
