"""A loaded model for notebooks: text in, text (or log-likelihoods, or encoder states) out.

    model = t5scale.load("gs://bucket/releases/small-el16")
    model.generate(["sst2 sentence: a fine film"], max_length=8)   # ["positive"]
    model.generate(texts, temperature=0.8, top_p=0.95, seed=1)     # sampled, reproducibly
    model.score(["sst2 sentence: a fine film"], ["positive"])      # [-0.03]
    model.encode(["a fine film"])                                  # [array [tokens, DM]]
    model.nnx_model                                                # the flax.nnx T5 itself

Texts are tokenized with the model's own vocabulary and get EOS appended, as its seqio task fed them in training.
Long lists run in batches of `batch_size`; lengths are padded up to powers of two so that a notebook reuses a few
compiled programs instead of compiling one per call.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from t5scale.config import ModelConfig
from t5scale.model import decoding
from t5scale.model.flops import count_params

EOS_ID = decoding.EOS_ID


def _bucket(n: int, smallest: int = 8) -> int:
    return max(smallest, 1 << (max(n, 1) - 1).bit_length())


@dataclasses.dataclass
class LoadedModel:
    nnx_model: object  # t5scale.T5
    vocabulary: object | None  # seqio.SentencePieceVocabulary; None when the source carries none
    source: str  # where it was loaded from
    kind: str  # "release", "checkpoint", "compressed" or "huggingface"
    card: str | None = None  # a release's README.md
    folder: str | None = None  # a local folder with the bundle's files (a release's verified copy)

    @property
    def config(self) -> ModelConfig:
        return self.nnx_model.cfg

    @property
    def params_count(self) -> int:
        return count_params(self.config).total

    def __repr__(self) -> str:
        cfg = self.config
        return (f"LoadedModel({cfg.name or 'T5'!r}: EL{cfg.EL} DL{cfg.DL} DM{cfg.DM} KV{cfg.KV} NH{cfg.NH} FF{cfg.FF}, "
                f"{self.params_count:,} params, {self.kind} from {self.source!r})")

    # -- tokens --------------------------------------------------------------------------------------------------

    def _vocab(self):
        if self.vocabulary is None:
            raise ValueError(f"{self.source} carries no vocabulary; load it with t5scale.load(path, "
                             "vocabulary='/path/to/sentencepiece.model').")
        return self.vocabulary

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        """Token ids of each text with EOS appended, cut to `max_length` tokens (EOS kept last)."""
        if isinstance(texts, str):
            raise TypeError("Pass a list of strings, not one string.")
        vocab = self._vocab()
        out = []
        for text in texts:
            ids = [*vocab.encode(text), EOS_ID]
            out.append(ids if max_length is None or len(ids) <= max_length else [*ids[:max_length - 1], EOS_ID])
        return out

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._vocab().decode([int(i) for i in ids])  # seqio stops at EOS

    @staticmethod
    def _padded(rows: list[list[int]], batch: int) -> np.ndarray:
        out = np.zeros((batch, _bucket(max(len(r) for r in rows))), np.int32)
        for i, row in enumerate(rows):
            out[i, :len(row)] = row
        return out

    def _chunks(self, items: list, batch_size: int):
        """(chunk, rows to pad it to): every chunk of a call gets the same row count, so one compiled program."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        rows = min(batch_size, _bucket(len(items), smallest=1))
        for start in range(0, len(items), batch_size):
            yield items[start:start + batch_size], rows

    # -- inference ----------------------------------------------------------------------------------------------

    def generate(self, texts: Sequence[str], *, max_length: int = 64, beam_size: int = 1, alpha: float = 0.6,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0, batch_size: int = 32,
                 max_input_length: int = 512) -> list[str]:
        """Greedy decoding (beam_size 1, temperature 0), t5x's beam search, or sampling (temperature > 0, cut to
        the `top_k` most likely tokens and the `top_p` nucleus; see `decoding.sample`), up to `max_length` target
        tokens per text. A sampled text depends on `seed` and its place in `texts` only, not on `batch_size`."""
        if max_length < 1 or beam_size < 1:
            raise ValueError(f"max_length and beam_size must be positive, got {max_length} and {beam_size}.")
        decoding.check_sampling(temperature, top_k, top_p, beam_size)
        out = []
        for n, (chunk, rows) in enumerate(self._chunks(self.tokenize(texts, max_input_length), batch_size)):
            tokens = self._padded(chunk, rows)
            if temperature > 0:
                generated, _ = decoding.sample(self.nnx_model, tokens, max_length, seed=seed, temperature=temperature,
                                               top_k=top_k, top_p=top_p, row_ids=n * batch_size + np.arange(rows))
            elif beam_size == 1:
                generated = decoding.greedy_decode(self.nnx_model, tokens, max_length)
            else:
                generated, _ = decoding.beam_search(self.nnx_model, tokens, max_length, beam_size=beam_size,
                                                    alpha=alpha)
            out += [self.detokenize(row) for row in np.asarray(generated)[:len(chunk)]]
        return out

    def score(self, inputs: Sequence[str], targets: Sequence[str], *, batch_size: int = 32,
              max_input_length: int = 512) -> list[float]:
        """log p(target | input) of each pair, summed over the target's tokens (EOS included), in nats."""
        if len(inputs) != len(targets):
            raise ValueError(f"score: {len(inputs)} inputs but {len(targets)} targets.")
        pairs = list(zip(self.tokenize(inputs, max_input_length), self.tokenize(targets)))
        out = []
        for chunk, rows in self._chunks(pairs, batch_size):
            scores = decoding.score(self.nnx_model, self._padded([p[0] for p in chunk], rows),
                                    self._padded([p[1] for p in chunk], rows))
            out += [float(s) for s in np.asarray(scores)[:len(chunk)]]
        return out

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, max_input_length: int = 512
               ) -> list[np.ndarray]:
        """The encoder's output for each text: float32 [tokens (EOS included), DM]."""
        out = []
        for chunk, rows in self._chunks(self.tokenize(texts, max_input_length), batch_size):
            states = np.asarray(_encode(self.nnx_model, self._padded(chunk, rows)), np.float32)
            out += [states[i, :len(row)] for i, row in enumerate(chunk)]
        return out


@decoding.jit_with_model
def _encode(model, tokens):
    return model.encode(tokens)
