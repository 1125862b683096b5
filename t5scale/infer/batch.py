"""One batch of `t5scale infer`: token rows padded to a fixed shape, decoded (with the log-likelihood of each
prediction) or scored, on the mesh with each host feeding its share of the rows.

Lengths are padded up to powers of two (at least 8, at most the configured length), so a run compiles a few
programs rather than one per batch; a batch's last rows are padding when the rows run out.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from t5scale.model import decoding
from t5scale.train.partitioning import batch_sharding


@dataclasses.dataclass(frozen=True)
class Decoding:
    max_length: int  # target tokens per row
    beam_size: int = 1  # 1: greedy, or sampling with a temperature > 0
    alpha: float = 0.6  # beam search brevity penalty
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: every token
    top_p: float = 1.0  # 1: every token
    seed: int = 0  # with each row's global index, what a sampled row draws from


def padded(rows: Sequence[Sequence[int]], batch_size: int, max_length: int) -> np.ndarray:
    """int32 [batch_size, length]: the rows (each at most `max_length` long) then zero rows."""
    longest = max(len(row) for row in rows)
    out = np.zeros((batch_size, min(max(8, 1 << (max(longest, 1) - 1).bit_length()), max_length)), np.int32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


@jax.jit
def through_first_eos(tokens: jax.Array) -> jax.Array:
    """float32 weights of a decoded batch: 1 up to and including each row's first EOS (every token of a row that
    never ends), 0 after it."""
    eos = tokens == decoding.EOS_ID
    return (jnp.cumsum(eos, axis=1) - eos == 0).astype(jnp.float32)


def predict(model, batch: dict, settings: Decoding) -> tuple[jax.Array, jax.Array]:
    """(tokens [B, T], log p(tokens | inputs) [B]) of the decoded batch: greedy, sampled (each row from the seed
    and its `batch["row_ids"]`) or beam search. The log-likelihood is of the tokens through the first EOS, under
    the untempered model (for beam search, not the beam's length-normalised score)."""
    inputs = batch["encoder_input_tokens"]
    if settings.beam_size == 1:
        return decoding.sample(model, inputs, settings.max_length, seed=settings.seed, row_ids=batch["row_ids"],
                               temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p)
    tokens, _ = decoding.beam_search(model, inputs, settings.max_length, beam_size=settings.beam_size,
                                     alpha=settings.alpha)
    return tokens, decoding.score(model, inputs, tokens, through_first_eos(tokens))


def score(model, batch: dict) -> tuple[jax.Array]:
    """(log p(targets | inputs) [B],), summed over each target's tokens (EOS included)."""
    return (decoding.score(model, batch["encoder_input_tokens"], batch["decoder_target_tokens"]),)


def on_hosts(compute: Callable[[dict], tuple], batch: dict[str, np.ndarray], mesh) -> tuple[np.ndarray, ...]:
    """compute(batch) as host arrays. With a mesh, every process holds the whole batch, puts its slice of the rows
    on its devices (the data axis splits the batch, as in `t5scale.evaluate`) and gets every row back."""
    if mesh is None:
        return tuple(np.asarray(x) for x in compute(batch))
    rows, processes, me = len(next(iter(batch.values()))), jax.process_count(), jax.process_index()
    local = slice(me * rows // processes, (me + 1) * rows // processes)
    sharding = batch_sharding(mesh)
    with mesh:
        outputs = compute({k: jax.make_array_from_process_local_data(sharding, v[local]) for k, v in batch.items()})
        return tuple(np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in outputs)
