"""seqio tasks for fine-tuning: GLUE, SuperGLUE and SQuAD v1.1 in T5's text-to-text formats, under T5's names.

Every task reads TFDS at T5's versions (`glue/*:1.0.0`, `super_glue/*:1.0.2`, `squad/v1.1:3.0.0`) and formats
an example the way T5 does (t5/data/preprocessors.py, t5/data/glue_utils.py):

    glue_mnli_v002       "mnli hypothesis: <h> premise: <p>"              -> "entailment" | "neutral" | ...
    glue_stsb_v002       "stsb sentence1: <s1> sentence2: <s2>"           -> "3.8" (score rounded to 0.2)
    super_glue_copa_v102 "copa choice1: <c1> choice2: <c2> premise: <p> question: cause" -> "choice2"
    squad_v010_allanswers "question: <q> context: <c>" (punctuation spaced) -> the first answer

i.e. "<benchmark> key: value ..." with the keys sorted, the TFDS label name as the target, and "<unk>" for the
unlabelled (-1) test examples. T5's special cases are kept: MultiRC (fixed key order, HTML removed, grouped by
question), ReCoRD (one example per gold answer), WiC (the sentences and the word only), and WSC, which T5 casts
as "name the referent of the *marked* pronoun" (`super_glue_wsc_v102_simple_train|eval`) and trains alongside
DPR (`dpr_v001_simple`). MNLI has `glue_mnli_v002` (train and both validation/test splits) plus T5's
evaluation-only `glue_mnli_matched_v002` and `glue_mnli_mismatched_v002`.

Mixtures (T5's names and members; rates are seqio.mixing_rate_num_examples, i.e. proportional to each task's
training examples with no maximum, as T5's GLUE/SuperGLUE weights are; evaluation-only tasks have rate 0 so
that evaluating a mixture covers them):

    glue_v002_proportional       GLUE without WNLI (T5 trains no WNLI) and without the AX diagnostic
    super_glue_v102_proportional SuperGLUE + DPR, without the AX-b/AX-g diagnostics
    glue_super_glue_squad_proportional  both of the above + SQuAD; GLUE RTE at half rate, since SuperGLUE
                                 RTE is the same data (T5's `all_proportional` de-duplication)

Where this differs from T5, on purpose: T5 hard-codes its mixture weights, seqio counts them (the input examples
of the train split, or the preprocessed ones once a task is cached; so ReCoRD and WSC-train weigh a bit less than
T5's 138,854 and 259 until cached); the WSC pronoun is marked by a regex at its word index (with a next-word
fallback) instead of T5's assertion plus two hard-coded example texts; SQuAD's spaced texts are also stripped
(the same tokens, no trailing space).

`embedded_sst2` is an offline stand-in for glue/sst2 (see `demo_examples`). T5's vocabulary cannot be fetched
offline; `registry.copy_with_vocabulary` registers a copy of any task or mixture with another vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Sequence

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from t5scale.data import corpus, metrics, tasks, vocab

GLUE_TFDS_VERSION = "1.0.0"
SUPER_GLUE_TFDS_VERSION = "1.0.2"
SQUAD_TFDS_NAME = "squad/v1.1:3.0.0"
DPR_TFDS_NAME = "definite_pronoun_resolution:1.1.0"

SQUAD = "squad_v010_allanswers"
GLUE_MIXTURE = "glue_v002_proportional"
SUPER_GLUE_MIXTURE = "super_glue_v102_proportional"
ALL_MIXTURE = "glue_super_glue_squad_proportional"
EMBEDDED_SST2 = "embedded_sst2"

_TRAIN_VALIDATION_TEST = ("train", "validation", "test")
_MNLI_SPLITS = ("train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched")

# =========================================== formatting ===========================================


def _join(parts: Sequence) -> tf.Tensor:
    return tf.strings.join(list(parts), separator=" ")


def _label_name(label: tf.Tensor, label_names: Sequence[str]) -> tf.Tensor:
    """The label's name; "<unk>" for -1, TFDS's label of unlabelled test examples."""
    name = tf.gather(tf.constant(list(label_names)), tf.maximum(label, 0))
    return tf.where(label < 0, tf.constant("<unk>"), name)


def _glue_inputs(x: dict, benchmark_name: str, feature_names: Sequence[str] | None) -> tf.Tensor:
    keys = feature_names or sorted(set(x) - {"label", "idx"})
    return _join([benchmark_name, *(part for key in keys for part in (f"{key}:", x[key]))])


@seqio.map_over_dataset
def glue(x: dict, benchmark_name: str, label_names: Sequence[str],
         feature_names: Sequence[str] | None = None) -> dict:
    """T5's GLUE/SuperGLUE format: "<benchmark> key1: value1 key2: value2" (keys sorted unless given) -> label name."""
    return {"inputs": _glue_inputs(x, benchmark_name, feature_names),
            "targets": _label_name(x["label"], label_names), "idx": x["idx"]}


