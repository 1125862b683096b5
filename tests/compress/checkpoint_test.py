"""Compressed checkpoints on disk: the bytes the files take meet the goals, a fresh process reads back the very
model that was compressed in memory, `load_any` reads both kinds of checkpoint, and int8 stays close to float32 on
a trained model."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from t5scale.compress.checkpoint import save_compressed, stored_bytes
from t5scale.compress.compressed import compress_params
from t5scale.compress.settings import BASELINE, Setting
from t5scale.model.kernels import kernel_spec
from t5scale.model.layout import flat_params
from t5scale.weights.compressed_format import decompress_params
from t5scale.weights.load import PARAMS, is_compressed, load_any, model_from_flat, read_compressed
from tests.compress.models import copy_batch, save_checkpoint, trained_tiny_flat
from tests.testing import REPO, forward, random_model, random_tokens, tiny_config

# Every contracted axis is 128 or more wide, as in real shapes (DM 512, FF 2048 there): a per-channel float32
# scale then costs at most 4 bytes per 128 weights. ~1M parameters, 3.9 MB in float32.
BYTES_SHAPE = dict(num_encoder_layers=2, num_decoder_layers=2, d_model=128, d_kv=32, num_heads=4, d_ff=512,
                   vocab_size=512, scan_layers=False)


def _save(tmp_path, cfg, flat, setting):
    return save_compressed(str(tmp_path / setting.name), cfg, *compress_params(flat, setting), setting, "src", 7)


def test_bytes_on_disk_meet_the_goals(tmp_path):
    cfg = tiny_config(**BYTES_SHAPE)
    flat = flat_params(random_model(cfg))
    settings = {"float32": BASELINE, "int8": Setting(bits=8), "int4": Setting(bits=4),
                "int8_sparse": Setting(bits=8, sparsity=0.5), "int8_float_embedding": Setting(
                    bits=8, groups=("attention", "mlp"))}
    size = {key: os.path.getsize(_save(tmp_path, cfg, flat, s) / PARAMS) for key, s in settings.items()}
    assert size["float32"] >= 4 * sum(w.size for w in flat.values())  # the baseline: float32 params + header
    ratio = {key: size[key] / size["float32"] for key in settings}
    assert 0.25 <= ratio["int8"] <= 0.27, ratio
    assert ratio["int4"] <= 0.14, ratio
    assert size["int8_sparse"] < size["int8"], ratio  # a bitmask and half the codes, not a byte per weight
    assert size["int8_float_embedding"] > size["int8"], ratio  # the embedding is 512 x 128 of ~1M parameters
    assert stored_bytes(str(tmp_path / "int8"))["params"] == size["int8"]


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_bytes_on_disk_are_the_codes_the_scales_and_the_header_for_each_width(tmp_path, bits):
    """What the format must take, counted from the shapes alone: each kernel ceil(n * bits / 8) bytes of codes and
    one float32 scale per output channel (n / its contracted width), every other parameter float32, and
    safetensors' 8-byte header length and JSON header. A code stored a byte to itself, a scale per weight or a
    float copy would show. Every contracted axis here is >= 128 wide, so scales add at most 1/128 of the float32
    bytes; the header and the float tensors (norms, relative-bias tables) under 0.6% more. Measured: int8 26.06%,
    int4 13.61%, int2 7.39% of the float32 file."""
    cfg = tiny_config(**BYTES_SHAPE)
    flat = flat_params(random_model(cfg))
    expected = 0
    for name, w in flat.items():
        spec = kernel_spec(name)
        if spec is None:
            expected += 4 * w.size
        else:
            channels = w.size // int(np.prod([w.shape[a] for a in spec.contracting_axes]))
            expected += -(-w.size * bits // 8) + 4 * channels
    files = {key: _save(tmp_path, cfg, flat, s) / PARAMS for key, s in (("float32", BASELINE),
                                                                       ("quantized", Setting(bits=bits)))}
    header = int.from_bytes(files["quantized"].read_bytes()[:8], "little")
    assert os.path.getsize(files["quantized"]) == 8 + header + expected
    ratio = os.path.getsize(files["quantized"]) / os.path.getsize(files["float32"])
    assert bits / 32 <= ratio <= bits / 32 + 1 / 128 + 0.006, ratio


FRESH_PROCESS = """
import sys
import numpy as np
from t5scale.weights.load import load_any
from tests.testing import forward
tokens = np.load(sys.argv[1])
for i, folder in enumerate(sys.argv[2:]):
    model, _, step = load_any(folder)
    np.save(f"{folder}/logits.npy", np.asarray(forward(model, tokens["encoder"], tokens["decoder"])))
    print(step)
