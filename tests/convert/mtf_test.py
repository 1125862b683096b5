"""Mesh TF import: parity with transformers' own Mesh TF loader (committed logits from scripts/make_mtf_fixtures.py,
and live when transformers is installed), the sh / skv / shkv variants against a numpy forward pass that reads
Mesh TF's variables by their own names, and one clear line for each kind of bad input.

Shapes: v1_0 EL2 DL3 DM16 KV6 NH4 (NH*KV 24 != DM), v1_1 EL3 DL2 DM24 KV5 NH3 (15 != 24); vocab 64.
"""

import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from t5scale.config import ModelConfig, released_shapes
from t5scale.convert.gin_text import GinText
from t5scale.convert.mtf import config_from_gin, from_mtf, resolve_config
from t5scale.model.flops import count_params
from t5scale.model.layout import flat_params
from tests.convert.mtf_checkpoints import (
    numpy_forward,
    operative_config,
    random_variables,
    transformers_logits,
    write_checkpoint,
)
from tests.testing import (
    FIXTURES,
    assert_cached_decoding_like_the_reference,
    assert_imported_like_the_reference,
    forward,
    random_tokens,
)

MTF = FIXTURES / "mtf"
STEP = 524288


def reference(variant):
    return dict(np.load(MTF / variant / "reference.npz"))


@pytest.mark.parametrize("variant,scan_layers", [("v1_0", True), ("v1_1", True), ("v1_0", False)])
def test_import_reproduces_transformers_logits(variant, scan_layers):
    model, located = from_mtf(str(MTF / variant), scan_layers=scan_layers)
    assert located.step == STEP and located.prefix.endswith(f"model.ckpt-{STEP}")
    assert_imported_like_the_reference(model, variant, reference(variant))


def test_cached_decoding_of_the_import_reproduces_transformers_logits():
    model, _ = from_mtf(str(MTF / "v1_1"))
    ref = reference("v1_1")
    assert_cached_decoding_like_the_reference(model, ref)


