"""t5scale.train.slices: Cloud TPU names as Cloud TPU's documentation counts them, and every entry of the table as
libtpu itself lays it out (devices, hosts, chip kind)."""

import json
import subprocess
import sys

import pytest

from t5scale.train import slices
from t5scale.train.plan import libtpu_missing, worker_environment


# Cloud TPU's own accounts: v2/v3/v4/v5p names count TensorCores, v5e/v6e chips; JAX sees a TensorCore on v2/v3
# and a chip elsewhere; hosts have 4 chips (8 for the single-host v5litepod-8 / v6e-8).
@pytest.mark.parametrize("name, topology, chips, devices, hosts", [
    ("v2-8", "v2:2x2", 4, 8, 1), ("v3-32", "v3:4x4", 16, 32, 4), ("v3-2048", "v3:32x32", 1024, 2048, 256),
    ("v4-8", "v4:2x2x1", 4, 4, 1), ("v4-128", "v4:4x4x4", 64, 64, 16), ("v5litepod-1", "v5e:1x1", 1, 1, 1),
    ("v5litepod-8", "v5e:2x4", 8, 8, 1), ("v5litepod-256", "v5e:16x16", 256, 256, 64),
    ("v5p-64", "v5p:2x4x4", 32, 32, 8), ("v6e-16", "v6e:4x4", 16, 16, 4), ("v4:4x4x4", "v4:4x4x4", 64, 64, 16),
])
def test_cloud_names(name, topology, chips, devices, hosts):
    tpu = slices.parse_slice(name)
    assert (tpu.topology, tpu.chips, tpu.devices, tpu.hosts) == (topology, chips, devices, hosts)


def test_several_slices_multiply_chips_and_hosts():
    tpu = slices.parse_slice("v5litepod-16", num_slices=4)
    assert (tpu.chips, tpu.devices, tpu.hosts, tpu.cloud_name) == (64, 64, 16, "v5litepod-16 x 4 slices")


@pytest.mark.parametrize("name, message", [
    ("v4-12", "--topology 'v4-12': no such slice; v4-N with N in 8, 16, 32"),
    ("v7x-8", "--topology 'v7x-8': unknown TPU generation 'v7x'"),
    ("v5e:4x4x4", "--topology 'v5e:4x4x4': a v5e topology has 2 positive dimensions"),
    ("v9:2x2", "--topology 'v9:2x2': unknown TPU generation 'v9'"),
    ("tpu", "--topology 'tpu': write a Cloud TPU slice (v3-32, v4-128"),
])
def test_a_wrong_name_says_what_is_right(name, message):
    with pytest.raises(ValueError) as error:
        slices.parse_slice(name)
    assert str(error.value).startswith(message)


LIBTPU_LAYOUT = """
import json, sys
from jax.experimental import topologies
from t5scale.train import slices
out = {}
for generation in slices.GENERATIONS.values():
    for chips in generation.topologies:
        tpu = slices.parse_slice(f"{generation.name}:{generation.topologies[chips]}")
        devices = topologies.get_topology_desc(**tpu.topology_kwargs()).devices
        out[tpu.topology] = [len(devices), len({d.process_index for d in devices}), devices[0].device_kind]
print(json.dumps(out))
"""


def test_every_slice_in_the_table_is_what_libtpu_lays_out():
    missing = libtpu_missing()
    if missing and "x86-64 Linux only" in missing:
        pytest.skip(missing)
    assert missing is None, "make test installs libtpu (the [test] extra) on x86-64 Linux"
    process = subprocess.run([sys.executable, "-c", LIBTPU_LAYOUT], capture_output=True, text=True,
                             env=worker_environment(tpu=True), timeout=600)
    assert process.returncode == 0, process.stderr[-2000:]
    layout = json.loads(process.stdout.strip().splitlines()[-1])
    expected = {tpu.topology: [tpu.devices, tpu.hosts, tpu.generation.device_kind]
                for tpu in (slices.parse_slice(f"{g.name}:{dims}") for g in slices.GENERATIONS.values()
                            for dims in g.topologies.values())}
    assert layout == expected
    assert len(layout) == sum(len(g.topologies) for g in slices.GENERATIONS.values())
