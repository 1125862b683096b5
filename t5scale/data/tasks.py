"""seqio tasks for pretraining.

- `c4_v220_span_corruption`: TFDS `c4/en:2.2.0` with T5's vocabulary -- T5's task of the same name, so t5x users'
  gin files work unchanged.
- `embedded_span_corruption`: the embedded corpus with the embedded vocabulary; no download, for demos and tests.

Tasks register on first use (`t5scale.data.registry`), since the embedded vocabulary may need training first.
"""

from __future__ import annotations

import functools
import os

import seqio
import tensorflow as tf

from t5scale import storage
from t5scale.data import corpus, vocab
from t5scale.data.span_corruption import span_corruption

C4_SPAN_CORRUPTION = "c4_v220_span_corruption"
C4_TFDS_NAME = "c4/en:2.2.0"
EMBEDDED_SPAN_CORRUPTION = "embedded_span_corruption"


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    return {"inputs": seqio.Feature(vocabulary, add_eos=True, required=False),
            "targets": seqio.Feature(vocabulary, add_eos=True)}


def _text_to_targets(dataset: tf.data.Dataset) -> tf.data.Dataset:
    return dataset.map(lambda x: {"targets": x["text"]}, num_parallel_calls=tf.data.AUTOTUNE)


SPAN_CORRUPTION_PREPROCESSORS = (
    _text_to_targets,
    seqio.preprocessors.tokenize,
    seqio.CacheDatasetPlaceholder(),
    span_corruption,
    seqio.preprocessors.append_eos_after_trim,
)


class EmbeddedDataSource(seqio.FunctionDataSource):
    """A FunctionDataSource that never asks for file shuffling. seqio warns that an uncached FunctionDataset
    shuffles badly on restarts; that does not apply here: the embedded corpus is one in-memory "file" (nothing to
    shuffle), seqio shuffles its examples with the run's seed, and the trainer saves the iterator's exact position,
    so a restart neither reshuffles nor replays. Tasks on other FunctionDataSources keep the warning."""

    def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **kwargs):
        del shuffle  # only file order, of which there is none
        return super().get_dataset(split, shuffle=False, seed=seed, shard_info=shard_info, **kwargs)


def _embedded_documents(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # one in-memory "file"; example shuffling is seqio's job
    return tf.data.Dataset.from_tensor_slices({"text": list(corpus.split(split))})


def _register() -> None:
    if C4_SPAN_CORRUPTION not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(
            C4_SPAN_CORRUPTION,
            source=seqio.TfdsDataSource(tfds_name=C4_TFDS_NAME),
            preprocessors=list(SPAN_CORRUPTION_PREPROCESSORS),
            output_features=output_features(vocab.t5_vocabulary()),
            metric_fns=[],
        )
    if EMBEDDED_SPAN_CORRUPTION not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(
            EMBEDDED_SPAN_CORRUPTION,
            source=EmbeddedDataSource(
                _embedded_documents, splits=("train", "validation"),
                num_input_examples={s: len(corpus.split(s)) for s in ("train", "validation")}),
            preprocessors=list(SPAN_CORRUPTION_PREPROCESSORS),
            output_features=output_features(vocab.embedded_vocabulary()),
            metric_fns=[],
        )


register_tasks = functools.cache(_register)


def remote_inputs(provider: seqio.Task | seqio.Mixture, tfds_data_dir: str | None = None) -> list[storage.Remote]:
    """The gs:// inputs a task or mixture will read, for `storage.check_reachable`: its vocabularies, and the
    TFDS data directory when a task reads TFDS."""
    tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
    remotes = {}
    for task in tasks:
        for feature in task.output_features.values():
            path = getattr(feature.vocabulary, "sentencepiece_model_file", None)
            hint = ("copy it to this machine and set T5_VOCAB_PATH to the copy" if path == vocab.T5_VOCAB_PATH
                    else "point the task at a local copy")
            remotes[path] = storage.Remote(f"the vocabulary of task {task.name!r}", path, "file", hint)
        data_dir = tfds_data_dir or os.environ.get("TFDS_DATA_DIR")
        if isinstance(task.source, seqio.TfdsDataSource) and data_dir:
            remotes[data_dir] = storage.Remote(f"the TFDS data dir of task {task.name!r}", data_dir, "dir",
                                               "prepare the dataset there, or point TFDS_DATA_DIR / "
                                               "data_config.tfds_data_dir at a local copy")
    return [r for path, r in remotes.items() if path]
