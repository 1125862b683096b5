"""Parity with Hugging Face's T5 on fixtures made by scripts/make_hf_fixtures.py (transformers 4.x, fp32)."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from t5scale.convert import config_from_hf, config_to_hf, from_hf, to_hf
from tests.testing import (
    FIXTURES,
    assert_cached_decoding_like_the_reference,
    assert_imported_like_the_reference,
    forward,
    tiny_config,
)

HF = FIXTURES / "hf"
VARIANTS = ["v1_0", "v1_1"]


def reference(variant):
    return dict(np.load(HF / variant / "reference.npz"))


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
def test_imported_model_reproduces_hf_logits(variant, scan_layers):
    model = from_hf(HF / variant, scan_layers=scan_layers)
    ref = reference(variant)
    assert_imported_like_the_reference(model, variant, ref)
    valid = ref["encoder_input_tokens"] > 0  # HF leaves padded encoder positions unmasked as queries too
    np.testing.assert_allclose(np.asarray(model.encode(ref["encoder_input_tokens"]))[valid], ref["encoded"][valid],
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_decoding_of_imported_model_reproduces_hf_logits(variant):
    model, ref = from_hf(HF / variant), reference(variant)
    assert_cached_decoding_like_the_reference(model, ref)


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_writes_back_the_same_tensors_and_config(variant, tmp_path):
    to_hf(from_hf(HF / variant), tmp_path)
    original, exported = load_file(HF / variant / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert set(exported) == set(original)
    for name, tensor in original.items():
        np.testing.assert_array_equal(exported[name], tensor, err_msg=name)
    ours, theirs = json.loads((tmp_path / "config.json").read_text()), json.loads((HF / variant / "config.json")
                                                                                  .read_text())
    for key in ("num_layers", "num_decoder_layers", "d_model", "d_kv", "num_heads", "d_ff", "vocab_size",
                "feed_forward_proj", "relative_attention_num_buckets", "relative_attention_max_distance"):
        assert ours[key] == theirs[key], key
    assert ours["tie_word_embeddings"] == theirs.get("tie_word_embeddings", True)


@pytest.mark.hf
@pytest.mark.parametrize("variant", VARIANTS)
def test_transformers_loads_the_export_and_gives_the_same_logits(variant, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model, ref = from_hf(HF / variant), reference(variant)
    to_hf(model, tmp_path)
    hf_model = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    x, y = ref["encoder_input_tokens"], ref["decoder_input_tokens"]
    with torch.no_grad():
        hf_logits = hf_model(input_ids=torch.tensor(x, dtype=torch.long), attention_mask=torch.tensor(x > 0),
                             decoder_input_ids=torch.tensor(y, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(hf_logits, forward(model, x, y), atol=1e-4, rtol=1e-4)


def test_missing_checkpoint_pieces_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        from_hf(tmp_path)
    shutil.copy(HF / "v1_0" / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"No model.safetensors.*pytorch_model.bin.*safe_serialization"):
        from_hf(tmp_path)
    config = json.loads((HF / "v1_0" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_layers": 3}))  # file holds 2 layers
    shutil.copy(HF / "v1_0" / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="encoder.block.2.layer.0.SelfAttention.q.weight' is missing"):
        from_hf(tmp_path)


def test_tensors_the_config_has_no_place_for_are_an_error_naming_them(tmp_path):
    """A config.json with fewer layers than the file (here 1 encoder layer of 2) must not load the first layers
    and drop the rest."""
    config = json.loads((HF / "v1_0" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_layers": 1}))
    shutil.copy(HF / "v1_0" / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(ValueError) as error:
        from_hf(tmp_path)
    message = str(error.value)
    # encoder.block.1 holds q, k, v, o, wi, wo and two norms
    assert "8 tensors that config.json's shape has no place for" in message and "\n" not in message
    assert "'encoder.block.1.layer.0.SelfAttention.k.weight'" in message


def test_config_conversion_rejects_what_the_other_side_cannot_express():
    with pytest.raises(ValueError, match="feed_forward_proj='gated-silu'"):
        config_from_hf({"model_type": "t5", "feed_forward_proj": "gated-silu", "num_layers": 1, "d_model": 8,
                        "d_kv": 2, "num_heads": 2, "d_ff": 8, "vocab_size": 16})
    with pytest.raises(ValueError, match="skv"):
        config_to_hf(tiny_config(tied_kv=True))
    cfg = tiny_config(activation="gated-gelu", tie_embeddings=False)
    assert config_from_hf(config_to_hf(cfg), name="test-tiny") == cfg.replace(dropout_rate=0.0)