@seqio.map_over_dataset
def stsb(x: dict) -> dict:
    """STS-B as text: the 0..5 score rounded to the nearest 0.2 (tf.round: halves to even), one decimal: "3.8"."""
    score = tf.as_string(tf.round(x["label"] * 5) / 5, precision=1)
    return {"inputs": _glue_inputs(x, "stsb", ("sentence1", "sentence2")), "targets": score, "idx": x["idx"]}


@seqio.map_over_dataset
def multirc(x: dict) -> dict:
    """MultiRC: "multirc question: .. answer: .. paragraph: .." without the passage's <br>/<b> markup -> False/True.

    Each example is one (question, answer) pair; the indices travel along so the metric can group by question.
    """
    inputs = _glue_inputs(x, "multirc", ("question", "answer", "paragraph"))
    inputs = tf.strings.regex_replace(inputs, "<br>", " ")
    inputs = tf.strings.regex_replace(inputs, "<(/)?b>", "")
    return {"inputs": inputs, "targets": _label_name(x["label"], ("False", "True")),
            "idx/paragraph": x["idx"]["paragraph"], "idx/question": x["idx"]["question"],
            "idx/answer": x["idx"]["answer"]}


def record(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """ReCoRD: "record query: .. entities: e1, e2 passage: .." -> an answer; one example per gold answer.

    The passage's "@highlight" lines become sentences. Test examples (no answers) get one "<unk>" example. Every
    copy keeps all gold answers and its (passage, query) index for the metric.
    """

    def one_per_answer(x: dict) -> dict:
        passage = tf.strings.regex_replace(x["passage"], r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
        passage = tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")
        entities = tf.strings.reduce_join(x["entities"], separator=", ")
        inputs = _join(["record query:", x["query"], "entities:", entities, "passage:", passage])
        targets = tf.cond(tf.size(x["answers"]) > 0, lambda: x["answers"], lambda: tf.constant(["<unk>"]))
        copies = tf.size(targets)
        return {"inputs": tf.fill([copies], inputs), "targets": targets,
                "answers": tf.broadcast_to(x["answers"], [copies, tf.size(x["answers"])]),
                "idx/passage": tf.fill([copies], x["idx"]["passage"]),
                "idx/query": tf.fill([copies], x["idx"]["query"])}

    return dataset.map(one_per_answer, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def _mark_word(text: tf.Tensor, index: tf.Tensor, word: tf.Tensor) -> tf.Tensor:
    """`text` with the space-separated word number `index` written *word*, if that word starts with `word`."""
    pattern = tf.strings.join([r"^((?:\S+\s){", tf.as_string(index), "})(", word, r")\b"])
    return tf.strings.regex_replace(text, pattern, r"\1*\2*", replace_global=False)


def wsc_simple(dataset: tf.data.Dataset, correct_referent_only: bool) -> tf.data.Dataset:
    """WSC as T5 casts it: "wsc: <text with the *pronoun* marked>" -> the candidate referent (span1_text).

    Training keeps only the examples whose candidate is the right referent (`correct_referent_only`); evaluation
    keeps all, and the postprocessor checks whether the model named the candidate. The pronoun is marked at its
    word index; if it is not there, at the next word (wsc.fixed has one example indexed one word early, which T5
    special-cases too).
    """

    def format_example(x: dict) -> dict:
        marked = _mark_word(x["text"], x["span2_index"], x["span2_text"])
        marked = tf.where(tf.equal(marked, x["text"]), _mark_word(x["text"], x["span2_index"] + 1, x["span2_text"]),
                          marked)
        return {"inputs": _join(["wsc:", marked]), "targets": x["span1_text"], "label": x["label"], "idx": x["idx"]}

    if correct_referent_only:
        dataset = dataset.filter(lambda x: tf.equal(x["label"], 1))
    return dataset.map(format_example, num_parallel_calls=tf.data.AUTOTUNE)


@seqio.map_over_dataset
def definite_pronoun_resolution_simple(x: dict) -> dict:
    """DPR in WSC's simple format: "wsc: <sentence with the first *pronoun* marked>" -> the right candidate."""
    pattern = tf.strings.join([r" (", x["pronoun"], r")( |\.|,)"])
    marked = tf.strings.regex_replace(x["sentence"], pattern, r" *\1*\2", replace_global=False)
    return {"inputs": _join(["wsc:", marked]), "targets": tf.gather(x["candidates"], x["label"])}


def _pad_punctuation(text: tf.Tensor) -> tf.Tensor:
    """T5's SQuAD tokenisation: spaces around every ASCII punctuation mark, whitespace collapsed."""
    text = tf.strings.regex_replace(text, r"([[:punct:]])", r" \1 ")
    return tf.strings.strip(tf.strings.regex_replace(text, r"\s+", " "))


@seqio.map_over_dataset
def squad(x: dict) -> dict:
    """SQuAD v1.1: "question: <q> context: <c>" -> the first answer, punctuation spaced out (T5's `squad`).

    All answers, the id and the spaced question and context travel along for the metric.
    """
    question, context = _pad_punctuation(x["question"]), _pad_punctuation(x["context"])
    answers = _pad_punctuation(x["answers"]["text"])
    return {"inputs": _join(["question:", question, "context:", context]), "targets": answers[0],
            "id": x["id"], "question": question, "context": context, "answers": answers}


# ============================================= tasks ===============================================


@dataclasses.dataclass(frozen=True)
class FinetuneTask:
    """One registered task: where its data is, how T5 formats it, and how T5 scores it."""

    name: str
    tfds_name: str
    splits: tuple[str, ...]
    preprocessor: Callable[[tf.data.Dataset], tf.data.Dataset]
    postprocess_fn: Callable | None
    metric_fns: tuple[Callable, ...]


def _class_id(label_names: Sequence[str]) -> Callable:
    return functools.partial(metrics.string_label_to_class_id, label_classes=tuple(label_names))


def _label_names(benchmark: str, config: str) -> tuple[str, ...]:
    return tuple(tfds.builder_cls(benchmark).builder_configs[config].label_classes)


GLUE_METRICS = {
    "cola": (metrics.matthews_corrcoef,),
    "sst2": (metrics.accuracy,),
    "mrpc": (metrics.f1_with_invalid, metrics.accuracy),
    "qqp": (metrics.f1_with_invalid, metrics.accuracy),
    "stsb": (metrics.pearson_corrcoef, metrics.spearman_corrcoef),
    "mnli": (metrics.accuracy,),
    "mnli_matched": (metrics.accuracy,),
    "mnli_mismatched": (metrics.accuracy,),
    "qnli": (metrics.accuracy,),
    "rte": (metrics.accuracy,),
    "wnli": (metrics.accuracy,),
}


def _glue_task(config: str) -> FinetuneTask:
    splits = {"mnli": _MNLI_SPLITS, "mnli_matched": ("validation", "test"),
              "mnli_mismatched": ("validation", "test")}.get(config, _TRAIN_VALIDATION_TEST)
    tfds_name = f"glue/{config}:{GLUE_TFDS_VERSION}"
    if config == "stsb":
        return FinetuneTask("glue_stsb_v002", tfds_name, splits, stsb, metrics.string_to_float, GLUE_METRICS[config])
    labels = _label_names("glue", config)
    benchmark = "mnli" if config.startswith("mnli") else config
    return FinetuneTask(f"glue_{config}_v002", tfds_name, splits,
                        functools.partial(glue, benchmark_name=benchmark, label_names=labels),
                        _class_id(labels), GLUE_METRICS[config])


def _super_glue_task(config: str) -> FinetuneTask:
    name, tfds_name = f"super_glue_{config}_v102", f"super_glue/{config}:{SUPER_GLUE_TFDS_VERSION}"
    if config == "multirc":
        return FinetuneTask(name, tfds_name, _TRAIN_VALIDATION_TEST, multirc, metrics.multirc_postprocess,
                            (metrics.multirc_f1_over_all_answers, metrics.multirc_exact_match))
    if config == "record":
        return FinetuneTask(name, tfds_name, _TRAIN_VALIDATION_TEST, record, metrics.record_postprocess,
                            (metrics.record_em_f1,))
    labels = _label_names("super_glue", config)
    # WiC's TFDS examples also hold the word's character offsets; T5 leaves them out of the text.
    feature_names = ("sentence1", "sentence2", "word") if config == "wic" else None
    metric_fns = (metrics.mean_multiclass_f1(3), metrics.accuracy) if config == "cb" else (metrics.accuracy,)
    preprocessor = functools.partial(glue, benchmark_name=config, label_names=labels, feature_names=feature_names)
    return FinetuneTask(name, tfds_name, _TRAIN_VALIDATION_TEST, preprocessor, _class_id(labels), metric_fns)


def _wsc_and_dpr_tasks() -> list[FinetuneTask]:
    wsc_fixed = f"super_glue/wsc.fixed:{SUPER_GLUE_TFDS_VERSION}"
    return [
        FinetuneTask("super_glue_wsc_v102_simple_train", wsc_fixed, ("train",),
                     functools.partial(wsc_simple, correct_referent_only=True), None, ()),
        FinetuneTask("super_glue_wsc_v102_simple_eval", wsc_fixed, ("validation", "test"),
                     functools.partial(wsc_simple, correct_referent_only=False), metrics.wsc_simple_postprocess,
                     (metrics.accuracy,)),
        FinetuneTask("dpr_v001_simple", DPR_TFDS_NAME, ("train", "test"), definite_pronoun_resolution_simple, None,
                     (metrics.accuracy,)),
    ]


GLUE_CONFIGS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "mnli_matched", "mnli_mismatched", "qnli", "rte",
                "wnli")
SUPER_GLUE_CONFIGS = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic")


def finetune_tasks() -> list[FinetuneTask]:
    """Every TFDS fine-tuning task, in registration order."""
    return [*map(_glue_task, GLUE_CONFIGS), *map(_super_glue_task, SUPER_GLUE_CONFIGS), *_wsc_and_dpr_tasks(),
            FinetuneTask(SQUAD, SQUAD_TFDS_NAME, ("train", "validation"), squad, metrics.qa_postprocess,
                         (metrics.squad_em_f1,))]


def _preprocessors(formatter: Callable) -> list[Callable]:
    return [formatter, seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim]


# ======================================= the offline demo =========================================

# embedded_sst2: glue/sst2's schema and format, made from the embedded corpus. A sentence is "positive" when it
# names a kind of Python object -- one of these words or its plural, any case -- which holds for about half of
# them. ~1,500 train and ~70 validation sentences (CPython 3.11's docs); inputs of ~35 (at most ~100) tokens in the
# embedded vocabulary. The rule is linear in the input tokens: logistic regression on the set of token ids scores
# ~98% on validation (see the test), so a tiny fine-tuned model has something learnable to show.
DEMO_KEYWORDS = frozenset({"object", "class", "function", "method", "module", "value", "type", "instance",
                           "attribute", "objects", "classes", "functions", "methods", "modules", "values", "types",
                           "instances", "attributes"})
_DEMO_WORDS = (5, 40)  # sentence length in words: long enough to say something, short enough for tiny models


def _is_prose(sentence: str) -> bool:
    words = sentence.split()
    alphabetic = sum(w.strip(".,;:()\"'“”").isalpha() for w in words)
    return _DEMO_WORDS[0] <= len(words) <= _DEMO_WORDS[1] and sentence.endswith(".") and alphabetic >= 0.9 * len(words)


def _sentences(documents: Sequence[str]) -> list[str]:
    """Prose sentences of the documents, in order, without duplicates (code and tables fail `_is_prose`)."""
    found = []
    for paragraph in (p for doc in documents for p in doc.split("\n\n")):
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(paragraph.split())):
            sentence = sentence.lstrip("* ")  # list bullets
            if _is_prose(sentence):
                found.append(sentence)
    return list(dict.fromkeys(found))


def demo_label(sentence: str) -> int:
    """1 ("positive") if the sentence contains a DEMO_KEYWORDS word, else 0 ("negative")."""
    return int(not DEMO_KEYWORDS.isdisjoint(re.findall(r"[a-z]+", sentence.lower())))


@functools.cache
def demo_examples(split: str) -> tuple[dict, ...]:
    """glue/sst2-schema examples {sentence, label, idx} from the embedded corpus's "train"/"validation" documents.

    Deterministic; validation drops sentences that also occur in train.
    """
    sentences = _sentences(corpus.split(split))
    if split == "validation":
        seen = set(_sentences(corpus.split("train")))
        sentences = [s for s in sentences if s not in seen]
    return tuple({"sentence": s, "label": demo_label(s), "idx": i} for i, s in enumerate(sentences))


def _demo_dataset(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # one in-memory "file"; example shuffling is seqio's job
    examples = demo_examples(split)
    return tf.data.Dataset.from_tensor_slices({
        "sentence": [e["sentence"] for e in examples],
        "label": tf.constant([e["label"] for e in examples], tf.int64),  # TFDS ClassLabel dtype
        "idx": tf.constant([e["idx"] for e in examples], tf.int32),
    })


# ========================================= registration ===========================================


def _glue_mixture_rates() -> list[tuple[str, object]]:
    rated = [f"glue_{c}_v002" for c in ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")]
    return [*((name, seqio.mixing_rate_num_examples) for name in rated),
            ("glue_mnli_matched_v002", 0.0), ("glue_mnli_mismatched_v002", 0.0)]


def _super_glue_mixture_rates() -> list[tuple[str, object]]:
    rated = [f"super_glue_{c}_v102" for c in SUPER_GLUE_CONFIGS] + ["super_glue_wsc_v102_simple_train",
                                                                    "dpr_v001_simple"]
    return [*((name, seqio.mixing_rate_num_examples) for name in rated), ("super_glue_wsc_v102_simple_eval", 0.0)]


def _all_mixture_rates() -> list[tuple[str, object]]:
    half = functools.partial(seqio.mixing_rate_num_examples, scale=0.5)
    glue_rates = [(name, half if name == "glue_rte_v002" else rate) for name, rate in _glue_mixture_rates()]
    return [*glue_rates, *_super_glue_mixture_rates(), (SQUAD, seqio.mixing_rate_num_examples)]


def _register_demo() -> None:
    sst2 = _glue_task("sst2")
    source = tasks.EmbeddedDataSource(_demo_dataset, splits=("train", "validation"),
                                      num_input_examples={s: len(demo_examples(s)) for s in ("train", "validation")})
    seqio.TaskRegistry.add(EMBEDDED_SST2, source=source, preprocessors=_preprocessors(sst2.preprocessor),
                           output_features=tasks.output_features(vocab.embedded_vocabulary()),
                           postprocess_fn=sst2.postprocess_fn, metric_fns=list(sst2.metric_fns))


def _register() -> None:
    features = tasks.output_features(vocab.t5_vocabulary())
    for task in finetune_tasks():
        if task.name not in seqio.TaskRegistry.names():
            seqio.TaskRegistry.add(
                task.name, source=seqio.TfdsDataSource(tfds_name=task.tfds_name, splits=task.splits),
                preprocessors=_preprocessors(task.preprocessor), output_features=features,
                postprocess_fn=task.postprocess_fn, metric_fns=list(task.metric_fns))
    if EMBEDDED_SST2 not in seqio.TaskRegistry.names():
        _register_demo()
    for name, rates in ((GLUE_MIXTURE, _glue_mixture_rates()), (SUPER_GLUE_MIXTURE, _super_glue_mixture_rates()),
                        (ALL_MIXTURE, _all_mixture_rates())):
        if name not in seqio.MixtureRegistry.names():
            seqio.MixtureRegistry.add(name, rates)


register_finetune_tasks = functools.cache(_register)
