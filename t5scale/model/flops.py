"""Parameter counts and training FLOPs from a ModelConfig alone (no model is built).

FLOPs count matmuls only (2 per multiply-add); norms, softmax and embedding lookups are negligible at T5 sizes.
Training = forward + backward = 3x forward (the backward pass computes two matmuls per forward matmul).
"""

from __future__ import annotations

import dataclasses

from t5scale.config import ModelConfig

TRAIN_FLOPS_PER_FORWARD = 3
PRETRAIN_LENGTHS = (512, 114)  # T5 span corruption: inputs 512, targets 114


@dataclasses.dataclass(frozen=True)
class ParamCount:
    embedding: int  # shared token embedding (also the output layer when tied)
    encoder: int  # layers + relative bias table + final norm
    decoder: int
    logits: int  # separate output layer (v1.1); 0 when tied

    @property
    def total(self) -> int:
        return self.embedding + self.encoder + self.decoder + self.logits


def count_params(cfg: ModelConfig) -> ParamCount:
    cfg.require_buildable()
    d, inner = cfg.d_model, cfg.attention_dim
    attention = d * inner * (3 if cfg.tied_kv else 4)  # query, key, (value), out
    mlp = d * cfg.d_ff * (3 if cfg.is_gated else 2)
    relpos = cfg.num_heads * cfg.relative_buckets
    encoder_layer = attention + mlp + 2 * d  # + two RMSNorm scales
    decoder_layer = 2 * attention + mlp + 3 * d
    return ParamCount(
        embedding=cfg.vocab_size * d,
        # sh: the encoder runs the decoder's parameters and has none of its own
        encoder=0 if cfg.shared_heads else cfg.num_encoder_layers * encoder_layer + relpos + d,
        decoder=cfg.num_decoder_layers * decoder_layer + relpos + d,
        logits=0 if cfg.tie_embeddings else d * cfg.vocab_size,
    )


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """Training FLOPs for one example (forward + backward)."""

    encoder: int  # encoder projections and MLPs
    decoder: int  # decoder projections (self + cross) and MLPs
    attention: int  # query-key scores and weighted sums, both stacks
    logits: int  # output layer

    @property
    def total(self) -> int:
        return self.encoder + self.decoder + self.attention + self.logits


def training_flops(cfg: ModelConfig, input_len: int = PRETRAIN_LENGTHS[0],
                   target_len: int = PRETRAIN_LENGTHS[1]) -> FlopCount:
    """FLOPs to train on one example of `input_len` encoder and `target_len` decoder tokens."""
    if input_len < 1 or target_len < 1:
        raise ValueError(f"Lengths must be positive, got input_len={input_len}, target_len={target_len}.")
    cfg.require_buildable()
    d, inner, s, t = cfg.d_model, cfg.attention_dim, input_len, target_len
    kv_projections = 1 if cfg.tied_kv else 2
    mlp = 2 * d * cfg.d_ff * (3 if cfg.is_gated else 2)  # per token
    encoder_layer = s * (2 * d * inner * (2 + kv_projections) + mlp)
    decoder_layer = (t * 2 * d * inner * (2 + kv_projections)  # self-attention q, k, v, out
                     + t * 2 * d * inner * 2 + s * 2 * d * inner * kv_projections  # cross: q, out on T; k, v on S
                     + t * mlp)
    attention = (cfg.num_encoder_layers * 4 * s * s * inner
                 + cfg.num_decoder_layers * (4 * t * t * inner + 4 * t * s * inner))
    forward = FlopCount(
        encoder=cfg.num_encoder_layers * encoder_layer,
        decoder=cfg.num_decoder_layers * decoder_layer,
        attention=attention,
        logits=2 * t * d * cfg.vocab_size,
    )
    return FlopCount(*(TRAIN_FLOPS_PER_FORWARD * getattr(forward, f.name) for f in dataclasses.fields(FlopCount)))
