import numpy as np
import pytest

from t5scale.data import metrics

# ===================================== postprocessors ============================================


def test_class_label_postprocessor_maps_label_names_to_ids_and_anything_else_to_minus_one():
    labels = ("negative", "positive")
    assert metrics.string_label_to_class_id("positive", labels) == 1
    assert metrics.string_label_to_class_id("negative", labels, example={}, is_target=True) == 0
    assert metrics.string_label_to_class_id("Positive", labels) == -1
    assert metrics.string_label_to_class_id("<unk>", labels) == -1


def test_stsb_postprocessor_parses_the_score_and_gives_minus_one_for_text():
    assert metrics.string_to_float("3.8") == pytest.approx(3.8)
    assert metrics.string_to_float("three point eight") == -1.0


def test_multirc_postprocessor_adds_the_question_index_to_targets_only():
    example = {"idx/question": np.int32(7)}
    assert metrics.multirc_postprocess("True", example=example, is_target=True) == {"value": 1, "group": 7}
    assert metrics.multirc_postprocess("False", example=example, is_target=False) == {"value": 0}
    assert metrics.multirc_postprocess("maybe", example=example, is_target=False) == {"value": -1}


def test_record_and_squad_targets_become_all_gold_answers_from_the_example():
    example = {"answers": np.array([b"Barack Obama", b"Obama"]), "idx/passage": np.int32(3),
               "idx/query": np.int32(5)}
    assert metrics.record_postprocess("Obama", example=example, is_target=True) == {
        "value": ["Barack Obama", "Obama"], "group": (3, 5)}
    assert metrics.record_postprocess("Obama", example=example, is_target=False) == {"value": "Obama"}
    assert metrics.qa_postprocess("Obama", example=example, is_target=True) == ["Barack Obama", "Obama"]
    assert metrics.qa_postprocess("Obama", example=example, is_target=False) == "Obama"


@pytest.mark.parametrize("prediction, expected", [
    ("bunny", 1),             # a subset of the candidate's words
    ("The Fuzzy Bunny", 1),   # case and determiners ignored
    ("fuzzy bunny rabbit", 1),  # a superset
    ("Bob", 0),
    ("bunny's hat", 0),       # possessive on one side only
    ("the", -1),              # nothing left: never equal to a label
])
def test_wsc_postprocessor_says_whether_the_prediction_names_the_candidate(prediction, expected):
    example = {"targets_pretokenized": b"the fuzzy bunny", "label": np.int64(0)}
    assert metrics.wsc_simple_postprocess(prediction, example=example, is_target=False) == expected
    assert metrics.wsc_simple_postprocess("the fuzzy bunny", example=example, is_target=True) == 0


# ========================================= metrics ================================================


def test_accuracy_is_a_percentage_and_counts_unparseable_predictions_wrong():
    assert metrics.accuracy([0, 1, 2, 1], [0, 1, 1, -1]) == {"accuracy": 50.0}


def test_mcc_of_a_known_confusion_matrix():
    # TP=2 FN=1 TN=2 FP=1: (2*2 - 1*1) / sqrt(3*3*3*3) = 1/3
    result = metrics.matthews_corrcoef([1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1])
    assert result["matthews_corrcoef"] == pytest.approx(100 / 3)


def test_binary_f1_counts_an_invalid_prediction_as_the_wrong_class():
    assert metrics.f1_with_invalid([1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1])["f1"] == pytest.approx(200 / 3)
    # -1 on a positive is a false negative, on a negative a false positive: TP=1 FN=1 FP=1 -> F1 = 2/4
    assert metrics.f1_with_invalid([1, 1, 0, 0], [1, -1, 0, -1])["f1"] == pytest.approx(50.0)


def test_pearson_and_spearman_differ_on_a_monotone_nonlinear_relation():
    targets, predictions = [1.0, 2.0, 3.0, 4.0], [1.0, 4.0, 9.0, 16.0]
    # Pearson by hand: sum(dx*dy) = 25, sum(dx^2) = 5, sum(dy^2) = 129
    assert metrics.pearson_corrcoef(targets, predictions)["pearson_corrcoef"] == pytest.approx(
        100 * 25 / np.sqrt(5 * 129))
    assert metrics.spearman_corrcoef(targets, predictions)["spearman_corrcoef"] == pytest.approx(100.0)


