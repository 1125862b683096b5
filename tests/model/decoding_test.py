"""Decoding agrees with references built from the teacher-forced forward pass (no cache, plain numpy); sampling's
draws follow a softmax computed in numpy (chi-square)."""

import itertools

import jax
import numpy as np
import pytest
from flax import nnx

from t5scale import abstract_model
from t5scale.model import decoding
from t5scale.model.layout import flat_params, load_flat_params
from tests.testing import forward, random_model, random_tokens, tiny_config

EOS = 1
B, S, T = 3, 9, 7  # batch, encoder length, max decode length


def encoder_batch(seed=0, vocab_size=64):
    tokens = random_tokens(np.random.default_rng(seed), (B, S), vocab_size)
    tokens[1, 5:] = 0  # padding
    tokens[2, 7:] = 0
    return tokens


def log_softmax(logits):
    logits = logits - logits.max(-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def reference_greedy(model, encoder_tokens, max_len):
    """Argmax of a full teacher-forced pass at every step; after EOS, padding.

    The decoder inputs live in a fixed [B, max_len] buffer: causal attention keeps the positions after t out of
    the logits at t, and one shape means one compilation.
    """
    decoder_inputs = np.zeros((len(encoder_tokens), max_len), np.int32)  # start token 0, then the outputs
    out, ended = np.zeros_like(decoder_inputs), np.zeros(len(encoder_tokens), bool)
    for t in range(max_len):
        logits = np.asarray(forward(model, encoder_tokens, decoder_inputs))[:, t]
        out[:, t] = np.where(ended, 0, logits.argmax(-1))
        ended |= out[:, t] == EOS
        if t + 1 < max_len:
            decoder_inputs[:, t + 1] = out[:, t]
    return out


def log_likelihoods(model, encoder_tokens, targets):
    """Sum of log p(target token) per row, up to and including the first EOS (or all of it): [N] float64."""
    decoder_inputs = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
    logprobs = log_softmax(np.asarray(forward(model, encoder_tokens, decoder_inputs), np.float64))
    token_logprobs = np.take_along_axis(logprobs, targets[..., None], -1)[..., 0]
    return (token_logprobs * (np.arange(targets.shape[1]) < output_lengths(targets)[:, None])).sum(1)


def output_lengths(tokens):
    """Length of each decoded row: through its first EOS, or the whole row if it has none."""
    has_eos = (tokens == EOS).any(1)
    return np.where(has_eos, (tokens == EOS).argmax(1) + 1, tokens.shape[1])


def penalty(alpha, length):
    return ((5.0 + length) / 6.0) ** alpha


def with_eos_instead_of(model, token):
    """Copy of an untied model whose EOS logit is 1.01 x the logit of `token`: EOS wins where `token` did."""
    params = flat_params(model)
    params["logits_dense/kernel"] = kernel = params["logits_dense/kernel"].copy()  # flat_params: read-only views
    kernel[:, EOS] = 1.01 * kernel[:, token]
    biased = abstract_model(model.cfg)
    load_flat_params(biased, params)
    return biased


@pytest.fixture(scope="module")
def v1_1_model():
    return random_model(tiny_config(activation="gated-gelu", tie_embeddings=False), seed=1)


@pytest.fixture(scope="module")
def eos_model(v1_1_model):
    """v1_1_model, biased to emit EOS mid-sequence in some rows, plus the token EOS took over from."""
    plain = np.asarray(decoding.greedy_decode(v1_1_model, encoder_batch(), T))
    assert not (plain == EOS).any()
    # The token whose first appearance comes latest (but not at step 0): EOS will end that row there.
    first = {token: min(np.flatnonzero(row == token)[0] for row in plain if token in row) for token in set(plain.flat)}
    token = max(first, key=first.get)
    assert 0 < first[token] < T - 1, plain
    return with_eos_instead_of(v1_1_model, token), plain, token


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_greedy_equals_argmax_of_full_forward_passes(scan_layers, version):
    v1_1 = version == "v1.1"
    model = random_model(tiny_config(scan_layers=scan_layers, activation="gated-gelu" if v1_1 else "relu",
                                     tie_embeddings=not v1_1), seed=2)
    x = encoder_batch()
    tokens = decoding.greedy_decode(model, x, T)
    assert tokens.shape == (B, T) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens, reference_greedy(model, x, T))


def test_rows_stop_at_eos_and_are_padded_after_it(eos_model):
    model, _, _ = eos_model
    tokens = np.asarray(decoding.greedy_decode(model, encoder_batch(), T))
    np.testing.assert_array_equal(tokens, reference_greedy(model, encoder_batch(), T))
    lengths = output_lengths(tokens)
    for row, length in zip(tokens, lengths):
        assert (row[:length - 1] != EOS).all() and not row[length:].any(), row  # EOS kept, then padding
    assert 1 < lengths.min() < T and tokens[lengths.argmin(), lengths.min() - 1] == EOS  # one ended early ...
    assert lengths.max() == T and (tokens[:, -1] > 1).any()  # ... while decoding went on for another


