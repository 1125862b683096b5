"""Packed, sharded, resumable batches from the embedded span-corruption task; positions saved locally and on
gs:// (the emulator)."""

import numpy as np
import pytest

from t5scale.data.pipeline import DataConfig, make_batch_iterator

LENGTHS = {"inputs": 64, "targets": 20}
FEATURES = {"encoder_input_tokens": 64, "encoder_segment_ids": 64, "encoder_positions": 64,
            "decoder_input_tokens": 20, "decoder_target_tokens": 20, "decoder_loss_weights": 20,
            "decoder_segment_ids": 20, "decoder_positions": 20}


def config(**changes):
    return DataConfig(task_feature_lengths=LENGTHS, batch_size=4, **changes)


def test_batches_are_packed_numpy_dicts_with_fixed_shapes():
    batches = make_batch_iterator(config())
    for _ in range(3):
        batch = next(batches)
        assert {name: value.shape for name, value in batch.items()} == {
            name: (4, length) for name, length in FEATURES.items()}
        assert all(value.dtype == np.int32 for value in batch.values())
    assert ((batch["encoder_segment_ids"] > 0) == (batch["encoder_input_tokens"] > 0)).all()
    # Decoder inputs are targets shifted right within each packed segment (0 starts every segment).
    starts = batch["decoder_positions"] == 0
    assert (batch["decoder_input_tokens"][starts] == 0).all()
    nonpad = batch["decoder_target_tokens"] > 0
    np.testing.assert_array_equal(batch["decoder_loss_weights"] > 0, nonpad)


