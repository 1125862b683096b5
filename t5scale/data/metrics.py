"""Postprocessors and metrics for the fine-tuning tasks, in seqio's calling conventions (T5's definitions).

- A postprocessor turns one decoded string into what a metric compares: `fn(text, example=None, is_target=False)`.
  seqio calls it on the target text with `is_target=True` and the whole example (features as numpy values,
  strings as bytes), and on each prediction with `is_target=False`.
- A metric is `fn(targets, predictions) -> {name: value}` over the whole split. Like T5, every score is a
  percentage (multiplied by 100), and the names are T5's (`accuracy`, `f1`, `matthews_corrcoef`, `em`, ...), so
  tables and TensorBoard tags line up with T5's.

MCC, F1, Pearson and Spearman come from scikit-learn and scipy; only SQuAD's answer normalisation and token F1
(the official evaluation script's definitions, which no library ships) are written here.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.stats
import sklearn.metrics

# ===================================== postprocessors ============================================


def string_label_to_class_id(text: str, label_classes: Sequence[str], default: int = -1, **unused) -> int:
    """The index of `text` in `label_classes`; `default` (-1, never a class) for anything else, e.g. "<unk>"."""
    del unused
    return list(label_classes).index(text) if text in label_classes else default


def string_to_float(text: str, default: float = -1.0, **unused) -> float:
    """STS-B's score as a float; `default` when the model wrote something that is not a number."""
    del unused
    try:
        return float(text)
    except ValueError:
        return default


def _as_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def multirc_postprocess(text: str, example: Mapping[str, Any] | None = None, is_target: bool = False) -> dict:
    """{"value": class id of "False"/"True"}; a target also carries its question's index as "group"."""
    result = {"value": string_label_to_class_id(text, ("False", "True"))}
    if is_target:
        result["group"] = int(example["idx/question"])
    return result


def record_postprocess(text: str, example: Mapping[str, Any] | None = None, is_target: bool = False) -> dict:
    """A prediction is {"value": text}; a target is every gold answer and its (passage, query) as "group".

    ReCoRD's preprocessor emits one example per gold answer; the group lets the metric keep one per query.
    """
    if not is_target:
        return {"value": text}
    return {"value": [_as_text(a) for a in example["answers"]],
            "group": (int(example["idx/passage"]), int(example["idx/query"]))}


def qa_postprocess(text: str, example: Mapping[str, Any] | None = None, is_target: bool = False) -> str | list[str]:
    """SQuAD: a prediction stays text; a target becomes all of the example's gold answers."""
    if is_target:
        return [_as_text(a) for a in example["answers"]]
    return text


# Words T5 ignores when it compares a predicted WSC referent with the candidate ("the dog" == "dog").
_WSC_DETERMINERS = frozenset("a an few her his each every many much my our some that the their these this those "
                             "which whose your".split())


def _wsc_words(text: str) -> list[str]:
    return [w for w in text.strip().lower().split(" ") if w and w not in _WSC_DETERMINERS]


def wsc_simple_postprocess(text: str, example: Mapping[str, Any] | None = None, is_target: bool = False) -> int:
    """WSC as T5 evaluates it: the target is the example's 0/1 label; a prediction is 1 if it names the candidate.

    The model writes the referent of the marked pronoun; the candidate is the example's target text. They match
    when one's words (lowercased, determiners dropped) contain the other's, and both or neither are possessive
    ("Bob" does not match "Bob's hat"). An empty prediction is -1, so that it never equals a label.
    """
    if is_target:
        return int(example["label"])
    prediction = _wsc_words(text)
    if not prediction:
        return -1
    candidate = _wsc_words(_as_text(example["targets_pretokenized"]))
    if ("'" in " ".join(prediction)) != ("'" in " ".join(candidate)):
        return 0
    return int(set(prediction) <= set(candidate) or set(candidate) <= set(prediction))


# ========================================= metrics ================================================