def test_beam_of_one_is_greedy_up_to_better_finished_runners_up(v1_1_model, eos_model):
    x = encoder_batch()
    # No EOS in sight: the single live hypothesis is the argmax path.
    tokens, _ = decoding.beam_search(v1_1_model, x, T, beam_size=1, alpha=0.0)
    np.testing.assert_array_equal(tokens, decoding.greedy_decode(v1_1_model, x, T))
    # With EOS around, beam search (t5x's too) also keeps an EOS that was only the runner-up at some step, so it
    # may return a shorter, more likely sequence than greedy; never a less likely one.
    model, _, _ = eos_model
    tokens, scores = map(np.asarray, decoding.beam_search(model, x, T, beam_size=1, alpha=0.0))
    greedy = np.asarray(decoding.greedy_decode(model, x, T))
    np.testing.assert_allclose(scores, log_likelihoods(model, x, tokens), rtol=1e-4)
    assert (scores >= log_likelihoods(model, x, greedy) - 1e-4).all()
    same = (tokens == greedy).all(1)
    assert same.any() and (output_lengths(tokens)[~same] < output_lengths(greedy)[~same]).all()


def test_beam_scores_are_log_likelihood_over_brevity_penalty(eos_model):
    model, _, _ = eos_model
    x = encoder_batch()
    alpha = 0.6
    tokens, scores = map(np.asarray, decoding.beam_search(model, x, T, beam_size=3, alpha=alpha))
    lengths = output_lengths(tokens)
    for row, length in zip(tokens, lengths):
        assert not row[length:].any()  # padding after EOS
    expected = log_likelihoods(model, x, tokens) / penalty(alpha, lengths)
    np.testing.assert_allclose(scores, expected, rtol=1e-4)
    # Beam search finds at least as good a sequence as greedy under its own score.
    greedy = np.asarray(decoding.greedy_decode(model, x, T))
    greedy_scores = log_likelihoods(model, x, greedy) / penalty(alpha, output_lengths(greedy))
    assert (scores >= greedy_scores - 1e-4).all()


@pytest.mark.parametrize("alpha, scan_layers", [(0.0, True), (0.6, True), (2.0, True), (2.0, False)])
def test_wide_beam_finds_the_exhaustive_best(alpha, scan_layers):
    vocab, max_len = 8, 4  # unrolled stacks keep a per-layer self-attention cache that beams reorder differently
    model = random_model(tiny_config(vocab_size=vocab, scan_layers=scan_layers), seed=3)
    x = encoder_batch(vocab_size=vocab)[:2]
    # Every sequence that ends in EOS within max_len (and has no earlier EOS): 1 + 7 + 49 + 343 of them.
    others = [v for v in range(vocab) if v != EOS]
    candidates = np.array([list(prefix) + [EOS] + [0] * (max_len - len(prefix) - 1)
                           for n in range(max_len) for prefix in itertools.product(others, repeat=n)], np.int32)
    # Exact when nothing is ever cut: K holds all 7^3 live prefixes, and 2K all 8 * 7^3 last-step candidates.
    beam_size = len(others) ** (max_len - 1) * vocab // 2
    tokens, scores = decoding.beam_search(model, x, max_len, beam_size=beam_size, alpha=alpha)
    for row in range(len(x)):
        row_x = np.repeat(x[row:row + 1], len(candidates), axis=0)
        all_scores = log_likelihoods(model, row_x, candidates) / penalty(alpha, output_lengths(candidates))
        np.testing.assert_array_equal(tokens[row], candidates[all_scores.argmax()])
        assert scores[row] == pytest.approx(all_scores.max(), rel=1e-4)


def test_batch_rows_are_independent_and_encoder_padding_changes_nothing(eos_model):
    model, _, _ = eos_model
    x = encoder_batch()
    others = encoder_batch(seed=9)
    others[0] = x[0]
    padded = np.pad(x, ((0, 0), (0, 5)))
    for decode in (lambda x: decoding.greedy_decode(model, x, T),
                   lambda x: decoding.beam_search(model, x, T, beam_size=3)[0]):
        tokens = np.asarray(decode(x))
        np.testing.assert_array_equal(decode(x[::-1]), tokens[::-1])  # rows reordered
        np.testing.assert_array_equal(decode(others)[0], tokens[0])  # the other rows replaced
        np.testing.assert_array_equal(decode(padded), tokens)  # every row padded 5 tokens longer


