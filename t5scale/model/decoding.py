"""Inference with a trained T5: greedy decoding, sampling, beam search, and scoring of given targets.

Conventions follow t5x (`t5x/decoding.py`) and seqio:
- The decoder starts from token 0 (T5 uses padding as BOS); the returned tokens leave that start token out, so
  `tokens[:, t]` is the token generated at step t.
- A row that emits EOS keeps the EOS and gets padding (0) after it; decoding stops once every row has ended.
- Sampling filters the logits as t5x's `temperature_sample` does (temperature, then top-k, then top-p); each row
  draws from its own key, fold_in(key(seed), row id), so its tokens do not depend on the batch it is in.
- Beam search ranks finished hypotheses by log p / ((5 + length) / 6) ** alpha (Wu et al., 2016), length counting
  the EOS.

Every entry point is one jitted program (`jit_with_model`) whose loop is a `jax.lax.while_loop` over
`T5.decode_step`, so the parameters are arguments of the compiled program, not constants baked into it.
Shapes: B batch, S encoder length, T max decode length, K beam size, V vocab.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5scale.model.t5 import T5, DecodeCache

PAD_ID = 0  # also the decoder's start token
EOS_ID = 1


def jit_with_model(fn=None, *, static_argnums: tuple[int, ...] = ()):
    """`jax.jit` of fn(model, *args), the model passed as (graphdef, state): the compiled program returns fn's
    result only. `nnx.jit` also returns the model's state, so every call wrote a copy of every parameter (242 MB
    for `small` in float32: that much more memory, and its time). The decorated function has `.lower` like a jitted
    one. `static_argnums` count the model as argument 0, as for nnx.jit."""
    if fn is None:
        return functools.partial(jit_with_model, static_argnums=static_argnums)

    @functools.partial(jax.jit, static_argnums=(0, *(i + 1 for i in static_argnums)))
    def jitted(graphdef, state, *args):
        return fn(nnx.merge(graphdef, state), *args)

    @functools.wraps(fn)
    def call(model, *args):
        return jitted(*nnx.split(model), *args)

    call.lower = lambda model, *args: jitted.lower(*nnx.split(model), *args)
    return call


def brevity_penalty(alpha: float | jax.Array, length: int | jax.Array) -> jax.Array:
    """((5 + length) / 6) ** alpha: the length normalisation of GNMT (Wu et al., 2016) that t5x uses."""
    return ((5.0 + length) / 6.0) ** alpha


def _make_step_fn(model: T5):
    """`model.decode_step` for use inside `jax.lax.while_loop`.

    NNX refuses to run a module whose variables belong to an outer trace level inside an inner one (the scanned
    stacks are `nnx.scan`s), so the module is rebuilt inside the loop body from its state's raw arrays.
    """
    graphdef, state = nnx.split(model)
    arrays, treedef = jax.tree.flatten(state)

    def step_fn(tokens: jax.Array, cache: DecodeCache) -> tuple[jax.Array, DecodeCache]:
        return nnx.merge(graphdef, jax.tree.unflatten(treedef, arrays)).decode_step(tokens, cache)

    return step_fn


# ----------------------------------------------------------------------------------------------------------------
# Greedy decoding and sampling: one token per row per step
# ----------------------------------------------------------------------------------------------------------------


class _DecodeState(NamedTuple):
    tokens: jax.Array  # [B, T] int32: the output so far, 0 beyond the current step
    last: jax.Array  # [B] int32: the token fed at the next step (0 = start token)
    ended: jax.Array  # [B] bool: the row has emitted EOS
    log_likelihood: jax.Array  # [B] float32: sum of log p(token) of the output so far, EOS included
    cache: DecodeCache  # cache.index is the current step


def _decode_loop(model: T5, encoder_input_tokens: jax.Array, max_decode_len: int, eos_id: int, choose
                 ) -> tuple[jax.Array, jax.Array]:
    """(tokens [B, T], log-likelihoods [B]) of decoding with `choose(logits [B, V], step) -> [B] int32`."""
    batch = encoder_input_tokens.shape[0]
    cache = model.init_cache(model.encode(encoder_input_tokens), encoder_input_tokens, max_decode_len)
    step_fn = _make_step_fn(model)

    def not_done(state: _DecodeState) -> jax.Array:
        return (state.cache.index < max_decode_len) & ~jnp.all(state.ended)

    def step(state: _DecodeState) -> _DecodeState:
        logits, cache = step_fn(state.last, state.cache)
        token = jnp.where(state.ended, PAD_ID, choose(logits, state.cache.index).astype(jnp.int32))
        logprob = jnp.take_along_axis(jax.nn.log_softmax(logits), token[:, None], axis=-1)[:, 0]
        log_likelihood = state.log_likelihood + jnp.where(state.ended, 0.0, logprob)
        tokens = state.tokens.at[:, state.cache.index].set(token)
        return _DecodeState(tokens, token, state.ended | (token == eos_id), log_likelihood, cache)

    start = _DecodeState(jnp.zeros((batch, max_decode_len), jnp.int32), jnp.full((batch,), PAD_ID, jnp.int32),
                         jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.float32), cache)
    final = jax.lax.while_loop(not_done, step, start)
    return final.tokens, final.log_likelihood


def _argmax(logits: jax.Array, step: jax.Array) -> jax.Array:
    return jnp.argmax(logits, axis=-1)


@jit_with_model(static_argnums=(2, 3))
def _greedy_decode(model: T5, encoder_input_tokens: jax.Array, max_decode_len: int, eos_id: int) -> jax.Array:
    return _decode_loop(model, encoder_input_tokens, max_decode_len, eos_id, _argmax)[0]


def greedy_decode(model: T5, encoder_input_tokens: jax.Array, max_decode_len: int, *, eos_id: int = EOS_ID
                  ) -> jax.Array:
    """Argmax decoding: encoder tokens [B, S] int (0 = padding) -> int32 [B, T].

    Each row is its argmax continuation up to and including its first EOS, then padding 0.
    `sample(..., temperature=0)` gives the same tokens with their log-likelihoods.
    """
    return _greedy_decode(model, jnp.asarray(encoder_input_tokens, jnp.int32), max_decode_len, eos_id)


class _Sampler(NamedTuple):
    key: jax.Array  # the typed PRNG key of the seed
    row_ids: jax.Array  # [B] int32
    temperature: jax.Array  # float32 scalar, > 0
    top_p: jax.Array  # float32 scalar in (0, 1]; used only when the program was compiled with nucleus=True


def check_sampling(temperature: float, top_k: int, top_p: float, beam_size: int = 1) -> None:
    """One ValueError naming the bad argument: temperature >= 0 (0: greedy), top_k >= 0 (0: all tokens),
    0 < top_p <= 1 (1: all tokens), and beam_size 1 when sampling."""
    if not 0 <= temperature < float("inf"):  # also refuses NaN
        raise ValueError(f"temperature must be a finite number >= 0 (0 decodes greedily), got {temperature!r}.")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 keeps every token), got {top_k!r}.")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 keeps every token), got {top_p!r}.")
    if temperature > 0 and beam_size != 1:
        raise ValueError(f"Beam search does not sample: beam_size must be 1 when temperature > 0, got beam_size "
                         f"{beam_size} and temperature {temperature}.")


def sampling_logits(logits: jax.Array, temperature: jax.Array, top_k: int, top_p: jax.Array | None) -> jax.Array:
    """logits / temperature, then -inf outside the top_k most likely tokens (top_k 0: none cut), then -inf outside
    the nucleus: the fewest most likely tokens whose probability (of the tempered, top-k-cut distribution) reaches
    top_p (None: none cut). t5x's order. A token tied with the last one kept is kept too."""
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        descending = -jnp.sort(-logits, axis=-1)
        probs = jax.nn.softmax(descending, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # of the more likely tokens: 0 for the first
        kept = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)  # >= 1
        cutoff = jnp.take_along_axis(descending, kept - 1, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


@jit_with_model(static_argnums=(2, 3, 4, 5))
def _sample(model: T5, encoder_input_tokens: jax.Array, max_decode_len: int, eos_id: int, top_k: int,
            nucleus: bool, sampler: _Sampler | None) -> tuple[jax.Array, jax.Array]:
    if sampler is None:  # temperature 0
        return _decode_loop(model, encoder_input_tokens, max_decode_len, eos_id, _argmax)

    def choose(logits, step):
        keys = jax.vmap(lambda row: jax.random.fold_in(jax.random.fold_in(sampler.key, row), step))(sampler.row_ids)
        logits = sampling_logits(logits, sampler.temperature, top_k, sampler.top_p if nucleus else None)
        return jax.vmap(jax.random.categorical)(keys, logits)

    return _decode_loop(model, encoder_input_tokens, max_decode_len, eos_id, choose)


def sample(model: T5, encoder_input_tokens: jax.Array, max_decode_len: int, *, seed: int,
           row_ids: jax.Array | None = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           eos_id: int = EOS_ID) -> tuple[jax.Array, jax.Array]:
    """Ancestral sampling: encoder tokens [B, S] -> (int32 tokens [B, T], float32 log-likelihoods [B]).

    At each step a row draws its token from softmax(logits / temperature) restricted to the top_k most likely
    tokens (0: all) and then to the top_p nucleus (1: all); see `sampling_logits`. Temperature 0 is greedy
    decoding, token for token (top_k and top_p then change nothing). Rows end as in `greedy_decode`: EOS kept,
    padding 0 after it.

    Reproducible per row: row i draws with the key fold_in(fold_in(key(seed), row_ids[i]), step), so a row gives
    the same tokens whatever batch it is decoded in, as long as it keeps its row id. `row_ids` [B] int (default
    0..B-1) should be the rows' global indices (in a dataset, over batches and hosts).

    The log-likelihood is of the returned tokens under the untempered, uncut model: the sum of log p(token)
    through EOS (or over all T tokens when there is none): `score` of them with weight 1 up to EOS, 0 after.
    """
    check_sampling(temperature, top_k, top_p)
    encoder_input_tokens = jnp.asarray(encoder_input_tokens, jnp.int32)
    batch = encoder_input_tokens.shape[0]
    if temperature == 0:
        return _sample(model, encoder_input_tokens, max_decode_len, eos_id, 0, False, None)
    row_ids = jnp.arange(batch, dtype=jnp.int32) if row_ids is None else jnp.asarray(row_ids, jnp.int32)
    if row_ids.shape != (batch,):
        raise ValueError(f"row_ids must have one id per row, shape ({batch},); got shape {row_ids.shape}.")
    sampler = _Sampler(jax.random.key(seed), row_ids, jnp.float32(temperature), jnp.float32(top_p))
    return _sample(model, encoder_input_tokens, max_decode_len, eos_id, int(top_k), top_p < 1, sampler)


# ----------------------------------------------------------------------------------------------------------------
# Beam search
# ----------------------------------------------------------------------------------------------------------------


class _BeamState(NamedTuple):
    live_seqs: jax.Array  # [B, K, T + 1] int32: hypotheses without EOS; column 0 is the start token
    live_logprobs: jax.Array  # [B, K] float32: their log-likelihoods; -inf marks an empty slot
    best_seq: jax.Array  # [B, T + 1] int32: the best finished (EOS-ended) hypothesis so far
    best_score: jax.Array  # [B] float32: its log-likelihood / brevity penalty; -inf until one finishes
    cache: DecodeCache  # over B * K rows, row b * K + k for beam k of example b; cache.index is the step


def _reorder_beams(cache: DecodeCache, parents: jax.Array) -> DecodeCache:
    """Self-attention keys/values of row (b, k) <- those of row (b, parents[b, k]); parents [B, K]."""
    batch, beams = parents.shape
    rows = (jnp.arange(batch)[:, None] * beams + parents).reshape(-1)
    # The encoder keys/values and mask are the same for every beam of an example: nothing to move there.
    return cache.select_rows(rows)


def _beam_step(step_fn, state: _BeamState, alpha: jax.Array, eos_id: int) -> _BeamState:
    step = state.cache.index
    batch, beams, _ = state.live_seqs.shape
    logits, cache = step_fn(state.live_seqs[:, :, step].reshape(-1), state.cache)
    vocab = logits.shape[-1]
    logprobs = jax.nn.log_softmax(logits).reshape(batch, beams, vocab) + state.live_logprobs[..., None]
    # Keep 2K candidates: even if K of them end here, K remain to carry on (as t5x does).
    cand_logprobs, cand = jax.lax.top_k(logprobs.reshape(batch, beams * vocab), 2 * beams)  # [B, 2K]
    parents, tokens = cand // vocab, cand % vocab
    cand_seqs = jnp.take_along_axis(state.live_seqs, parents[..., None], axis=1).at[:, :, step + 1].set(tokens)
    ends = tokens == eos_id

    # Live: the K most likely candidates that did not end; the cache follows their parents.
    live_logprobs, keep = jax.lax.top_k(jnp.where(ends, -jnp.inf, cand_logprobs), beams)  # [B, K]
    live_seqs = jnp.take_along_axis(cand_seqs, keep[..., None], axis=1)
    cache = _reorder_beams(cache, jnp.take_along_axis(parents, keep, axis=1))

    # Finished: only the best one per example is returned, so only the best one is kept.
    scores = jnp.where(ends, cand_logprobs, -jnp.inf) / brevity_penalty(alpha, step + 1)  # length incl. EOS
    top = jnp.argmax(scores, axis=1)
    score = jnp.take_along_axis(scores, top[:, None], axis=1)[:, 0]
    seq = jnp.take_along_axis(cand_seqs, top[:, None, None], axis=1)[:, 0]
    better = score > state.best_score
    return _BeamState(live_seqs, live_logprobs, jnp.where(better[:, None], seq, state.best_seq),
                      jnp.where(better, score, state.best_score), cache)


def _can_improve(state: _BeamState, alpha: jax.Array, max_decode_len: int) -> jax.Array:
    """[B] bool: could a live hypothesis still finish with a better score than the best finished one?

    Log-likelihoods only fall as a hypothesis grows, so its best possible score is its log-likelihood now over the
    largest penalty it can still get (at the longest length for alpha >= 0, at the next length for alpha < 0).
    """
    largest_penalty = jnp.maximum(brevity_penalty(alpha, state.cache.index + 1), brevity_penalty(alpha, max_decode_len))
    return jnp.max(state.live_logprobs, axis=1) / largest_penalty > state.best_score


@jit_with_model(static_argnums=(2, 3, 5))
def _beam_search(model: T5, encoder_input_tokens: jax.Array, max_decode_len: int, beam_size: int,
                 alpha: jax.Array, eos_id: int) -> tuple[jax.Array, jax.Array]:
    batch = encoder_input_tokens.shape[0]
    # Encode once per example; every beam gets its own self-attention cache, the encoder's keys/values are shared.
    cache = model.init_cache(model.encode(encoder_input_tokens), encoder_input_tokens, max_decode_len, beam_size)
    # Only beam 0 is live at first: K copies of the same start would fill the beam with duplicates.
    live_logprobs = jnp.full((batch, beam_size), -jnp.inf).at[:, 0].set(0.0)
    start = _BeamState(jnp.zeros((batch, beam_size, max_decode_len + 1), jnp.int32), live_logprobs,
                       jnp.zeros((batch, max_decode_len + 1), jnp.int32), jnp.full((batch,), -jnp.inf), cache)

    step_fn = _make_step_fn(model)

    def not_done(state: _BeamState) -> jax.Array:
        return (state.cache.index < max_decode_len) & jnp.any(_can_improve(state, alpha, max_decode_len))

    step = lambda state: _beam_step(step_fn, state, alpha, eos_id)

    final = jax.lax.while_loop(not_done, step, start)
    # No hypothesis finished (the loop ran to the end): fall back on the most likely live one, full length.
    best_live = jnp.argmax(final.live_logprobs, axis=1)
    live_seq = jnp.take_along_axis(final.live_seqs, best_live[:, None, None], axis=1)[:, 0]
    live_score = final.live_logprobs.max(axis=1) / brevity_penalty(alpha, max_decode_len)
    none_finished = final.best_score == -jnp.inf
    tokens = jnp.where(none_finished[:, None], live_seq, final.best_seq)[:, 1:]  # drop the start token
    return tokens, jnp.where(none_finished, live_score, final.best_score)


def beam_search(model: T5, encoder_input_tokens: jax.Array, max_decode_len: int, *, beam_size: int = 4,
                alpha: float = 0.6, eos_id: int = EOS_ID) -> tuple[jax.Array, jax.Array]:
    """t5x-style beam search: encoder tokens [B, S] -> (int32 tokens [B, T], float32 scores [B]).

    Returns the best finished hypothesis of each row (EOS kept, padding 0 after it) with its score
    log p / brevity_penalty(alpha, length). A row where no hypothesis reached EOS within T tokens gets its most
    likely live one, scored with the penalty of length T (t5x returns the unpenalised log p there).
    """
    return _beam_search(model, jnp.asarray(encoder_input_tokens, jnp.int32), max_decode_len, beam_size,
                        jnp.asarray(alpha, jnp.float32), eos_id)


# ----------------------------------------------------------------------------------------------------------------
# Scoring given targets
# ----------------------------------------------------------------------------------------------------------------


@jit_with_model
def _score(model: T5, encoder_input_tokens: jax.Array, decoder_target_tokens: jax.Array,
           decoder_loss_weights: jax.Array) -> jax.Array:
    # Teacher forcing: the decoder sees the targets shifted right behind the start token.
    decoder_input_tokens = jnp.pad(decoder_target_tokens[:, :-1], ((0, 0), (1, 0)), constant_values=PAD_ID)
    logprobs = jax.nn.log_softmax(model(encoder_input_tokens, decoder_input_tokens))  # [B, T, V]
    target_logprobs = jnp.take_along_axis(logprobs, decoder_target_tokens[..., None], axis=-1)[..., 0]
    return jnp.sum(target_logprobs * decoder_loss_weights, axis=1)


def score(model: T5, encoder_input_tokens: jax.Array, decoder_target_tokens: jax.Array,
          decoder_loss_weights: jax.Array | None = None) -> jax.Array:
    """Log-likelihood of given targets: [B, S], [B, T] int -> float32 [B], the weighted sum over target tokens.

    Weights default to 1 on non-padding targets (what seqio's EncDecFeatureConverter gives for unpacked data).
    For rank-based evaluation (seqio.Evaluator's score_fn).
    """
    targets = jnp.asarray(decoder_target_tokens, jnp.int32)
    weights = targets != PAD_ID if decoder_loss_weights is None else decoder_loss_weights
    return _score(model, jnp.asarray(encoder_input_tokens, jnp.int32), targets, jnp.asarray(weights, jnp.float32))


# ----------------------------------------------------------------------------------------------------------------
# seqio-style batches
# ----------------------------------------------------------------------------------------------------------------


def predict_batch(model: T5, batch: dict, *, beam_size: int = 1, alpha: float = 0.6, eos_id: int = EOS_ID,
                  max_decode_len: int | None = None, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                  seed: int = 0, row_ids: jax.Array | None = None) -> jax.Array:
    """Decode a feature-converted batch -> int32 [B, T]: greedy for beam_size 1 and temperature 0, `sample` for a
    temperature > 0 (with `seed` and the rows' global `row_ids`, default 0..B-1), beam search for beam_size > 1.

    T is `max_decode_len`, by default the length of `batch["decoder_target_tokens"]` (as t5x decodes).
    """
    if max_decode_len is None:
        max_decode_len = batch["decoder_target_tokens"].shape[1]
    check_sampling(temperature, top_k, top_p, beam_size)
    if temperature > 0:
        tokens, _ = sample(model, batch["encoder_input_tokens"], max_decode_len, seed=seed, row_ids=row_ids,
                           temperature=temperature, top_k=top_k, top_p=top_p, eos_id=eos_id)
        return tokens
    if beam_size == 1:
        return greedy_decode(model, batch["encoder_input_tokens"], max_decode_len, eos_id=eos_id)
    tokens, _ = beam_search(model, batch["encoder_input_tokens"], max_decode_len, beam_size=beam_size, alpha=alpha,
                            eos_id=eos_id)
    return tokens


def score_batch(model: T5, batch: dict) -> jax.Array:
    """`score` of a feature-converted batch (`decoder_loss_weights` used when present) -> float32 [B]."""
    return score(model, batch["encoder_input_tokens"], batch["decoder_target_tokens"],
                 batch.get("decoder_loss_weights"))