def test_cb_macro_f1_averages_the_three_classes():
    mean_f1 = metrics.mean_multiclass_f1(3)
    # per-class F1: 0 -> 2/4, 1 -> 4/5, 2 -> 2/3
    assert mean_f1([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]) == {
        "mean_3class_f1": pytest.approx(100 * (0.5 + 0.8 + 2 / 3) / 3)}
    # An unparseable prediction (-1) is a miss for its true class; no class "-1" is averaged in.
    assert mean_f1([0, 1, 2], [0, 1, -1])["mean_3class_f1"] == pytest.approx(200 / 3)


def test_multirc_f1_is_over_all_answers_and_exact_match_is_per_question():
    targets = [{"value": 1, "group": 0}, {"value": 0, "group": 0}, {"value": 1, "group": 1}, {"value": 1, "group": 1}]
    predictions = [{"value": 1}, {"value": 0}, {"value": 1}, {"value": 0}]
    assert metrics.multirc_f1_over_all_answers(targets, predictions)["f1"] == pytest.approx(80.0)  # TP2 FN1
    assert metrics.multirc_exact_match(targets, predictions) == {"exact_match": 50.0}


@pytest.mark.parametrize("text, normalized", [
    ("The  Cat!", "cat"),
    ("an Apple, a day", "apple day"),
    ("Theater (the 1st)", "theater 1st"),  # articles only as whole words
    ("  U.S.A.\n", "usa"),
])
def test_squad_normalisation_is_the_official_one(text, normalized):
    assert metrics.normalize_squad(text) == normalized


def test_squad_scores_are_the_best_over_the_gold_answers():
    assert metrics.squad_em_f1([["a dog", "The Cat"]], ["cat."]) == {"em": 100.0, "f1": 100.0}
    result = metrics.squad_em_f1([["big red dog"], ["x"]], ["red dog house", "x"])
    assert result["em"] == 50.0
    assert result["f1"] == pytest.approx((2 / 3 + 1) / 2 * 100)  # 2 of 3 tokens each way, then a hit
    with pytest.raises(ValueError, match="2 targets but 1 predictions"):
        metrics.squad_em_f1([["a"], ["b"]], ["a"])


def test_record_scores_one_copy_per_query():
    targets = [{"value": ["Barack Obama", "Obama"], "group": (0, 0)},
               {"value": ["Barack Obama", "Obama"], "group": (0, 0)},  # the same query again, for its 2nd answer
               {"value": ["Paris"], "group": (0, 1)}]
    predictions = [{"value": "barack obama"}, {"value": "wrong"}, {"value": "Paris France"}]
    result = metrics.record_em_f1(targets, predictions)
    assert result["em"] == 50.0
    assert result["f1"] == pytest.approx((1 + 2 / 3) / 2 * 100)


# ========================================= averages ===============================================


def test_benchmark_average_means_within_each_task_then_across_tasks():
    task_metrics = {"a": {"f1": 80.0, "accuracy": 60.0}, "b": {"accuracy": 90.0}, "c": {"accuracy": 0.0}}
    assert metrics.benchmark_average(task_metrics, ["a", "b"]) == pytest.approx(80.0)
    # A tuple is one entry: (a's 2 metrics + b's 1) / 3, then with c
    assert metrics.benchmark_average(task_metrics, [("a", "b"), "c"]) == pytest.approx((230 / 3) / 2)


def test_glue_average_counts_mnli_matched_and_mismatched_as_one_task():
    scores = {name: {"score": 50.0} for entry in metrics.GLUE_AVERAGE_TASKS
              for name in ((entry,) if isinstance(entry, str) else entry)}
    scores["glue_mnli_matched_v002"] = {"accuracy": 80.0}
    scores["glue_mnli_mismatched_v002"] = {"accuracy": 100.0}
    assert len(metrics.GLUE_AVERAGE_TASKS) == 8
    assert metrics.benchmark_average(scores, metrics.GLUE_AVERAGE_TASKS) == pytest.approx((7 * 50 + 90) / 8)


def test_benchmark_average_names_the_missing_tasks():
    with pytest.raises(ValueError, match=r"missing: \['super_glue_cb_v102'"):
        metrics.benchmark_average({"super_glue_boolq_v102": {"accuracy": 1.0}}, metrics.SUPER_GLUE_AVERAGE_TASKS)