def test_score_is_the_summed_log_likelihood_of_the_targets(v1_1_model):
    x = encoder_batch()
    targets = random_tokens(np.random.default_rng(5), (B, T))
    targets[0, 3], targets[0, 4:] = EOS, 0  # a shorter target, padded
    decoder_inputs = np.pad(targets[:, :-1], ((0, 0), (1, 0)))  # shifted right behind the start token 0
    logprobs = log_softmax(np.asarray(forward(v1_1_model, x, decoder_inputs), np.float64))
    token_logprobs = np.take_along_axis(logprobs, targets[..., None], -1)[..., 0]  # -(cross entropy) per token
    np.testing.assert_allclose(decoding.score(v1_1_model, x, targets), (token_logprobs * (targets > 0)).sum(1),
                               rtol=1e-5)
    weights = np.random.default_rng(6).uniform(size=targets.shape).astype(np.float32)
    np.testing.assert_allclose(decoding.score(v1_1_model, x, targets, weights), (token_logprobs * weights).sum(1),
                               rtol=1e-5)
    batch = {"encoder_input_tokens": x, "decoder_target_tokens": targets, "decoder_loss_weights": weights}
    np.testing.assert_allclose(decoding.score_batch(v1_1_model, batch), (token_logprobs * weights).sum(1), rtol=1e-5)


def test_predict_batch_decodes_as_long_as_the_targets(eos_model):
    model, _, _ = eos_model
    batch = {"encoder_input_tokens": encoder_batch(), "decoder_target_tokens": np.zeros((B, T), np.int32)}
    np.testing.assert_array_equal(decoding.predict_batch(model, batch), decoding.greedy_decode(model, batch[
        "encoder_input_tokens"], T))
    tokens, _ = decoding.beam_search(model, batch["encoder_input_tokens"], T, beam_size=3, alpha=0.5)
    np.testing.assert_array_equal(decoding.predict_batch(model, batch, beam_size=3, alpha=0.5), tokens)
    tokens, _ = decoding.sample(model, batch["encoder_input_tokens"], T, seed=3, row_ids=[5, 6, 7], temperature=0.8,
                                top_p=0.9)
    np.testing.assert_array_equal(decoding.predict_batch(model, batch, temperature=0.8, top_p=0.9, seed=3,
                                                         row_ids=[5, 6, 7]), tokens)
    with pytest.raises(ValueError, match="beam_size must be 1 when temperature > 0"):
        decoding.predict_batch(model, batch, beam_size=3, temperature=0.8)


def test_decoding_programs_return_their_result_only_not_the_parameters(v1_1_model):
    """nnx.jit hands the model's state back from every call: a copy of every parameter written per call."""
    x = np.asarray(encoder_batch(), np.int32)
    greedy = decoding._greedy_decode.lower(v1_1_model, x, T, EOS).compile().memory_analysis()
    assert greedy.output_size_in_bytes == B * T * 4  # int32 tokens [B, T]
    beam = decoding._beam_search.lower(v1_1_model, x, T, 2, np.float32(0.6), EOS).compile().memory_analysis()
    params = sum(a.nbytes for a in jax.tree.leaves(nnx.state(v1_1_model, nnx.Param)))
    assert beam.output_size_in_bytes < 200 < params  # tokens and scores (96 bytes) and XLA's small change


# ----------------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------------


def sampling_set_probabilities(logits, temperature, top_k, top_p):
    """softmax(logits / T) restricted to the top_k most likely tokens, then to the fewest most likely of those
    whose renormalised probability reaches top_p, renormalised: float64 [V], 0 outside the set."""
    logits = np.asarray(logits, np.float64) / temperature
    probs = np.exp(logits - logits.max())
    order = np.argsort(-probs)
    if top_k:
        probs[order[top_k:]] = 0
    probs /= probs.sum()
    cumulative = np.cumsum(probs[order])
    probs[order[np.searchsorted(cumulative, top_p) + 1:]] = 0  # the first token to reach top_p stays
    return probs / probs.sum()


def test_temperature_zero_is_greedy_with_its_log_likelihood(eos_model):
    model, _, _ = eos_model
    x = encoder_batch()
    greedy = np.asarray(decoding.greedy_decode(model, x, T))
    assert output_lengths(greedy).min() < T  # a row ended early: its log-likelihood stops at EOS
    tokens, log_likelihood = decoding.sample(model, x, T, seed=0, temperature=0.0, top_k=3, top_p=0.5)
    np.testing.assert_array_equal(tokens, greedy)
    np.testing.assert_allclose(log_likelihood, log_likelihoods(model, x, greedy), rtol=1e-4)