"""


def test_a_fresh_process_gets_the_logits_of_the_in_memory_compressed_model(tmp_path):
    rng = np.random.default_rng(0)
    encoder, decoder = random_tokens(rng, (2, 6)), random_tokens(rng, (2, 4))
    np.savez(tmp_path / "tokens.npz", encoder=encoder, decoder=decoder)
    cases = [(tiny_config(scan_layers=True), Setting(bits=4, sparsity=0.5, groups=("attention", "mlp"))),
             # groups of 4 divide every contracted axis: DM 24, KV 4, FF 36
             (tiny_config(scan_layers=False, d_kv=4), Setting(bits=2, granularity="group", group_size=4))]
    folders, expected = [], []
    for i, (cfg, setting) in enumerate(cases):
        flat = flat_params(random_model(cfg))
        in_memory = model_from_flat(cfg, decompress_params(*compress_params(flat, setting)))
        expected.append(np.asarray(forward(in_memory, encoder, decoder)))
        folders.append(str(_save(tmp_path / str(i), cfg, flat, setting)))
    out = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "tokens.npz"), *folders], cwd=REPO,
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["7", "7"]
    for folder, want in zip(folders, expected):
        np.testing.assert_array_equal(np.load(f"{folder}/logits.npy"), want)


def test_load_any_reads_ordinary_and_compressed_checkpoints(tmp_path):
    cfg = tiny_config()
    model = random_model(cfg)
    checkpoint = save_checkpoint(tmp_path / "run", model, step=5)
    loaded, path, step = load_any(str(tmp_path / "run"))
    assert (path, step) == (checkpoint, 5) and not is_compressed(str(checkpoint))
    for name, value in flat_params(loaded).items():
        np.testing.assert_array_equal(value, flat_params(model)[name])
    folder = _save(tmp_path, cfg, flat_params(model), BASELINE)
    assert is_compressed(str(folder))
    read_cfg, params, info = read_compressed(str(folder))
    assert read_cfg == cfg and info["setting"] == BASELINE.to_dict() and info["step"] == 7
    compressed_model, path, step = load_any(str(folder))
    assert step == 7 and str(path) == str(folder)
    for name, value in flat_params(compressed_model).items():  # float32 is stored exactly
        np.testing.assert_array_equal(value, flat_params(model)[name])


def test_int8_logits_stay_close_to_float32_on_a_trained_model():
    """Tolerance: every argmax the same and softmax probabilities within 0.01. Per-channel int8 moves each weight
    by at most 1/255 of its channel's largest; through 5 layers that moved this model's logits (range +-12) by ~0.07
    on average and 0.6 at most, which shifts probabilities by ~0.003. Four bits moves them far more (checked too,
    so the tolerance is not vacuous)."""
    cfg, flat = trained_tiny_flat()
    encoder, decoder, targets = copy_batch(0)
    reference = np.asarray(forward(model_from_flat(cfg, flat), encoder, decoder))
    assert np.mean(reference.argmax(-1) == targets) > 0.95  # it is trained: it copies its training batches

    def logits(setting):
        return np.asarray(forward(model_from_flat(cfg, decompress_params(*compress_params(flat, setting))),
                                  encoder, decoder))

    int8, int4 = logits(Setting(bits=8)), logits(Setting(bits=4))
    np.testing.assert_array_equal(int8.argmax(-1), reference.argmax(-1))
    probability_error = np.abs(jax.nn.softmax(int8) - jax.nn.softmax(reference)).max()
    assert probability_error < 0.01
    assert np.abs(int4 - reference).mean() > 4 * np.abs(int8 - reference).mean()


# --- What one host reads when a checkpoint is loaded onto a mesh (issue 27, item 11). ---

# One of two processes, 4 CPU devices each, loading onto a (data 2, model 4) fsdp mesh: the bytes tensorstore read
# from the checkpoint's files, and per parameter the index and sum of every shard this process holds, as JSON.
LOAD_ON_TWO_HOSTS = """
import json, sys, jax, numpy as np, tensorstore as ts
from flax import nnx
from t5scale.train import distributed
from t5scale.train.partitioning import MeshConfig, make_mesh
from t5scale.weights.load import load_any
distributed.maybe_initialize()
mesh = make_mesh(MeshConfig(data=2, model=4))
before = {m["name"]: m["values"][0]["value"] for m in ts.experimental_collect_matching_metrics(
    "/tensorstore/kvstore/file/bytes_read")}
