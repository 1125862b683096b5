"""The T5 encoder-decoder (Raffel et al., 2020) in Flax NNX, for any shape.

Pre-norm residual blocks; one relative position bias table per stack (bidirectional in the encoder, causal in
the decoder); no biases; dropout on embeddings, attention weights, MLP hidden units, block outputs and the final
norm. Layers are either scanned (`nnx.scan`, parameters stacked on a leading `layers` axis) or unrolled
(`nnx.List`); both compute the same function.

Packing: several examples may share a row, told apart by segment ids (1, 2, ... ; 0 is padding). Attention never
crosses segments. Positions are not needed: the relative bias depends on position differences, which are the same
within a segment whether counted from the row start or the segment start.

Shapes: B batch, S encoder length, T decoder length, D d_model, V vocab, L layers.
"""

from __future__ import annotations

import operator
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from t5scale.config import ModelConfig, Remat
from t5scale.model.layers import NEG_INF, Attention, Mlp, RelativePositionBias, logical, make_norm, mask_to_bias
from t5scale.sharding import EMBED, LAYERS, VOCAB, constrain_batch

_REMAT_POLICIES = {
    Remat.FULL: jax.checkpoint_policies.nothing_saveable,
    Remat.DOTS: jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class DecodeCache(NamedTuple):
    """State for one-token-at-a-time decoding; the encoder's keys/values are stacked over decoder layers.

    The self-attention keys/values are stacked too for scanned stacks, and a list with one array per layer for
    unrolled ones: slicing a layer out of a stacked cache, and writing the step back, made XLA copy the cache at
    every step (greedy decoding of `small`, 8 x 114 tokens: 4.05 -> 3.55 s on CPU with the list).
    """

    self_k: jax.Array | list[jax.Array]  # [L, B, n, T_max, h] or L x [B, n, T_max, h] (attention_core.heads_major)
    self_v: jax.Array | list[jax.Array]
    cross_k: jax.Array  # [L, B_examples, n, S, h] encoder keys, projected once, shared by an example's beams
    cross_v: jax.Array  # [L, B_examples, n, S, h]
    encoder_valid: jax.Array  # [B_examples, S] bool, False on encoder padding
    index: jax.Array  # int32 scalar: position of the next token

    @property
    def max_len(self) -> int:
        return self.self_k[0].shape[-2]

    def write(self, k: jax.Array, v: jax.Array) -> DecodeCache:
        """Store the step's keys/values k, v [L, B, n, 1, h] at `index` and advance it."""
        return self._replace(self_k=_write_at(self.self_k, k, self.index), self_v=_write_at(self.self_v, v, self.index),
                             index=self.index + 1)

    def select_rows(self, rows: jax.Array) -> DecodeCache:
        """Self-attention keys/values of the batch rows `rows` (beam search); the encoder's stay as they are."""
        take = (lambda c: [a[rows] for a in c]) if isinstance(self.self_k, list) else (lambda c: c[:, rows])
        return self._replace(self_k=take(self.self_k), self_v=take(self.self_v))


def _write_at(cache: jax.Array | list[jax.Array], new: jax.Array, index: jax.Array) -> jax.Array | list[jax.Array]:
    if isinstance(cache, list):
        return [jax.lax.dynamic_update_slice_in_dim(a, new[i], index, axis=2) for i, a in enumerate(cache)]
    return jax.lax.dynamic_update_slice_in_dim(cache, new, index, axis=3)


class EncoderBlock(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.pre_attention_layer_norm = make_norm(cfg, rngs)
        self.attention = Attention(cfg, rngs=rngs)
        self.pre_mlp_layer_norm = make_norm(cfg, rngs)
        self.mlp = Mlp(cfg, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.dropout_rate)

    def __call__(self, x: jax.Array, bias: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        drop = lambda y: self.dropout(y, deterministic=rngs is None, rngs=rngs)  # noqa: E731
        h = self.pre_attention_layer_norm(x)
        x = x + drop(self.attention(h, h, bias, rngs))
        return x + drop(self.mlp(self.pre_mlp_layer_norm(x), rngs))


class DecoderBlock(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.pre_self_attention_layer_norm = make_norm(cfg, rngs)
        self.self_attention = Attention(cfg, rngs=rngs)
        self.pre_cross_attention_layer_norm = make_norm(cfg, rngs)
        self.encoder_decoder_attention = Attention(cfg, rngs=rngs)
        self.pre_mlp_layer_norm = make_norm(cfg, rngs)
        self.mlp = Mlp(cfg, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.dropout_rate)

    def __call__(self, x, encoded, self_bias, cross_bias, rngs, cache=None, index=None):
        """Full sequence (cache None) or one step: `cache` holds this layer's (self_k, self_v, cross_k, cross_v)
        and `index` the step's position; returns (x, None or this step's (key, value) [B, n, 1, h], which the
        caller writes into the cache: returning the whole updated cache would copy it at every step)."""
        drop = lambda y: self.dropout(y, deterministic=rngs is None, rngs=rngs)  # noqa: E731
        h = self.pre_self_attention_layer_norm(x)
        if cache is None:
            x = x + drop(self.self_attention(h, h, self_bias, rngs))
        else:
            self_k, self_v, cross_k, cross_v = cache
            k, v = (y.astype(self_k.dtype) for y in self.self_attention.project_kv(h))  # [B, n, 1, h]
            self_k = jax.lax.dynamic_update_slice_in_dim(self_k, k, index, axis=2)
            self_v = jax.lax.dynamic_update_slice_in_dim(self_v, v, index, axis=2)
            x = x + drop(self.self_attention.attend(self.self_attention.project_query(h), self_k, self_v,
                                                    self_bias, rngs))
            new_kv = (k, v)
        h = self.pre_cross_attention_layer_norm(x)
        if cache is None:
            x = x + drop(self.encoder_decoder_attention(h, encoded, cross_bias, rngs))
        else:
            x = x + drop(self._cross_attend_step(h, cross_k, cross_v, cross_bias, rngs))
        return x + drop(self.mlp(self.pre_mlp_layer_norm(x), rngs)), None if cache is None else new_kv

    def _cross_attend_step(self, h, cross_k, cross_v, cross_bias, rngs):
        """Cross-attention of one decoding step, h [B * K, 1, D] -> [B * K, 1, D], for K rows per example.

        In beam search the K beams of an example read the same encoder keys/values, so the cache holds them once
        per example (cross_k/v [B, n, S, h]) and the beams are attended as K query positions of their example: a
        [K, S] product per head instead of K matrix-vector ones, and a K-times smaller cache to read every step."""
        attention = self.encoder_decoder_attention
        q = attention.project_query(h)  # [B * K, n, 1, h]
        batch = cross_k.shape[0]
        q = q.reshape(batch, -1, *q.shape[1:]).squeeze(3).transpose(0, 2, 1, 3)  # [B, n, K, h]
        out = attention.attend(q, cross_k, cross_v, cross_bias, rngs)  # [B, K, D]
        return out.reshape(h.shape)

    def encoder_layer(self, x: jax.Array, bias: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        """This block used as an encoder layer (the `sh` variant): its self-attention and MLP with their norms,
        bidirectional `bias`, no cross-attention."""
        drop = lambda y: self.dropout(y, deterministic=rngs is None, rngs=rngs)  # noqa: E731
        h = self.pre_self_attention_layer_norm(x)
        x = x + drop(self.self_attention(h, h, bias, rngs))
        return x + drop(self.mlp(self.pre_mlp_layer_norm(x), rngs))


def _make_blocks(block_type: type[nnx.Module], cfg: ModelConfig, num_layers: int, rngs: nnx.Rngs):
    if not cfg.scan_layers:
        return nnx.List([block_type(cfg, rngs=rngs) for _ in range(num_layers)])

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: LAYERS})
    def create(rngs):
        return block_type(cfg, rngs=rngs)

    return create(rngs)


def _run_blocks(blocks, cfg: ModelConfig, num_layers: int, body: Callable, x, per_layer, shared):
    """x_out, ys = fold `body(block, x, per_layer[i], shared) -> (x, y_i)` over the layers.

    `per_layer` is a pytree with a leading layer axis (dropout keys, cache slices; unrolled stacks also take lists
    with one entry per layer); the `ys` come back stacked. Scanned and unrolled stacks run the same body, so they
    compute the same function.
    """
    if cfg.remat is not Remat.NONE:
        body = nnx.remat(body, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
        scan = nnx.scan(body, in_axes=(0, nnx.Carry, 0, None), out_axes=(nnx.Carry, 0), length=num_layers,
                        unroll=cfg.scan_unroll)
        return scan(blocks, x, per_layer, shared)
    ys = []
    is_list = lambda a: isinstance(a, list)  # noqa: E731
    for i, block in enumerate(blocks):
        x, y = body(block, x, jax.tree.map(operator.itemgetter(i), per_layer, is_leaf=is_list), shared)
        ys.append(y)
    return x, jax.tree.map(lambda *a: jnp.stack(a), *ys)


def _layer_rngs(key: jax.Array | None) -> nnx.Rngs | None:
    return None if key is None else nnx.Rngs(dropout=key)


def _same_segment(query_segments: jax.Array | None, key_segments: jax.Array | None) -> jax.Array | bool:
    if query_segments is None:
        return True
    return query_segments[:, :, None] == key_segments[:, None, :]


class Encoder(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, shared_with: Decoder | None = None):
        """`shared_with`: the `sh` variant (Mesh TF's bi_v1_shared.gin builds the encoder in the decoder's variable
        scope): this encoder has no parameters of its own and runs the decoder's blocks (self-attention and MLP),
        relative-bias table (with bidirectional buckets) and final norm."""
        self.cfg = cfg
        if shared_with is None:
            self.relpos_bias = RelativePositionBias(cfg, bidirectional=True, rngs=rngs)
            self.layers = _make_blocks(EncoderBlock, cfg, cfg.num_encoder_layers, rngs)
            self.encoder_norm = make_norm(cfg, rngs)
        else:
            self.relpos_bias = RelativePositionBias(cfg, bidirectional=True, rngs=rngs,
                                                    table=shared_with.relpos_bias.rel_embedding)
            self.layers = shared_with.layers
            self.encoder_norm = shared_with.decoder_norm
        self.shared = shared_with is not None
        self.dropout = nnx.Dropout(cfg.dropout_rate)

    def __call__(self, embedded: jax.Array, tokens: jax.Array, segment_ids: jax.Array | None,
                 rngs: nnx.Rngs | None) -> jax.Array:
        """embedded [B, S, D], tokens [B, S] (0 = padding) -> encoded [B, S, D]."""
        seq_len = tokens.shape[1]
        mask = (tokens > 0)[:, None, :] & _same_segment(segment_ids, segment_ids)
        bias = self.relpos_bias(seq_len, seq_len, tokens.shape[0]) + mask_to_bias(mask)  # [B, n, S, S]

        def body(block, x, key, bias):
            layer = block.encoder_layer if self.shared else block
            return layer(x, bias, _layer_rngs(key)), None

        x = self.dropout(embedded, deterministic=rngs is None, rngs=rngs)
        x, _ = _run_blocks(self.layers, self.cfg, self.cfg.num_encoder_layers, body, x,
                           _layer_keys(rngs, self.cfg.num_encoder_layers), bias)
        return self.dropout(self.encoder_norm(x), deterministic=rngs is None, rngs=rngs).astype(self.cfg.dtype)


class Decoder(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.relpos_bias = RelativePositionBias(cfg, bidirectional=False, rngs=rngs)
        self.layers = _make_blocks(DecoderBlock, cfg, cfg.num_decoder_layers, rngs)
        self.decoder_norm = make_norm(cfg, rngs)
        self.dropout = nnx.Dropout(cfg.dropout_rate)

    def __call__(self, embedded, encoded, self_bias, cross_bias, rngs, cache=None, index=None):
        """embedded [B, T, D] -> hidden [B, T, D] after the final norm (and each layer's new key/value when
        decoding one step)."""

        def body(block, x, per_layer, shared):
            key, layer_cache = per_layer
            return block(x, *shared, _layer_rngs(key), layer_cache, index)

        x = self.dropout(embedded, deterministic=rngs is None, rngs=rngs)
        x, cache = _run_blocks(self.layers, self.cfg, self.cfg.num_decoder_layers, body, x,
                               (_layer_keys(rngs, self.cfg.num_decoder_layers), cache),
                               (encoded, self_bias, cross_bias))
        x = self.dropout(self.decoder_norm(x), deterministic=rngs is None, rngs=rngs)
        return x.astype(self.cfg.dtype), cache


def _layer_keys(rngs: nnx.Rngs | None, num_layers: int) -> jax.Array | None:
    return None if rngs is None else jax.random.split(rngs.dropout(), num_layers)


class T5(nnx.Module):
    """T5 encoder-decoder. Call with token ids, get float32 logits.

    >>> model = T5(t5scale.shape("small"), rngs=nnx.Rngs(0))
    >>> logits = model(encoder_tokens, decoder_input_tokens)   # [B, S] int, [B, T] int -> [B, T, V]
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        cfg.require_buildable()
        self.cfg = cfg
        self.token_embedder = nnx.Embed(
            cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs,
            embedding_init=jax.nn.initializers.normal(1.0), embedding_metadata=logical(VOCAB, EMBED),
        )
        if cfg.shared_heads:
            self.decoder = Decoder(cfg, rngs=rngs)
            self.encoder = Encoder(cfg, rngs=rngs, shared_with=self.decoder)
        else:
            self.encoder = Encoder(cfg, rngs=rngs)
            self.decoder = Decoder(cfg, rngs=rngs)
        if not cfg.tie_embeddings:
            self.logits_dense = nnx.Einsum(
                "btd,dv->btv", (cfg.d_model, cfg.vocab_size), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                kernel_init=jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
                kernel_metadata=logical(EMBED, VOCAB), rngs=rngs)

    def __call__(self, encoder_input_tokens: jax.Array, decoder_input_tokens: jax.Array, *,
                 encoder_segment_ids: jax.Array | None = None, decoder_segment_ids: jax.Array | None = None,
                 dropout_rng: jax.Array | None = None) -> jax.Array:
        """Teacher-forced logits: [B, S], [B, T] int32 -> float32 [B, T, V].

        Segment ids (packing) must be given for both sides or neither. Dropout is on iff `dropout_rng` is given.
        """
        if (encoder_segment_ids is None) != (decoder_segment_ids is None):
            raise ValueError("Give both encoder_segment_ids and decoder_segment_ids (packed) or neither.")
        rngs = None if dropout_rng is None else nnx.Rngs(dropout=dropout_rng)
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids=encoder_segment_ids, rngs=rngs)
        return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                           encoder_segment_ids=encoder_segment_ids, decoder_segment_ids=decoder_segment_ids,
                           rngs=rngs)

    def encode(self, encoder_input_tokens: jax.Array, *, encoder_segment_ids: jax.Array | None = None,
               rngs: nnx.Rngs | None = None) -> jax.Array:
        """[B, S] int -> encoded [B, S, D]."""
        encoder_input_tokens = jnp.asarray(encoder_input_tokens)
        embedded = constrain_batch(self.token_embedder(encoder_input_tokens))
        return self.encoder(embedded, encoder_input_tokens, encoder_segment_ids, rngs)

    def decode(self, encoded: jax.Array, encoder_input_tokens: jax.Array, decoder_input_tokens: jax.Array, *,
               encoder_segment_ids: jax.Array | None = None, decoder_segment_ids: jax.Array | None = None,
               rngs: nnx.Rngs | None = None) -> jax.Array:
        """Teacher-forced decoder over the whole target: -> float32 logits [B, T, V]."""
        encoder_input_tokens = jnp.asarray(encoder_input_tokens)
        decoder_input_tokens = jnp.asarray(decoder_input_tokens)
        target_len = decoder_input_tokens.shape[1]
        causal = jnp.tril(jnp.ones((target_len, target_len), bool))[None]
        self_mask = causal & _same_segment(decoder_segment_ids, decoder_segment_ids)
        batch = decoder_input_tokens.shape[0]
        self_bias = self.decoder.relpos_bias(target_len, target_len, batch) + mask_to_bias(self_mask)
        cross_mask = (encoder_input_tokens > 0)[:, None, :] & _same_segment(decoder_segment_ids,
                                                                           encoder_segment_ids)
        hidden, _ = self.decoder(constrain_batch(self.token_embedder(decoder_input_tokens)), encoded, self_bias,
                                 mask_to_bias(cross_mask), rngs)
        return self.logits(hidden)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Decoder output [B, T, D] -> float32 logits [B, T, V]."""
        if self.cfg.tie_embeddings:
            # Tied output layer: rescale by DM^-0.5 because the embedding was initialised with unit variance.
            logits = self.token_embedder.attend(hidden * self.cfg.d_model ** -0.5)
        else:
            logits = self.logits_dense(hidden)
        return logits.astype(jnp.float32)

    def init_cache(self, encoded: jax.Array, encoder_input_tokens: jax.Array, max_decode_len: int,
                   rows_per_example: int = 1) -> DecodeCache:
        """Empty self-attention cache for `max_decode_len` steps, plus each layer's encoder keys/values.

        `rows_per_example` (beam search: the beam size K) decoder rows per example, row b * K + k for beam k of
        example b: the self-attention cache gets B * K rows, the encoder's keys/values stay once per example."""
        cfg = self.cfg
        batch = encoded.shape[0] * rows_per_example

        def body(block, x, per_layer, shared):
            return x, block.encoder_decoder_attention.project_kv(encoded)

        _, (cross_k, cross_v) = _run_blocks(self.decoder.layers, cfg, cfg.num_decoder_layers, body, 0, None, None)
        empty = jnp.zeros((cfg.num_decoder_layers, batch, cfg.num_heads, max_decode_len, cfg.d_kv), cfg.dtype)
        if not cfg.scan_layers:
            empty = list(empty)  # one array per layer (see DecodeCache)
        return DecodeCache(empty, empty, cross_k, cross_v, encoder_input_tokens > 0, jnp.zeros((), jnp.int32))

    def decode_step(self, tokens: jax.Array, cache: DecodeCache) -> tuple[jax.Array, DecodeCache]:
        """One decoder position for every row: tokens [B] int -> (float32 logits [B, V], advanced cache)."""
        max_len = cache.max_len
        visible = (jnp.arange(max_len) <= cache.index)[None, None, None, :]
        self_bias = self.decoder.relpos_bias.at_position(cache.index, max_len) + jnp.where(visible, 0.0, NEG_INF)
        cross_bias = mask_to_bias(cache.encoder_valid[:, None, :])
        layer_cache = (cache.self_k, cache.self_v, cache.cross_k, cache.cross_v)
        hidden, (k, v) = self.decoder(self.token_embedder(tokens[:, None]), None, self_bias, cross_bias,
                                      None, layer_cache, cache.index)  # k, v [L, B, n, 1, h]
        return self.logits(hidden)[:, 0], cache.write(k, v)
