"""t5scale.infer.sources: files of each format, globs in name order, a seqio task's split and a TFDS dataset give
the examples their writers put there, in order; a missing field or file is one line naming it."""

import json
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from t5scale.infer.sources import Example, file_source, task_source, tfds_source


def texts(source):
    return [(e.input, e.id, e.target) for e in source.examples()]


def test_jsonl_with_ids_and_targets_in_line_order_skipping_blank_lines(tmp_path):
    rows = [{"q": "first?", "k": 7, "a": "yes"}, {"q": "second?", "k": 9, "a": "no"}]
    (tmp_path / "in.jsonl").write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    source = file_source(str(tmp_path / "in.jsonl"), input_field="q", id_field="k", target_field="a")
    assert texts(source) == [("first?", 7, "yes"), ("second?", 9, "no")]
    assert source.vocabulary is None


def test_tsv_columns_and_plain_text_lines(tmp_path):
    (tmp_path / "in.tsv").write_text("a\tx1\tA\nb\tx2\tB\n")
    assert texts(file_source(str(tmp_path / "in.tsv"), id_field="1", target_field="2")) == [
        ("a", "x1", "A"), ("b", "x2", "B")]
    (tmp_path / "in.txt").write_text("one input\n\nthird, after an empty one\n")
    assert texts(file_source(str(tmp_path / "in.txt"))) == [("one input", None, None), ("", None, None),
                                                             ("third, after an empty one", None, None)]


def test_globs_and_lists_read_every_file_in_name_order(tmp_path):
    for shard in (2, 0, 1):  # written out of order
        (tmp_path / f"data.jsonl-{shard:05d}-of-00003").write_text(json.dumps({"inputs": f"shard {shard}"}) + "\n")
    (tmp_path / "extra.txt").write_text("last\n")
    source = file_source(f"{tmp_path}/data.jsonl-*, {tmp_path}/extra.txt")
    assert [e.input for e in source.examples()] == ["shard 0", "shard 1", "shard 2", "last"]


@pytest.mark.parametrize("content, pattern, message", [
    ('{"text": "x"}\n', "in.jsonl", "in.jsonl:1 has no field 'inputs' (it has: text)"),
    ("not json\n", "in.jsonl", "in.jsonl:1 is not a JSON object"),
    ("a\tb\n", "in.tsv", "TSV fields are 0-based column numbers, not 'name'"),
    ("x\n", "nothing-*.jsonl", "nothing-*.jsonl match no file"),
    ("x\n", "missing.txt", "missing.txt does not exist"),
])
def test_bad_files_name_the_culprit(tmp_path, content, pattern, message):
    if "*" not in pattern and "missing" not in pattern:
        (tmp_path / pattern).write_text(content)
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message)):
        texts(file_source(str(tmp_path / pattern), id_field="name" if pattern.endswith(".tsv") else None))


def test_a_task_gives_its_split_tokenized_by_the_task_in_order():
    from t5scale.data.finetune_tasks import demo_examples

    source = task_source("embedded_sst2", "validation", {"inputs": 16, "targets": 4})
    examples = list(source.examples())
    expected = [f"sst2 sentence: {e['sentence']}" for e in demo_examples("validation")]
    assert [e.input for e in examples] == expected
    assert {e.target for e in examples} == {"positive", "negative"}
    first = examples[0]
    vocabulary = source.vocabulary
    want = [*vocabulary.encode(expected[0])[:15], 1]  # cut to 16 tokens, EOS kept last
    np.testing.assert_array_equal(first.input_ids, want)
    assert vocabulary.decode(list(first.target_ids)) == first.target


def test_a_task_without_the_split_lists_the_splits_it_has():
    with pytest.raises(ValueError, match="No task of 'embedded_sst2' has a 'test' split .it has: train, "
                       "validation.; set --split"):
        task_source("embedded_sst2", "test", None)


def test_tfds_rows_in_stored_order_with_a_feature_as_id():
    with tfds.testing.mock_data(num_examples=5):
        rows = list(tfds.load("glue/sst2", split="validation", shuffle_files=False).as_numpy_iterator())
        source = tfds_source("glue/sst2", "validation", input_field="sentence", id_field="idx", target_field="label")
        assert list(source.examples()) == [Example(r["sentence"].decode(), int(r["idx"]), str(r["label"]))
                                           for r in rows]
        with pytest.raises(ValueError, match=r"TFDS dataset glue/sst2 \(validation\) has no field 'text' "
                           r"\(it has: sentence, label, idx\)"):
            next(tfds_source("glue/sst2", "validation", input_field="text").examples())