@pytest.mark.hf
@pytest.mark.parametrize("gated", [False, True])
def test_live_parity_with_transformers_load_tf_weights_in_t5(gated, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    cfg = ModelConfig(num_encoder_layers=3, num_decoder_layers=1, d_model=20, d_kv=7, num_heads=2, d_ff=12,
                      vocab_size=50, activation="gated-gelu" if gated else "relu", tie_embeddings=not gated)
    folder = tmp_path / "run"
    folder.mkdir()
    prefix = write_checkpoint(str(folder / "model.ckpt-7"), random_variables(cfg, seed=11))
    (folder / "operative_config.gin").write_text(operative_config(cfg))
    rng = np.random.default_rng(3)
    x, y = random_tokens(rng, (2, 37), 50), random_tokens(rng, (2, 9), 50)
    x[0, 30:] = 0
    theirs, _ = transformers_logits(cfg, prefix, x, y)
    model, _ = from_mtf(str(folder))
    np.testing.assert_allclose(forward(model, x, y), theirs, atol=1e-4, rtol=1e-4)


MESH_TF_WROTE = {"v1_0_meshtf": dict(tied_kv=False, shared_heads=False), "skv": dict(tied_kv=True, shared_heads=False),
                 "sh": dict(tied_kv=False, shared_heads=True), "shkv": dict(tied_kv=True, shared_heads=True)}


@pytest.mark.parametrize("variant", MESH_TF_WROTE)
def test_checkpoints_mesh_tensorflow_wrote_import_to_its_own_logits(variant):
    """Fixtures of scripts/make_meshtf_fixtures.py: Mesh TF 0.1.21 built each variant from gin (t5's bi_v1.gin,
    bi_v1_shared.gin, SelfAttention.shared_kv), named and saved its variables and wrote operative_config.gin, and
    computed the logits. So the names, the gin file and the arithmetic all come from Mesh TF, not from t5scale."""
    from t5scale.data import tf

    folder = MTF / variant
    model, located = from_mtf(str(folder))
    assert {k: getattr(model.cfg, k) for k in MESH_TF_WROTE[variant]} == MESH_TF_WROTE[variant]
    ref = reference(variant)
    np.testing.assert_allclose(forward(model, ref["encoder_input_tokens"], ref["decoder_input_tokens"]), ref["logits"],
                               atol=1e-4, rtol=1e-4)
    reader = tf.train.load_checkpoint(located.prefix)
    theirs = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    assert count_params(model.cfg).total == sum(v.size for v in theirs.values())  # every variable, once
    ours, (n, h, d) = flat_params(model), (model.cfg.num_heads, model.cfg.d_kv, model.cfg.d_model)
    stack = "decoder" if model.cfg.shared_heads else "encoder"
    scope = f"{stack}/block_001/{'self_attention' if model.cfg.shared_heads else 'layer_000'}/SelfAttention"
    if model.cfg.tied_kv:  # one kernel serves as key and value: t5scale holds the key only, Mesh TF's kv
        assert not any(name.endswith("value/kernel") for name in ours)
        np.testing.assert_array_equal(ours["encoder/layers/1/attention/key/kernel"] if not model.cfg.shared_heads
                                      else ours["decoder/layers/1/self_attention/key/kernel"],
                                      theirs[f"{scope}/kv"].reshape(d, n, h))
    if model.cfg.shared_heads:  # the encoder has no weights of its own and runs the decoder's
        assert not any(name.startswith("encoder/") for name in ours)
        assert not any(name.startswith("encoder/") for name in theirs)


VARIANT_CASES = {
    "skv": dict(tied_kv=True),
    "sh": dict(shared_heads=True),
    "shkv": dict(shared_heads=True, tied_kv=True),
}


@pytest.mark.parametrize("variant", VARIANT_CASES)
def test_variants_match_a_numpy_forward_over_their_own_mesh_tf_names(variant, tmp_path):
    cfg = ModelConfig(num_encoder_layers=2, num_decoder_layers=2, d_model=16, d_kv=6, num_heads=4, d_ff=20,
                      vocab_size=64, **VARIANT_CASES[variant])
    variables = random_variables(cfg, seed=5)
    names = set(variables)
    assert any(n.endswith("/kv") for n in names) == cfg.tied_kv
    assert not any(n.endswith(("/k", "/v")) for n in names) == cfg.tied_kv
    assert any(n.startswith("encoder/") for n in names) != cfg.shared_heads  # sh: all in the decoder's scope
    write_checkpoint(str(tmp_path / f"model.ckpt-{STEP}"), variables)
    (tmp_path / "operative_config.gin").write_text(operative_config(cfg))
    model, _ = from_mtf(str(tmp_path))
    assert model.cfg.tied_kv == cfg.tied_kv and model.cfg.shared_heads == cfg.shared_heads
    rng = np.random.default_rng(1)
    x, y = random_tokens(rng, (2, 40)), random_tokens(rng, (2, 19))
    x[1, 33:] = 0
    np.testing.assert_allclose(forward(model, x, y), numpy_forward(variables, cfg, x, y), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", VARIANT_CASES)
def test_variant_param_count_equals_the_built_model(variant):
    from t5scale import abstract_model

    cfg = ModelConfig(num_encoder_layers=2, num_decoder_layers=2, d_model=16, d_kv=6, num_heads=4, d_ff=20,
                      vocab_size=64, **VARIANT_CASES[variant])
    built = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nnx.state(abstract_model(cfg), nnx.Param)))
    assert count_params(cfg).total == built
    assert sum(v.size for k, v in random_variables(cfg, 0, slots=False).items()) == built


def test_every_release_table_row_resolves_and_counts():
    for row in released_shapes().values():
        assert row.params_m is not None, row.name


def test_gin_text_reads_bindings_scopes_and_macros_without_executing():
    gin = GinText("import os  # never imported\n"
                  "d_model = 768\nnum_layers = 12   # a comment\n"
                  "encoder/mesh_tensorflow.transformer.transformer.make_layer_stack.num_layers = 16\n"
                  "make_layer_stack.num_layers = %num_layers\n"
                  "DenseReluDense.activation = ['gelu',\n    'linear']\n"
                  "Unitransformer.d_model = %d_model\nSelfAttention.num_heads = 12\nSelfAttention.key_value_size = 64\n"
                  "DenseReluDense.hidden_size = 2048\nmake_bitransformer.encoder_name = 'encoder'\n")
    cfg = config_from_gin(gin, vocab_size=32128, has_logits=True)
    assert cfg.operators() == dict(EL=16, DL=12, DM=768, KV=64, NH=12, FF=2048)
    assert cfg.is_gated and not cfg.tie_embeddings and not cfg.shared_heads and not cfg.tied_kv
    with pytest.raises(ValueError, match="no macro 'nope'"):
        GinText("SelfAttention.num_heads = %nope\n", "x.gin").get("SelfAttention", "num_heads")