def test_packing_can_be_turned_off():
    # Span corruption fills almost every example to the full length (only the tail of each 128-document stream
    # is shorter), so packing rarely puts two examples in a row here; without it there are no segment features.
    batch = next(make_batch_iterator(config(pack=False)))
    assert set(batch) == {"encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                          "decoder_loss_weights"}


def test_hosts_read_disjoint_shards_of_the_global_batch():
    cfg = config(shuffle=False)
    host0, host1 = make_batch_iterator(cfg, 0, 2), make_batch_iterator(cfg, 1, 2)
    a, b = next(host0), next(host1)
    assert a["encoder_input_tokens"].shape == (2, 64)  # global 4 over 2 hosts
    assert not np.array_equal(a["encoder_input_tokens"], b["encoder_input_tokens"])
    with pytest.raises(ValueError, match="does not split evenly over 3 hosts"):
        make_batch_iterator(cfg, 0, 3)
    with pytest.raises(ValueError, match=r"shard_index must be in \[0, 2\)"):
        make_batch_iterator(cfg, 2, 2)


def saved_after(cfg, batches: int, path: str, total: int):
    """(the uninterrupted run's first `total` batches, what `save` returned) after saving at `batches`."""
    uninterrupted = make_batch_iterator(cfg)
    expected = [next(uninterrupted) for _ in range(total)]
    first = make_batch_iterator(cfg)
    for _ in range(batches):
        next(first)
    return expected, first.save(path)


def assert_resumes(cfg, path: str, expected) -> None:
    resumed = make_batch_iterator(cfg)  # a fresh pipeline, as after a restart
    resumed.restore(path)
    for want in expected:
        got = next(resumed)
        for name in FEATURES:
            np.testing.assert_array_equal(got[name], want[name])


def test_restored_iterator_yields_exactly_the_uninterrupted_batches(tmp_path):
    cfg = config(seed=3)
    expected, _ = saved_after(cfg, 5, str(tmp_path / "data"), 8)
    assert_resumes(cfg, str(tmp_path / "data"), expected[5:])


def test_a_position_on_gcs_is_written_and_read_back_exactly(gcs):
    from etils import epath

    bucket = gcs.create_bucket()
    path = f"gs://{bucket}/run/data_state/checkpoint_3/process_0"
    cfg = config(seed=3)
    expected, saved = saved_after(cfg, 3, path, 5)
    assert saved == path
    names = gcs.objects(bucket)
    assert "run/data_state/checkpoint_3/process_0.index" in names
    assert any(n.startswith("run/data_state/checkpoint_3/process_0.data-") for n in names), names
    epath.Path(f"gs://{bucket}/run/data_state/checkpoint_3/process_0.manifest.json").write_text("{}")  # not state
    assert_resumes(cfg, path, expected[3:])
    with pytest.raises(FileNotFoundError, match="No data-iterator state"):
        make_batch_iterator(cfg).restore(f"gs://{bucket}/run/data_state/checkpoint_9/process_0")


def test_a_storage_error_while_saving_is_an_oserror_not_an_unsavable_pipeline(tmp_path, monkeypatch):
    import tensorflow as tf

    batches = make_batch_iterator(config())
    next(batches)
    # What TensorFlow's GCS client raised when it could not reach storage: also a FailedPreconditionError.
    outage = tf.errors.FailedPreconditionError(None, None, "Error executing an HTTP request: libcurl code 6 meaning "
                                               "'Could not resolve hostname'")

    class Unreachable:
        def write(self, prefix):
            raise outage

    monkeypatch.setattr(batches, "_checkpoint", Unreachable())
    path = str(tmp_path / "data_state" / "process_0")
    with pytest.raises(OSError, match="Could not resolve hostname"):
        batches.save(path)
    assert not (tmp_path / "data_state" / "process_0.not_saved").exists()
    monkeypatch.undo()
    assert batches.save(path) == path  # still savable once storage is back
    assert (tmp_path / "data_state" / "process_0.index").exists()


def test_same_seed_same_batches_other_seed_other_batches():
    a, b, c = (next(make_batch_iterator(config(seed=s))) for s in (1, 1, 2))
    np.testing.assert_array_equal(a["encoder_input_tokens"], b["encoder_input_tokens"])
    assert not np.array_equal(a["encoder_input_tokens"], c["encoder_input_tokens"])


def test_restore_from_a_missing_state_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No data-iterator state"):
        make_batch_iterator(config()).restore(str(tmp_path / "nothing"))


@pytest.mark.parametrize("changes, culprit", [
    (dict(batch_size=0), "batch_size must be positive"),
    (dict(task_feature_lengths={"inputs": 8}), "needs lengths for ['targets']"),
])
def test_bad_config_is_rejected(changes, culprit):
    with pytest.raises(ValueError) as error:
        DataConfig(**changes)
    assert culprit in str(error.value)


def test_a_pipeline_with_python_code_saves_no_position_and_restarts_from_its_beginning(tmp_path, caplog):
    import tensorflow as tf

    from t5scale.data.pipeline import BatchIterator

    def make():
        rows = tf.data.Dataset.from_generator(lambda: ({"x": [i]} for i in range(10)),
                                              output_signature={"x": tf.TensorSpec([1], tf.int32)})
        return BatchIterator(rows)

    batches = make()
    next(batches)
    path = str(tmp_path / "data_state" / "process_0")
    assert batches.save(path) == path + ".not_saved"
    assert "stateful" in (tmp_path / "data_state" / "process_0.not_saved").read_text()
    assert "cannot be saved" in caplog.text
    assert next(batches)["x"].tolist() == [1]  # saving did not disturb the iterator
    restarted = make()
    restarted.restore(path)
    assert next(restarted)["x"].tolist() == [0]
    assert "from its beginning" in caplog.text


def test_packing_a_task_with_text_features_does_not_warn_about_dropping_them(caplog):
    from absl import logging as absl_logging

    batch = next(make_batch_iterator(DataConfig("embedded_sst2", task_feature_lengths=LENGTHS, batch_size=4)))
    assert set(batch) == set(FEATURES)  # the pretokenized text and index were dropped, as packing does
    absl_logging.warning("another seqio warning")
    assert "another seqio warning" in caplog.text  # other warnings still show
    assert "will be removed during packing" not in caplog.text