@pytest.fixture(scope="module")
def eight_rows_sampled(eos_model):
    """(model, inputs [8, S] (three draws of each of encoder_batch()'s rows), tokens, log-likelihoods) sampled
    at temperature 0.7 in the nucleus of 0.9, seed 2, row ids 0..7."""
    model, _, _ = eos_model
    x = np.repeat(encoder_batch(), 3, axis=0)[:8]
    return (model, x, *map(np.asarray, decoding.sample(model, x, T, seed=2, temperature=0.7, top_p=0.9)))


def test_sampled_log_likelihood_is_of_the_tokens_under_the_untempered_model(eight_rows_sampled):
    model, x, tokens, log_likelihood = eight_rows_sampled
    lengths = output_lengths(tokens)
    assert lengths.min() < T and len({tuple(row) for row in tokens}) == 8  # rows ended early; draws differ
    for row, length in zip(tokens, lengths):
        assert (row[:length - 1] != EOS).all() and not row[length:].any(), row
    np.testing.assert_allclose(log_likelihood, log_likelihoods(model, x, tokens), rtol=1e-4)


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.6, 0, 1.0), (1.3, 8, 1.0), (1.0, 0, 0.5),
                                                       (2.0, 12, 0.6)])
def test_first_tokens_over_many_rows_follow_the_restricted_softmax(v1_1_model, temperature, top_k, top_p):
    """4000 rows of one input, each its own row id: the first tokens' counts against softmax(logits / T) cut to the
    top-k / top-p set, from the teacher-forced logits at the start token (chi-square, bins of < 5 expected pooled)."""
    from scipy import stats

    rows = 4000
    x = encoder_batch()[:1]
    logits = np.asarray(forward(v1_1_model, x, np.zeros((1, 1), np.int32)))[0, 0]
    expected = rows * sampling_set_probabilities(logits, temperature, top_k, top_p)
    tokens, _ = decoding.sample(v1_1_model, np.repeat(x, rows, axis=0), 1, seed=1234, temperature=temperature,
                                top_k=top_k, top_p=top_p)
    counts = np.bincount(np.asarray(tokens)[:, 0], minlength=len(logits))
    in_set = expected > 0
    assert counts[~in_set].sum() == 0, np.flatnonzero(counts * ~in_set)  # never a token outside the set
    assert 3 < in_set.sum() < len(logits) or (top_k, top_p) == (0, 1.0)  # a cut that leaves a choice
    big = in_set & (expected >= 5)
    observed, wanted = list(counts[big]), list(expected[big])
    if (in_set & ~big).any():
        observed.append(counts[in_set & ~big].sum())
        wanted.append(expected[in_set & ~big].sum())
    assert len(observed) > 3
    assert stats.chisquare(observed, wanted).pvalue > 0.001


def test_a_row_samples_the_same_tokens_in_any_batch_with_its_row_id(eight_rows_sampled):
    model, x, tokens, log_likelihood = eight_rows_sampled
    draw = lambda x, **kwargs: tuple(map(np.asarray, decoding.sample(model, x, T, temperature=0.7, top_p=0.9,
                                                                     **{"seed": 2, **kwargs})))
    alone, alone_ll = draw(x[3:4], row_ids=[3])
    np.testing.assert_array_equal(alone[0], tokens[3])
    np.testing.assert_allclose(alone_ll[0], log_likelihood[3], rtol=1e-5)
    ids = np.array([6, 3, 0, 7])
    np.testing.assert_array_equal(draw(x[ids], row_ids=ids)[0], tokens[ids])
    # The row id and the seed decide the draws: another id, or another seed, draws other tokens.
    assert not np.array_equal(draw(x[3:4], row_ids=[4])[0][0], tokens[3])
    assert (draw(x, seed=3)[0] != tokens).any(axis=1).all()


@pytest.mark.parametrize("kwargs, culprit", [(dict(temperature=-0.5), "temperature"),
                                             (dict(temperature=float("nan")), "temperature"),
                                             (dict(top_k=-1), "top_k"), (dict(top_k=2.5), "top_k"),
                                             (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
                                             (dict(row_ids=[0, 1]), "row_ids")])
def test_bad_sampling_settings_are_one_error_naming_the_argument(v1_1_model, kwargs, culprit):
    with pytest.raises(ValueError, match=f"^{culprit} must"):
        decoding.sample(v1_1_model, encoder_batch(), T, seed=0, **kwargs)
    if culprit != "row_ids":
        batch = {"encoder_input_tokens": encoder_batch(), "decoder_target_tokens": np.zeros((B, T), np.int32)}
        with pytest.raises(ValueError, match=f"^{culprit} must"):
            decoding.predict_batch(v1_1_model, batch, **kwargs)
