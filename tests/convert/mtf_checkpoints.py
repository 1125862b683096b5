"""Small Mesh TF checkpoints for the tests and scripts/make_mtf_fixtures.py, and a plain-numpy forward pass that
reads Mesh TF's variables by their own names (the reference for the sh / skv variants, which transformers' loader
does not know).

Legend: b batch, l/m query/key length, d d_model, n heads, h head dim.
"""

from __future__ import annotations

import numpy as np

from t5scale.config import ModelConfig
from t5scale.convert.mtf import name_map
from t5scale.model.layers import relative_position_buckets


def random_variables(cfg: ModelConfig, seed: int, *, norm: str = "rms_norm", final_norm: str = "rms_norm",
                     slots: bool = True) -> dict[str, np.ndarray]:
    """Every Mesh TF variable of `cfg`, random (norm scales near 1), plus Adafactor slots and global_step."""
    rng = np.random.default_rng(seed)
    out = {}
    for rule in name_map(cfg, norm, final_norm):
        shape = rule.shape
        if len(shape) == 1:
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        elif rule.theirs.endswith("relative_attention_bias"):
            value = 0.5 * rng.standard_normal(shape)
        elif rule.theirs == "shared/embedding":
            value = rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape) / np.sqrt(shape[0])
        out[rule.theirs] = value.astype(np.float32)
    if slots:  # what a training checkpoint also holds: the importer must skip these
        first = next(name for name in out if name.endswith("/q"))
        out[f"{first}_slot_vc"] = np.ones(out[first].shape[1:], np.float32)
        out[f"{first}_slot_vr"] = np.ones(out[first].shape[:1], np.float32)
        out["global_step"] = np.asarray(524288, np.int64)
    return out


def write_checkpoint(prefix: str, variables: dict[str, np.ndarray]) -> str:
    """A TF v2-format checkpoint (`prefix.index`, `prefix.data-00000-of-00001`) with exactly these names, as Mesh
    TF's saver writes them."""
    from t5scale.data import tf  # TensorFlow, imported with the accelerators hidden from it

    names = sorted(variables)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(variables[name]) for name in names])
    return prefix


def operative_config(cfg: ModelConfig) -> str:
    """The lines of a Mesh TF operative_config.gin that decide the shape, in the style Mesh TF writes them."""
    activation = "['gelu', 'linear']" if cfg.is_gated else "'relu'"
    lines = [
        "import mesh_tensorflow.transformer.transformer_layers",
        "",
        "# Macros:",
        "# " + "=" * 78,
        f"d_ff = {cfg.d_ff}",
        f"d_kv = {cfg.d_kv}",
        f"d_model = {cfg.d_model}",
        "dropout_rate = 0.0",
        f"num_heads = {cfg.num_heads}",
        f"num_layers = {cfg.num_encoder_layers}",
        "",
        "# Parameters for DenseReluDense:",
        f"DenseReluDense.activation = {activation}",
        "DenseReluDense.hidden_size = %d_ff",
        "",
        "# Parameters for decoder/make_layer_stack:",
        "decoder/make_layer_stack.layers = [",
        "    @mesh_tensorflow.transformer.transformer_layers.SelfAttention,",
        "    @mesh_tensorflow.transformer.transformer_layers.EncDecAttention,",
        "    @mesh_tensorflow.transformer.transformer_layers.DenseReluDense]",
        f"decoder/make_layer_stack.num_layers = {cfg.num_decoder_layers}",
        "encoder/make_layer_stack.num_layers = %num_layers",
        "",
        "# Parameters for SelfAttention:",
        "SelfAttention.key_value_size = %d_kv",
        "SelfAttention.num_heads = %num_heads",
        "SelfAttention.relative_attention_type = 'bias_shared'",
        f"SelfAttention.shared_kv = {cfg.tied_kv}",
        "",
        "# Parameters for Unitransformer:",
        "Unitransformer.d_model = %d_model",
        f"Unitransformer.shared_embedding_and_softmax_weights = {cfg.tie_embeddings}",
    ]
    if cfg.shared_heads:
        lines += ["", "# Parameters for make_bitransformer:", "make_bitransformer.encoder_name = 'decoder'"]
    return "\n".join(lines) + "\n"


def transformers_logits(cfg: ModelConfig, prefix: str, encoder_tokens, decoder_tokens):
    """Logits of transformers' T5 loaded from the Mesh TF checkpoint `prefix` by its own loader, and the versions.
    Every weight starts as NaN, so one the loader did not fill shows."""
    import torch
    import transformers
    from transformers.models.t5.modeling_t5 import load_tf_weights_in_t5

    config = transformers.T5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, num_heads=cfg.num_heads, d_ff=cfg.d_ff,
        num_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers, dropout_rate=0.0,
        feed_forward_proj="gated-gelu" if cfg.is_gated else "relu", tie_word_embeddings=cfg.tie_embeddings,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(float("nan"))
    load_tf_weights_in_t5(model, config, prefix)
    unfilled = [name for name, param in model.named_parameters() if torch.isnan(param).any()]
    if unfilled:
        raise RuntimeError(f"transformers' loader left {unfilled} unfilled")
    with torch.no_grad():
        out = model(input_ids=torch.tensor(encoder_tokens, dtype=torch.long),
                    attention_mask=torch.tensor(encoder_tokens > 0),
                    decoder_input_ids=torch.tensor(decoder_tokens, dtype=torch.long))
    return out.logits.numpy(), {"torch": torch.__version__, "transformers": transformers.__version__}


