"""t5scale.platforms: libtpu installed (the [test] extra installs it) on a machine without TPU changes nothing that
`import t5scale` does: JAX stays on the CPU, libtpu is never loaded, and nothing is printed."""

import os
import subprocess
import sys

import pytest

from t5scale.train.plan import libtpu_missing

PROBE = ("import t5scale, jax, sys; jax.devices(); "
         "print(jax.config.jax_platforms, jax.default_backend(), any('libtpu' in m for m in sys.modules))")


def _run(code: str, **env_changes) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "TPU_ACCELERATOR_TYPE")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, **env_changes},
                          timeout=300)


def test_libtpu_without_a_tpu_leaves_jax_on_the_cpu_quietly():
    if libtpu_missing():
        pytest.skip(libtpu_missing())
    process = _run(PROBE)
    assert process.returncode == 0, process.stderr
    assert process.stdout.split() == ["cpu", "cpu", "False"]
    assert "TPU" not in process.stderr and "libtpu" not in process.stderr, process.stderr


def test_a_platform_the_user_chose_stands():
    process = _run("import t5scale, jax; print(jax.config.jax_platforms)", JAX_PLATFORMS="cpu,tpu")
    assert process.stdout.split() == ["cpu,tpu"]
