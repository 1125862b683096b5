
import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from t5scale.data import registry, span_corruption, tasks, vocab
from t5scale.data.pipeline import DataConfig, DataNotFoundError, make_dataset

LENGTHS = {"inputs": 64, "targets": 20}


def first_examples(task, count, split="train"):
    dataset = task.get_dataset(LENGTHS, split=split, shuffle=False, seed=0)
    return list(dataset.take(count).as_numpy_iterator())


def test_embedded_task_gives_span_corrupted_examples_with_eos():
    task = registry.get_task_or_mixture(tasks.EMBEDDED_SPAN_CORRUPTION)
    size = task.output_features["targets"].vocabulary.vocab_size
    for example in first_examples(task, 5):
        inputs, targets = example["inputs"], example["targets"]
        assert inputs[-1] == 1 and targets[-1] == 1
        assert len(inputs) <= 64 and len(targets) <= 20
        assert targets[0] == size - 1  # <extra_id_0> opens the targets
        # Every original token is in exactly one of inputs and targets; the merge puts them all back.
        sentinels_in, sentinels_out = (inputs >= size - 100).sum(), (targets >= size - 100).sum()
        merged = span_corruption.merge_spans(inputs, targets, size)
        assert len(merged) == (len(inputs) - 1 - sentinels_in) + (len(targets) - 1 - sentinels_out)
        assert (merged < size - 100).all() and abs(sentinels_in - sentinels_out) <= 1
    validation = first_examples(task, 2, split="validation")
    assert not np.array_equal(validation[0]["inputs"], first_examples(task, 1)[0]["inputs"])


def test_c4_task_is_t5s_definition():
    task = registry.get_task_or_mixture(tasks.C4_SPAN_CORRUPTION)
    assert isinstance(task.source, seqio.TfdsDataSource)
    assert task.source.tfds_dataset.name == "c4/en:2.2.0"
    assert task.output_features["targets"].vocabulary.sentencepiece_model_file == vocab.T5_VOCAB_PATH


def test_c4_task_reads_tfds_through_its_real_source(monkeypatch):
    """Mocked TFDS data through the C4 task's own source and preprocessors. T5's vocabulary cannot be fetched
    here, so the copy swaps in the embedded one; TFDS's mock has no split sizes, so seqio's size lookup is off."""
    c4 = registry.get_task_or_mixture(tasks.C4_SPAN_CORRUPTION)
    offline = seqio.Task("c4_offline_copy", source=c4.source, preprocessors=c4.preprocessors,
                         output_features=tasks.output_features(vocab.embedded_vocabulary()))
    monkeypatch.setattr(seqio.TfdsDataSource, "num_input_examples", lambda self, split: None)
    with tfds.testing.mock_data(num_examples=300):
        examples = first_examples(offline, 3)
    assert len(examples) == 3
    for example in examples:
        assert example["inputs"][-1] == 1 and example["targets"][-1] == 1


def test_missing_tfds_data_names_the_dataset_and_the_data_dir(tmp_path):
    cfg = DataConfig(tasks.C4_SPAN_CORRUPTION, LENGTHS, batch_size=2, tfds_data_dir=str(tmp_path))
    with pytest.raises(DataNotFoundError) as error:
        make_dataset(cfg)
    message = str(error.value)
    assert "'c4/en:2.2.0'" in message and str(tmp_path) in message and "tfds build c4" in message


def test_unknown_task_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"Unknown task or mixture 'c4_span'.*c4_v220_span_corruption"):
        registry.get_task_or_mixture("c4_span")