def numpy_forward(w: dict[str, np.ndarray], cfg: ModelConfig, encoder_tokens: np.ndarray,
                  decoder_tokens: np.ndarray, *, norm: str = "rms_norm", final_norm: str = "rms_norm") -> np.ndarray:
    """Teacher-forced logits [b, l, v] of Mesh TF's T5 computed from its variables, in float64."""
    w = {k: np.asarray(v, np.float64) for k, v in w.items()}
    n, h = cfg.num_heads, cfg.d_kv
    shared = cfg.shared_heads  # bi_v1_shared.gin: named layer scopes, the encoder lives in the decoder's scope
    enc_stack, enc_scopes = ("decoder", ("self_attention", "dense_relu_dense")) if shared else (
        "encoder", ("layer_000", "layer_001"))
    dec_scopes = ("self_attention", "enc_dec_attention", "dense_relu_dense") if shared else (
        "layer_000", "layer_001", "layer_002")

    def rms(x, scale):
        return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-6) * scale

    def attention(x, memory, scope, bias):
        q = (x @ w[f"{scope}/q"]).reshape(*x.shape[:2], n, h)
        if cfg.tied_kv:
            k = v = (memory @ w[f"{scope}/kv"]).reshape(*memory.shape[:2], n, h)
        else:
            k = (memory @ w[f"{scope}/k"]).reshape(*memory.shape[:2], n, h)
            v = (memory @ w[f"{scope}/v"]).reshape(*memory.shape[:2], n, h)
        logits = np.einsum("blnh,bmnh->bnlm", q, k) + bias
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        return np.einsum("bnlm,bmnh->blnh", probs, v).reshape(*x.shape[:2], n * h) @ w[f"{scope}/o"]

    def mlp(x, scope):
        if cfg.is_gated:
            a = x @ w[f"{scope}/wi_0/kernel"]
            gelu = 0.5 * a * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a ** 3)))
            hidden = gelu * (x @ w[f"{scope}/wi_1/kernel"])
        else:
            hidden = np.maximum(x @ w[f"{scope}/wi/kernel"], 0)
        return hidden @ w[f"{scope}/wo/kernel"]

    def relative_bias(table, length, memory_length, bidirectional):
        buckets = relative_position_buckets(length, memory_length, bidirectional=bidirectional,
                                            num_buckets=cfg.relative_buckets, max_distance=128)
        return table[:, buckets][None]  # [1, n, l, m]

    emb = w["shared/embedding"]
    valid = encoder_tokens > 0
    pad = np.where(valid, 0.0, -1e9)[:, None, None, :]
    x = emb[encoder_tokens]
    table = w[f"{enc_stack}/block_000/{enc_scopes[0]}/SelfAttention/relative_attention_bias"]
    bias = relative_bias(table, x.shape[1], x.shape[1], True) + pad
    for i in range(cfg.num_encoder_layers):
        attn, ffn = (f"{enc_stack}/block_{i:03d}/{s}" for s in enc_scopes)
        x = x + attention(rms(x, w[f"{attn}/{norm}/scale"]), rms(x, w[f"{attn}/{norm}/scale"]),
                          f"{attn}/SelfAttention", bias)
        x = x + mlp(rms(x, w[f"{ffn}/{norm}/scale"]), f"{ffn}/DenseReluDense")
    encoded = rms(x, w[f"{enc_stack}/{final_norm}/scale"])

    y = emb[decoder_tokens]
    length = y.shape[1]
    causal = np.where(np.tril(np.ones((length, length), bool)), 0.0, -1e9)[None, None]
    table = w[f"decoder/block_000/{dec_scopes[0]}/SelfAttention/relative_attention_bias"]
    self_bias = relative_bias(table, length, length, False) + causal
    for i in range(cfg.num_decoder_layers):
        attn, cross, ffn = (f"decoder/block_{i:03d}/{s}" for s in dec_scopes)
        normed = rms(y, w[f"{attn}/{norm}/scale"])
        y = y + attention(normed, normed, f"{attn}/SelfAttention", self_bias)
        y = y + attention(rms(y, w[f"{cross}/{norm}/scale"]), encoded, f"{cross}/EncDecAttention", pad)
        y = y + mlp(rms(y, w[f"{ffn}/{norm}/scale"]), f"{ffn}/DenseReluDense")
    y = rms(y, w[f"decoder/{final_norm}/scale"])
    if cfg.tie_embeddings:
        return (y * cfg.d_model ** -0.5) @ emb.T
    return y @ w["decoder/logits/kernel"]
