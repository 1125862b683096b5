"""Packed encoder-decoder batches from a seqio task or mixture, per host, with a resumable position.

    cfg = DataConfig("embedded_span_corruption", batch_size=8)
    batches = make_batch_iterator(cfg, shard_index=jax.process_index(), num_shards=jax.process_count())
    batch = next(batches)            # dict of numpy arrays, fixed shapes [batch_size / num_shards, length]
    batches.save("/ckpt/data-0")     # ... later, in a fresh process:
    batches.restore("/ckpt/data-0")  # yields exactly the batches an uninterrupted iterator would

Batch features (seqio's EncDecFeatureConverter with packing): encoder_input_tokens, encoder_segment_ids,
encoder_positions, decoder_input_tokens, decoder_target_tokens, decoder_loss_weights, decoder_segment_ids,
decoder_positions.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf
from etils import epath

from t5scale.data.registry import get_task_or_mixture
from t5scale.staging import StagedDir


class _DroppedFeaturesNotice(logging.Filter):
    """Hides seqio's warning that packing drops the features it has no length for. Every fine-tuning task has such
    features (the pretokenized text, the example index) for its metrics, which read them from seqio's own unpacked
    copy; the warning came at every validation pass, in the middle of the training's progress output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Features not in `features_length` will be removed during packing")


logging.getLogger("absl").addFilter(_DroppedFeaturesNotice())


class DataNotFoundError(FileNotFoundError):
    """A dataset the task reads has not been prepared where TFDS looks for it."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    mixture_or_task_name: str = "embedded_span_corruption"
    task_feature_lengths: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"inputs": 512, "targets": 114})
    batch_size: int = 128  # global, across all hosts
    split: str = "train"
    shuffle: bool = True
    seed: int | None = 0  # fixes shuffling and span corruption; None: different every run
    pack: bool = True
    num_epochs: int | None = None  # None: repeat forever (pretraining)
    use_cached: bool = False  # read a cache made by seqio's cache_tasks_main
    tfds_data_dir: str | None = None  # None: TFDS's default (TFDS_DATA_DIR or ~/tensorflow_datasets)

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"DataConfig.batch_size must be positive, got {self.batch_size}.")
        missing = {"inputs", "targets"} - set(self.task_feature_lengths)
        if missing:
            raise ValueError(f"DataConfig.task_feature_lengths needs lengths for {sorted(missing)}, got "
                             f"{dict(self.task_feature_lengths)}.")
        object.__setattr__(self, "task_feature_lengths", dict(self.task_feature_lengths))

    def host_batch_size(self, num_shards: int) -> int:
        if self.batch_size % num_shards:
            raise ValueError(f"Global batch size {self.batch_size} does not split evenly over {num_shards} hosts.")
        return self.batch_size // num_shards


def make_dataset(cfg: DataConfig, shard_index: int = 0, num_shards: int = 1) -> tf.data.Dataset:
    """This host's share of the batches: a tf.data.Dataset of dicts of [host batch, length] int32 tensors."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}.")
    provider = get_task_or_mixture(cfg.mixture_or_task_name)
    if cfg.tfds_data_dir:
        seqio.set_tfds_data_dir_override(cfg.tfds_data_dir)
    try:
        return seqio.get_dataset(
            provider, task_feature_lengths=cfg.task_feature_lengths,
            feature_converter=seqio.EncDecFeatureConverter(pack=cfg.pack),
            dataset_split=cfg.split, use_cached=cfg.use_cached, shuffle=cfg.shuffle,
            num_epochs=cfg.num_epochs,
            # One host reads everything; no need to list the source's files (TFDS mock data has none).
            shard_info=seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None,
            seed=cfg.seed, batch_size=cfg.host_batch_size(num_shards), verbose=False)
    except (ValueError, KeyError, tf.errors.NotFoundError, AssertionError) as error:
        _raise_if_tfds_data_missing(provider, cfg, error)
        raise


