"""Batch inference over a whole dataset into JSONL shards, resumable shard by shard (t5x's infer.py).

    summary = infer(InferConfig(checkpoint_path="runs/ft", output_dir="runs/ft/infer", input_file="questions.jsonl",
                                input_field="question"))

Writes `output_dir/predictions-00000-of-000NN.jsonl` (t5scale.infer.shards): one JSON object per input, in the
inputs' order, `{"index", "id" (when the inputs have ids), "input", "prediction", "log_likelihood"}`; with
`mode="score"`, `{"index", "id", "input", "target", "log_likelihood"}` (log p(target | input), t5x's score mode).
A rerun after a kill skips the shards that exist and writes the rest: the files equal an uninterrupted run's.

On several devices or hosts every host runs the same command (as for `t5scale train` and `eval`): the parameters
are placed on the mesh, each host reads the inputs and decodes its share of every batch, and process 0 writes.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

from t5scale.infer import batch as batch_lib
from t5scale.infer import shards
from t5scale.infer.checkpoint import load_for_inference
from t5scale.infer.progress import Progress
from t5scale.infer.sources import Source, file_source, task_source, tfds_source
from t5scale.model import decoding
from t5scale.train.partitioning import MeshConfig, make_mesh

MODES = ("predict", "score")


@dataclasses.dataclass(frozen=True)
class InferConfig:
    checkpoint_path: str  # MODEL_DIR, MODEL_DIR/checkpoint_<step>, a compressed checkpoint, a release
    output_dir: str
    # The inputs: exactly one of a seqio task or mixture, a TFDS dataset, or files.
    mixture_or_task_name: str | None = None
    tfds_name: str | None = None
    input_file: str | None = None  # comma-separated paths or globs, local or gs://
    split: str = "test"  # of the task or TFDS dataset
    input_field: str | None = None  # JSONL key / TFDS feature / TSV column; default "inputs" (TSV: column 0)
    id_field: str | None = None
    target_field: str | None = None  # score mode's targets (a task's are its own)
    num_examples: int | None = None  # the first N inputs only; None: all
    task_feature_lengths: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"inputs": 512, "targets": 64})  # longer inputs are cut (EOS kept)
    batch_size: int = 32
    mode: str = "predict"
    beam_size: int = 1  # 1: greedy decoding (or sampling)
    alpha: float = 0.6
    temperature: float = 0.0  # > 0: sample (decoding.sample); each row reproducible from the seed and its index
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    rows_per_shard: int | None = 4096
    shards: int | None = None  # this many shards instead of rows_per_shard
    vocabulary: str | None = None  # a sentencepiece model, instead of the checkpoint's
    narrow: str | None = None  # keep the weights narrow: int8, int8-dynamic, bfloat16 (one device)
    log_every: int = 10  # batches between progress lines in a log

    def __post_init__(self):
        given = [n for n in ("mixture_or_task_name", "tfds_name", "input_file") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError("infer reads one source: set MIXTURE_OR_TASK_NAME, --tfds_name or --input_file"
                             + (f" (not all of {', '.join(given)})" if given else "") + ".")
        if self.mode not in MODES:
            raise ValueError(f"--mode {self.mode!r}: choose {' or '.join(MODES)}.")
        if self.mode == "score" and not self.target_field and not self.mixture_or_task_name:
            raise ValueError("--mode score needs --target_field: the field of each input's target text.")
        if self.batch_size < 1 or self.beam_size < 1:
            raise ValueError("batch_size and beam_size must be positive.")
        decoding.check_sampling(self.temperature, self.top_k, self.top_p, self.beam_size)
        if not {"inputs", "targets"} <= set(self.task_feature_lengths or {}):
            raise ValueError(f"TASK_FEATURE_LENGTHS needs 'inputs' and 'targets' lengths, got "
                             f"{self.task_feature_lengths}.")

    def settings(self) -> dict:
        """What decides the output rows (see t5scale.infer.shards.check_settings)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("output_dir", "log_every")}


def open_source(cfg: InferConfig) -> Source:
    fields = dict(input_field=cfg.input_field, id_field=cfg.id_field, target_field=cfg.target_field)
    if cfg.mixture_or_task_name:
        return task_source(cfg.mixture_or_task_name, cfg.split, dict(cfg.task_feature_lengths))
    if cfg.tfds_name:
        return tfds_source(cfg.tfds_name, cfg.split, **fields)
    return file_source(cfg.input_file, **fields)