def accuracy(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    return {"accuracy": 100 * sklearn.metrics.accuracy_score(targets, predictions)}


def matthews_corrcoef(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """CoLA's metric."""
    return {"matthews_corrcoef": 100 * sklearn.metrics.matthews_corrcoef(targets, predictions)}


def f1_with_invalid(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """Binary F1 of class 1 (MRPC, QQP, MultiRC); a prediction that is neither 0 nor 1 counts as wrong."""
    targets, predictions = np.asarray(targets), np.array(predictions)
    invalid = (predictions != 0) & (predictions != 1)
    predictions[invalid] = 1 - targets[invalid]
    return {"f1": 100 * sklearn.metrics.f1_score(targets, predictions)}


def pearson_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
    return {"pearson_corrcoef": 100 * scipy.stats.pearsonr(targets, predictions).statistic}


def spearman_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
    return {"spearman_corrcoef": 100 * scipy.stats.spearmanr(targets, predictions).statistic}


def mean_multiclass_f1(num_classes: int) -> Callable[[Sequence[int], Sequence[int]], dict[str, float]]:
    """Macro F1 over classes 0..num_classes-1 (CB: 3), named `mean_<n>class_f1` like T5's."""

    def mean_f1(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
        score = sklearn.metrics.f1_score(targets, predictions, labels=range(num_classes), average="macro",
                                         zero_division=0)
        return {f"mean_{num_classes}class_f1": 100 * score}

    return mean_f1


def multirc_f1_over_all_answers(targets: Sequence[dict], predictions: Sequence[dict]) -> dict[str, float]:
    """MultiRC's F1a: binary F1 over every (question, answer) pair of the split."""
    return f1_with_invalid([t["value"] for t in targets], [p["value"] for p in predictions])


def multirc_exact_match(targets: Sequence[dict], predictions: Sequence[dict]) -> dict[str, float]:
    """MultiRC's EM: the share of questions whose answers are all labelled right (grouped by question index)."""
    right = collections.defaultdict(list)
    for target, prediction in zip(targets, predictions):
        right[target["group"]].append(target["value"] == prediction["value"])
    return {"exact_match": 100 * float(np.mean([all(group) for group in right.values()]))}


def normalize_squad(text: str) -> str:
    """The official SQuAD v1.1 answer normalisation: lowercase, drop punctuation and the articles a/an/the,
    collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(target: str, prediction: str) -> float:
    common = collections.Counter(target.split()) & collections.Counter(prediction.split())
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction.split()), same / len(target.split())
    return 2 * precision * recall / (precision + recall)


def squad_em_f1(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
    """SQuAD EM and token F1 after normalisation, each the best over an example's gold answers."""
    if len(targets) != len(predictions):
        raise ValueError(f"Got {len(targets)} targets but {len(predictions)} predictions; they must pair up.")
    em, f1 = [], []
    for answers, prediction in zip(targets, predictions):
        answers, prediction = [normalize_squad(a) for a in answers], normalize_squad(prediction)
        em.append(max(float(a == prediction) for a in answers))
        f1.append(max(_token_f1(a, prediction) for a in answers))
    return {"em": 100 * float(np.mean(em)), "f1": 100 * float(np.mean(f1))}


def record_em_f1(targets: Sequence[dict], predictions: Sequence[dict]) -> dict[str, float]:
    """ReCoRD: SQuAD's EM/F1 (best over the gold answers) on the first example of each (passage, query)."""
    seen, kept_targets, kept_predictions = set(), [], []
    for target, prediction in zip(targets, predictions):
        if target["group"] not in seen:
            seen.add(target["group"])
            kept_targets.append(target["value"])
            kept_predictions.append(prediction["value"])
    return squad_em_f1(kept_targets, kept_predictions)


# ========================================= averages ===============================================

# T5's benchmark averages (t5/evaluation/eval_utils.py): one entry per task; a tuple pools tasks into one entry.
# MNLI matched and mismatched are ONE entry (the mean of the two accuracies). WNLI, the diagnostics (AX, AX-b,
# AX-g) and DPR are not part of the averages.
GLUE_AVERAGE_TASKS = ("glue_cola_v002", "glue_sst2_v002", "glue_mrpc_v002", "glue_stsb_v002", "glue_qqp_v002",
                      ("glue_mnli_matched_v002", "glue_mnli_mismatched_v002"), "glue_qnli_v002", "glue_rte_v002")
SUPER_GLUE_AVERAGE_TASKS = ("super_glue_boolq_v102", "super_glue_cb_v102", "super_glue_copa_v102",
                            "super_glue_multirc_v102", "super_glue_record_v102", "super_glue_rte_v102",
                            "super_glue_wic_v102", "super_glue_wsc_v102_simple_eval")


def benchmark_average(task_metrics: Mapping[str, Mapping[str, float]],
                      tasks: Sequence[str | Sequence[str]] = GLUE_AVERAGE_TASKS) -> float:
    """T5's GLUE/SuperGLUE score: the mean of each entry's metrics, then the mean over entries.

    `task_metrics` maps a task name to its metrics (seqio.Evaluator's output). An entry of `tasks` is a task
    name, or a tuple of names whose metrics are pooled into one mean (MNLI-m + MNLI-mm in GLUE_AVERAGE_TASKS).
    """
    entries = [(entry,) if isinstance(entry, str) else tuple(entry) for entry in tasks]
    missing = sorted({name for entry in entries for name in entry if not task_metrics.get(name)})
    if not entries or missing:
        raise ValueError(f"benchmark_average needs metrics for every task; missing: {missing or 'all (no tasks)'}. "
                         f"Got metrics for: {sorted(task_metrics)}.")
    means = [np.mean([v for name in entry for v in task_metrics[name].values()]) for entry in entries]
    return float(np.mean(means))