def _raise_if_tfds_data_missing(provider, cfg: DataConfig, error: Exception) -> None:
    tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
    for task in tasks:
        if isinstance(task.source, seqio.TfdsDataSource):
            name = task.source.tfds_dataset.name
            data_dir = cfg.tfds_data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
            raise DataNotFoundError(
                f"Task {task.name!r} reads TFDS dataset {name!r}, which is not prepared in {data_dir} "
                f"({str(error).splitlines()[0][:200]}). Prepare it with `tfds build {name.split(':')[0]} "
                f"--data_dir={data_dir}` (for c4 a large Apache Beam job), or point tfds_data_dir / "
                "TFDS_DATA_DIR at a directory or gs:// bucket that already holds it.") from error


class BatchIterator:
    """Numpy batches from a tf.data pipeline, whose position can be saved and restored exactly.

    The position is a tf.train.Checkpoint, `<path>.index` and `<path>.data-*`. TensorFlow writes it locally; for a
    gs:// path it is written to a local folder and copied with etils.epath (t5scale.staging), and copied back down
    to restore.

    A pipeline with Python code in it (`tf.py_function`, `from_generator`) has no savable position: saving then
    writes `<path>.not_saved` with the reason, and restoring from it starts the data again from the beginning.
    Both warn. Any other failure to save is an OSError (the checkpointer reports it; nothing is committed).
    """

    def __init__(self, dataset: tf.data.Dataset):
        self._iterator = iter(dataset)
        self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)
        self._savable = True

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return {name: value.numpy() for name, value in next(self._iterator).items()}

    def save(self, path: str) -> str:
        """Write the position (and any shuffle buffer) under the prefix `path`; returns the written path."""
        folder, name = os.path.split(path)
        staged = StagedDir(folder)
        epath.Path(staged.local).mkdir(parents=True, exist_ok=True)
        if self._savable:
            try:
                self._checkpoint.write(os.path.join(staged.local, name))
                staged.close()
                return path
            except tf.errors.OpError as error:
                if not _is_stateful_pipeline(error):
                    staged.close(upload=False)
                    raise OSError(f"Saving the input pipeline's position to {path} failed: "
                                  f"{_first_line(error)}") from error
                self._savable = False
                self._reason = _first_line(error)
                logging.warning("The input pipeline's position cannot be saved (%s): a restart will read the data "
                                "from its beginning.", self._reason)
        staged.close(upload=False)
        epath.Path(folder).mkdir(parents=True, exist_ok=True)
        epath.Path(path + ".not_saved").write_text(self._reason + "\n")
        return path + ".not_saved"

    def restore(self, path: str) -> None:
        if epath.Path(path + ".not_saved").exists():
            logging.warning("No input-pipeline position was saved at %s (a pipeline with Python code): reading the "
                            "data from its beginning.", path)
            return
        if not epath.Path(path + ".index").exists():
            raise FileNotFoundError(f"No data-iterator state at {path} (expected {path}.index).")
        folder, name = os.path.split(path)
        staged = StagedDir(folder, download=(f"{name}.index", f"{name}.data-*"))
        try:
            self._checkpoint.read(os.path.join(staged.local, name)).assert_consumed()
        finally:
            staged.close(upload=False)


def _is_stateful_pipeline(error: tf.errors.OpError) -> bool:
    """The one failure that means "this pipeline has no savable position": tf.data refuses to serialize a
    stateful op (a Python function). Others -- a full disk, a storage error -- are failures to save."""
    return isinstance(error, tf.errors.FailedPreconditionError) and " is stateful" in error.message


def _first_line(error: tf.errors.OpError) -> str:
    return error.message.splitlines()[0].split("}} ")[-1]


def make_batch_iterator(cfg: DataConfig, shard_index: int = 0, num_shards: int = 1) -> BatchIterator:
    return BatchIterator(make_dataset(cfg, shard_index, num_shards))