def infer(cfg: InferConfig, mesh_cfg: MeshConfig | None = None) -> dict | None:
    """Run inference (see the module doc). Every process must call it; process 0 writes the shards and returns
    {"rows", "tokens", "seconds", "shards", "skipped_shards"}, the others None."""
    source = open_source(cfg)
    examples = lambda: itertools.islice(source.examples(), cfg.num_examples)
    count = sum(1 for _ in examples())
    if not count:
        raise ValueError(f"{source.name}: no inputs.")
    ranges = shards.plan(count, cfg.rows_per_shard, cfg.shards)
    main = jax.process_index() == 0
    if main:
        shards.check_settings(cfg.output_dir, {**cfg.settings(), "rows": count})
        shards.remove_partial(cfg.output_dir)
    mesh = None
    if cfg.narrow is None and (jax.device_count() > 1 or mesh_cfg is not None):
        mesh = make_mesh(mesh_cfg or MeshConfig())
    if cfg.batch_size % jax.process_count():
        raise ValueError(f"BATCH_SIZE {cfg.batch_size} does not split over {jax.process_count()} processes.")
    model, vocabulary, _ = load_for_inference(
        cfg.checkpoint_path, mesh=mesh, rules=mesh_cfg.rules if mesh and mesh_cfg else "t5x",
        vocabulary=cfg.vocabulary, need_vocabulary=source.vocabulary is None, narrow=cfg.narrow)
    text = _Text(source.vocabulary or vocabulary, cfg.task_feature_lengths)
    done = shards.finished(cfg.output_dir, len(ranges)) if main else [False] * len(ranges)
    done = [bool(d) for d in multihost_utils.broadcast_one_to_all(np.array(done))]  # process 0's view for all
    progress = Progress(count, done_rows=sum(len(r) for r, d in zip(ranges, done) if d), every=cfg.log_every,
                        unit="tokens" if cfg.mode == "predict" else "target tokens")
    compute = _compute(model, cfg)
    stream = enumerate(examples())
    for shard, rows in enumerate(ranges):
        chunk = list(itertools.islice(stream, len(rows)))
        if done[shard]:
            continue
        out = []
        for start in range(0, len(chunk), cfg.batch_size):
            out += _run_batch(compute, chunk[start:start + cfg.batch_size], cfg, text, mesh, progress)
        if main:
            shards.write(cfg.output_dir, shard, len(ranges), out)
    progress.close()
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("t5scale infer: all shards written")
    if not main:
        return None
    return {"rows": progress.rows, "tokens": progress.tokens, "seconds": progress.seconds, "shards": len(ranges),
            "skipped_shards": sum(done), "summary": progress.summary()}


class _Text:
    """Tokens of the examples' texts (EOS appended, cut to the configured lengths) and text of decoded tokens."""

    def __init__(self, vocabulary, lengths: Mapping[str, int]):
        self.vocabulary, self.lengths = vocabulary, lengths

    def tokens(self, text: str, ids, feature: str) -> list[int]:
        if ids is not None:  # made by a seqio task, already cut to the length
            return [int(i) for i in ids]
        ids, most = [*self.vocabulary.encode(text), decoding.EOS_ID], self.lengths[feature]
        return ids if len(ids) <= most else [*ids[:most - 1], decoding.EOS_ID]

    def text(self, ids) -> str:
        return self.vocabulary.decode([int(i) for i in ids])  # seqio stops at EOS


def _compute(model, cfg: InferConfig):
    if cfg.mode == "score":
        return lambda batch: batch_lib.score(model, batch)
    settings = batch_lib.Decoding(cfg.task_feature_lengths["targets"], cfg.beam_size, cfg.alpha, cfg.temperature,
                                  cfg.top_k, cfg.top_p, cfg.seed)
    return lambda batch: batch_lib.predict(model, batch, settings)


def _run_batch(compute, chunk: list, cfg: InferConfig, text: _Text, mesh, progress: Progress) -> list[dict]:
    """The output rows of up to `cfg.batch_size` (index, Example) pairs."""
    lengths = cfg.task_feature_lengths
    inputs = [text.tokens(ex.input, ex.input_ids, "inputs") for _, ex in chunk]
    batch = {"encoder_input_tokens": batch_lib.padded(inputs, cfg.batch_size, lengths["inputs"])}
    if cfg.mode == "score":
        targets = [text.tokens(ex.target, ex.target_ids, "targets") for _, ex in chunk]
        batch["decoder_target_tokens"] = batch_lib.padded(targets, cfg.batch_size, lengths["targets"])
        (log_likelihoods,) = batch_lib.on_hosts(compute, batch, mesh)
        progress.update(len(chunk), sum(map(len, targets)))
        return [_row(index, ex, target=ex.target, log_likelihood=float(ll))
                for (index, ex), ll in zip(chunk, log_likelihoods)]
    row_ids = np.zeros(cfg.batch_size, np.int32)  # the global index: a sampled row draws the same anywhere
    row_ids[:len(chunk)] = [index for index, _ in chunk]
    tokens, log_likelihoods = batch_lib.on_hosts(compute, {**batch, "row_ids": row_ids}, mesh)
    weights = np.asarray(batch_lib.through_first_eos(tokens))
    progress.update(len(chunk), int(weights[:len(chunk)].sum()))
    return [_row(index, ex, prediction=text.text(row), log_likelihood=float(ll))
            for (index, ex), row, ll in zip(chunk, tokens, log_likelihoods)]


def _row(index: int, example, **values) -> dict:
    return {"index": index, **({"id": example.id} if example.id is not None else {}), "input": example.input,
            **values}
