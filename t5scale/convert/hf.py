"""Hugging Face T5 checkpoints (config.json + safetensors) <-> t5scale models, without torch.

The whole correspondence is `_name_map`: one line per weight, with the axis change it needs. HF stores a Linear
weight as [out, in] with heads joined; t5scale stores einsum kernels [in, heads, head_dim] (see model/layers.py).
"""

from __future__ import annotations

import json
import pathlib
from typing import Callable

import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from t5scale.config import Activation, ModelConfig
from t5scale.model.layout import flat_params, load_flat_params
from t5scale.model.t5 import T5

_ACTIVATIONS = {"relu": Activation.RELU, "gated-gelu": Activation.GATED_GELU}
_SAFETENSORS, _INDEX = "model.safetensors", "model.safetensors.index.json"
# Copies of shared.weight some files also hold: each stack's input embedding, and (tied configs) the output layer,
# which transformers ties to shared.weight on loading whatever the file says.
_TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
    """ModelConfig from an HF `config.json` dict; `overrides` set t5scale-only fields (dtype, scan_layers...)."""
    if hf.get("model_type", "t5") != "t5":
        raise ValueError(f"Not a T5 checkpoint: model_type={hf.get('model_type')!r}.")
    activation = hf.get("feed_forward_proj", "relu")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"Unsupported feed_forward_proj={activation!r}; t5scale supports {sorted(_ACTIVATIONS)}.")
    return ModelConfig(
        num_encoder_layers=hf["num_layers"],
        num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        d_model=hf["d_model"], d_kv=hf["d_kv"], num_heads=hf["num_heads"], d_ff=hf["d_ff"],
        vocab_size=hf["vocab_size"], activation=_ACTIVATIONS[activation],
        tie_embeddings=hf.get("tie_word_embeddings", True),
        relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        dropout_rate=hf.get("dropout_rate", 0.1), layer_norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        **overrides,
    )


def config_to_hf(cfg: ModelConfig) -> dict:
    if cfg.tied_kv:
        raise ValueError(f"Shape {cfg.name!r} ties keys and values (skv); Hugging Face's T5 cannot express that.")
    activation = {v: k for k, v in _ACTIVATIONS.items()}[cfg.activation]
    return {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "is_encoder_decoder": True,
        "num_layers": cfg.num_encoder_layers, "num_decoder_layers": cfg.num_decoder_layers,
        "d_model": cfg.d_model, "d_kv": cfg.d_kv, "num_heads": cfg.num_heads, "d_ff": cfg.d_ff,
        "vocab_size": cfg.vocab_size, "feed_forward_proj": activation, "tie_word_embeddings": cfg.tie_embeddings,
        "relative_attention_num_buckets": cfg.relative_buckets,
        "relative_attention_max_distance": cfg.relative_max_distance,
        "dropout_rate": cfg.dropout_rate, "layer_norm_epsilon": cfg.layer_norm_eps,
        "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0, "initializer_factor": 1.0,
    }


# (t5scale name, HF name, t5scale array from HF array, HF array from t5scale array)
Rule = tuple[str, str, Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]