def test_gin_text_reads_a_name_bound_only_in_scopes_and_refuses_scopes_that_disagree():
    """gin's operative_config.gin binds what each stack used in its scope (see tests/fixtures/mtf/skv)."""
    gin = GinText("encoder/SelfAttention.shared_kv = True\ndecoder/SelfAttention.shared_kv = True\n"
                  "encoder/DenseReluDense.activation = 'relu'\n"
                  "decoder/DenseReluDense.activation = ['gelu', 'linear']\n", "x.gin")
    assert gin.get("SelfAttention", "shared_kv") is True
    assert gin.get("EncDecAttention", "shared_kv", default="unset") == "unset"
    with pytest.raises(ValueError, match=r"x.gin: decoder/DenseReluDense.activation = \['gelu', 'linear'\], "
                                         r"encoder/DenseReluDense.activation = 'relu'; t5scale builds one value"):
        gin.get("DenseReluDense", "activation")


def test_release_folder_alone_gives_the_table_shape():
    row = released_shapes()["small-shkv"]
    cfg = resolve_config(None, row, vocab_size=32128, source=row.release_folder)
    assert cfg.shared_heads and cfg.tied_kv and cfg.operators() == dict(EL=6, DL=6, DM=512, KV=64, NH=8, FF=2048)


def _copy_fixture(tmp_path, name="run"):
    target = tmp_path / name
    shutil.copytree(MTF / "v1_0", target)
    return target


def test_gin_and_release_folder_that_disagree_is_one_line_naming_both(tmp_path):
    folder = _copy_fixture(tmp_path, released_shapes()["small-el16"].release_folder)
    with pytest.raises(ValueError) as error:
        from_mtf(str(folder))
    message = str(error.value)
    assert "\n" not in message and "operative_config.gin and the release table's row 'small-el16'" in message
    assert "num_encoder_layers 2 vs 16" in message and "d_model 16 vs 512" in message


def test_unknown_variable_is_one_line(tmp_path):
    variables = random_variables(ModelConfig(**_V1_0), seed=0)
    variables["encoder/block_000/layer_000/SelfAttention/memory_kv"] = np.zeros((3,), np.float32)
    write_checkpoint(str(tmp_path / "model.ckpt-1"), variables)
    (tmp_path / "operative_config.gin").write_text(operative_config(ModelConfig(**_V1_0)))
    with pytest.raises(ValueError, match=r"unknown variable 'encoder/block_000/layer_000/SelfAttention/memory_kv'"
                                         r".*has no such weight") as error:
        from_mtf(str(tmp_path))
    assert "\n" not in str(error.value)


def test_variable_of_the_wrong_shape_is_one_line(tmp_path):
    folder = _copy_fixture(tmp_path)
    gin = (folder / "operative_config.gin").read_text().replace("d_ff = 20", "d_ff = 21")
    (folder / "operative_config.gin").write_text(gin)
    with pytest.raises(ValueError, match=r"variable 'encoder/block_000/layer_001/DenseReluDense/wi/kernel' has "
                                         r"shape \[16, 20\], shape 'run' .* expects \[16, 21\]"):
        from_mtf(str(folder))


@pytest.mark.parametrize("part", ["data-00000-of-00001", "index"])
def test_truncated_checkpoint_file_is_one_line(part, tmp_path):
    folder = _copy_fixture(tmp_path)
    path = folder / f"model.ckpt-{STEP}.{part}"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupt") as error:
        from_mtf(str(folder))
    assert "\n" not in str(error.value)


def test_missing_gin_and_unknown_folder_says_what_to_copy(tmp_path):
    folder = _copy_fixture(tmp_path)
    (folder / "operative_config.gin").unlink()
    with pytest.raises(FileNotFoundError, match="no operative_config.gin .* not in the release table"):
        from_mtf(str(folder))
    with pytest.raises(FileNotFoundError, match=r"No model.ckpt-<N>.index in"):
        from_mtf(str(tmp_path))


_V1_0 = dict(num_encoder_layers=2, num_decoder_layers=3, d_model=16, d_kv=6, num_heads=4, d_ff=20, vocab_size=64)
