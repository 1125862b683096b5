"""t5scale.malloc: the command restarts itself once with the tunables, and with them XLA's per-call temporaries
stop costing page faults."""

import json
import os
import subprocess
import sys

import pytest

from t5scale.malloc import TUNABLES

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="glibc tunables")

SHOW_TUNABLES = "from t5scale.malloc import reexec_with_reused_memory as r; r(); import os; " \
                "print(os.environ.get('GLIBC_TUNABLES'))"

# A jitted function whose 128 MB result XLA allocates on every call (and frees when it is dropped), as it does
# the temporaries of a train step; prints the fewest page faults of a call after the first two.
FAULTS_PER_CALL = """
import json, resource, jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.exp(x))
x = jnp.ones((8192, 4096))
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(min(faults[2:])))
"""


def run(code, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "T5SCALE_SYSTEM_MALLOC")}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1]


def test_the_command_restarts_with_the_tunables_unless_told_not_to():
    assert run(SHOW_TUNABLES) == TUNABLES
    assert run(SHOW_TUNABLES, T5SCALE_SYSTEM_MALLOC="1") == "None"
    assert run(SHOW_TUNABLES, GLIBC_TUNABLES="glibc.malloc.arena_max=2") == "glibc.malloc.arena_max=2"


def test_with_the_tunables_repeated_calls_reuse_memory_instead_of_faulting_it_in():
    default = json.loads(run(FAULTS_PER_CALL, GLIBC_TUNABLES=""))
    tuned = json.loads(run(FAULTS_PER_CALL, GLIBC_TUNABLES=TUNABLES))
    assert default > 16_000  # 128 MB / 4 KB pages = 32,768 faults
    assert tuned < 1_000, (default, tuned)


# Whether a 2048^3 matmul (~50 ms here) is already done when the call returns.
DONE_WHEN_CALLED = """
import json, sys, jax, jax.numpy as jnp
if sys.argv[1] == "inline":
    from t5scale.malloc import run_cpu_computations_inline
    run_cpu_computations_inline()
elif sys.argv[1] == "command":  # every t5scale command sets it up before it runs
    from t5scale.cli.main import main
    assert main(["shapes", "small"]) == 0
f = jax.jit(lambda x: x @ x)
x = jnp.ones((2048, 2048))
f(x).block_until_ready()
print(json.dumps(all(f(x).is_ready() for _ in range(3))))
"""


@pytest.mark.parametrize("mode, done", [("inline", True), ("command", True), ("default", False)])
def test_inline_cpu_computations_are_done_when_the_call_returns(mode, done):
    """So the trainer never has a second step's temporaries allocated while the first runs (the kept heap would
    hold both). The default (asynchronous) case shows the check can tell the difference."""
    out = subprocess.run([sys.executable, "-c", DONE_WHEN_CALLED, mode], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) is done