model, _, step = load_any(sys.argv[1], mesh=mesh, rules="fsdp")
after = {m["name"]: m["values"][0]["value"] for m in ts.experimental_collect_matching_metrics(
    "/tensorstore/kvstore/file/bytes_read")}
shards = [[jax.tree_util.keystr(path), [[s.start, s.stop] for s in shard.index],
           float(np.asarray(shard.data, np.float64).sum())]
          for path, value in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
          for shard in value.addressable_shards]
print(json.dumps({"bytes_read": sum(after.values()) - sum(before.values()), "shards": shards}))
"""


def file_bytes_read() -> int:
    import tensorstore as ts

    return sum(m["values"][0]["value"] for m in ts.experimental_collect_matching_metrics(
        "/tensorstore/kvstore/file/bytes_read"))


@pytest.mark.slow  # a run on 8 devices, then two processes
def test_each_host_reads_only_the_shards_its_devices_hold(tmp_path):
    """A checkpoint trained on a (data 2, model 4) fsdp mesh is stored in the chunks of that mesh's shards; loaded by
    two processes onto the same mesh (its data axis runs across them, and fsdp splits every matrix over it), each
    holds the right slices and leaves unread what it does not hold: at least most of the half of the token
    embedding that is the other's (a host that read the whole model and then placed it reads all of it)."""
    from flax import nnx

    from tests.train.run_training import start

    trained = start(tmp_path / "run", 1, "1", "2", "4", "fsdp",
                    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert trained.wait(timeout=900) == 0, trained.communicate()[1][-3000:]
    before = file_bytes_read()
    whole = {jax.tree_util.keystr(path): np.asarray(value) for path, value in
             jax.tree_util.tree_leaves_with_path(nnx.state(load_any(str(tmp_path / "run"))[0], nnx.Param))}
    whole_bytes = file_bytes_read() - before
    port = 20000 + (os.getpid() + 17) % 20000
    processes = [subprocess.Popen(
        [sys.executable, "-c", LOAD_ON_TWO_HOSTS, str(tmp_path / "run")], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
             "T5SCALE_COORDINATOR": f"127.0.0.1:{port}", "T5SCALE_NUM_PROCESSES": "2", "T5SCALE_PROCESS_ID": str(i)})
        for i in range(2)]
    outs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outs[0][1][-3000:] + outs[1][1][-3000:]
    hosts = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    other_half_of_embedding = next(a.nbytes for name, a in whole.items() if "token_embedder" in name) / 2
    for host in hosts:
        assert 0 < host["bytes_read"] < whole_bytes - 0.8 * other_half_of_embedding, (host["bytes_read"], whole_bytes)
        for name, index, total in host["shards"]:
            assert total == pytest.approx(whole[name][tuple(slice(*s) for s in index)].astype(np.float64).sum(),
                                          rel=1e-6, abs=1e-6), name
    # The token embedding [vocab, embed] over (model, data): each host holds one half of the embedding dimension.
    embed_halves = [sorted({tuple(index[1]) for name, index, _ in host["shards"] if "token_embedder" in name})
                    for host in hosts]
    assert sorted(embed_halves) == [[(0, 16)], [(16, 32)]]