def _name_map(cfg: ModelConfig) -> list[Rule]:
    n, h, d = cfg.num_heads, cfg.d_kv, cfg.d_model
    same = (lambda w: w, lambda w: w)
    transpose = (lambda w: w.T, lambda w: w.T)
    heads_in = (lambda w: w.T.reshape(d, n, h), lambda k: k.reshape(d, n * h).T)  # q/k/v [n*h, d] <-> [d, n, h]
    heads_out = (lambda w: w.T.reshape(n, h, d), lambda k: k.reshape(n * h, d).T)  # o [d, n*h] <-> [n, h, d]
    mlp = ["wi_0", "wi_1"] if cfg.is_gated else ["wi"]

    def attention(ours: str, theirs: str) -> list[Rule]:
        return [(f"{ours}/{a}/kernel", f"{theirs}.{b}.weight", *heads_in)
                for a, b in (("query", "q"), ("key", "k"), ("value", "v"))] + [
            (f"{ours}/out/kernel", f"{theirs}.o.weight", *heads_out)]

    def mlp_rules(ours: str, theirs: str) -> list[Rule]:
        return [(f"{ours}/{w}/kernel", f"{theirs}.{w}.weight", *transpose) for w in (*mlp, "wo")]

    rules = [("token_embedder/embedding", "shared.weight", *same)]
    for stack, num_layers in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
        rules.append((f"{stack}/relpos_bias/rel_embedding",
                      f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", *transpose))
        rules.append((f"{stack}/{stack}_norm/scale", f"{stack}.final_layer_norm.weight", *same))
        for i in range(num_layers):
            ours, theirs = f"{stack}/layers/{i}", f"{stack}.block.{i}.layer"
            if stack == "encoder":
                rules += attention(f"{ours}/attention", f"{theirs}.0.SelfAttention")
                rules.append((f"{ours}/pre_attention_layer_norm/scale", f"{theirs}.0.layer_norm.weight", *same))
                rules += mlp_rules(f"{ours}/mlp", f"{theirs}.1.DenseReluDense")
                rules.append((f"{ours}/pre_mlp_layer_norm/scale", f"{theirs}.1.layer_norm.weight", *same))
            else:
                rules += attention(f"{ours}/self_attention", f"{theirs}.0.SelfAttention")
                rules.append((f"{ours}/pre_self_attention_layer_norm/scale", f"{theirs}.0.layer_norm.weight",
                              *same))
                rules += attention(f"{ours}/encoder_decoder_attention", f"{theirs}.1.EncDecAttention")
                rules.append((f"{ours}/pre_cross_attention_layer_norm/scale", f"{theirs}.1.layer_norm.weight",
                              *same))
                rules += mlp_rules(f"{ours}/mlp", f"{theirs}.2.DenseReluDense")
                rules.append((f"{ours}/pre_mlp_layer_norm/scale", f"{theirs}.2.layer_norm.weight", *same))
    if not cfg.tie_embeddings:
        rules.append(("logits_dense/kernel", "lm_head.weight", *transpose))
    return rules


def _read_tensors(directory: pathlib.Path) -> dict[str, np.ndarray]:
    if (directory / _SAFETENSORS).exists():
        return load_file(directory / _SAFETENSORS)
    if (directory / _INDEX).exists():  # sharded checkpoint
        shards = sorted(set(json.loads((directory / _INDEX).read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(directory / shard).items()}
    found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    raise FileNotFoundError(
        f"No {_SAFETENSORS} or {_INDEX} in {directory} (found: {found}). t5scale reads safetensors only; "
        "re-save a PyTorch checkpoint with transformers' save_pretrained(..., safe_serialization=True).")


def from_hf(directory: str | pathlib.Path, **config_overrides) -> T5:
    """Load a Hugging Face T5 checkpoint directory as a t5scale model (float32 weights, no torch needed)."""
    directory = pathlib.Path(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: expected a Hugging Face T5 checkpoint directory.")
    cfg = config_from_hf(json.loads(config_path.read_text()), **config_overrides)
    tensors = _read_tensors(directory)
    if "shared.weight" not in tensors and "encoder.embed_tokens.weight" in tensors:
        tensors["shared.weight"] = tensors["encoder.embed_tokens.weight"]  # older files store the tied copy only
    rules = _name_map(cfg)
    copies = {*_TIED_COPIES, "lm_head.weight"} if cfg.tie_embeddings else set(_TIED_COPIES)
    unused = sorted(set(tensors) - {theirs for _, theirs, _, _ in rules} - copies)
    if unused:
        raise ValueError(f"{directory}: {len(unused)} tensors that config.json's shape has no place for, e.g. "
                         f"{', '.join(map(repr, unused[:3]))}; the checkpoint does not match its config.json.")
    params = {}
    for ours, theirs, to_ours, _ in rules:
        if theirs not in tensors:
            raise ValueError(f"{directory}: tensor {theirs!r} is missing; the checkpoint does not match its "
                             "config.json.")
        params[ours] = to_ours(tensors[theirs].astype(np.float32))
    model = nnx.eval_shape(lambda: T5(cfg.replace(name=directory.name), rngs=nnx.Rngs(params=0)))
    load_flat_params(model, params)
    return model


def to_hf(model: T5, directory: str | pathlib.Path) -> pathlib.Path:
    """Write `model` as a Hugging Face T5 checkpoint (config.json + model.safetensors) that transformers loads."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    params = flat_params(model)
    tensors = {theirs: np.ascontiguousarray(to_theirs(params[ours]).astype(np.float32))
               for ours, theirs, _, to_theirs in _name_map(model.cfg)}
    save_file(tensors, directory / _SAFETENSORS, metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config_to_hf(model.cfg), indent=2) + "\n")
    return directory

