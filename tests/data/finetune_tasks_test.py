import numpy as np
import pytest
import seqio
import sklearn.linear_model
import tensorflow as tf
import tensorflow_datasets as tfds

from t5scale.data import finetune_tasks as ft
from t5scale.data import registry, vocab

LENGTHS = {"inputs": 64, "targets": 16}
OFFLINE = "_offline"  # suffix of the copies with the embedded vocabulary
TASKS = {task.name: task for task in ft.finetune_tasks()}


@pytest.fixture
def no_tfds_split_sizes(monkeypatch):
    """TFDS's mock data has no split sizes, so seqio's size lookup is off."""
    monkeypatch.setattr(seqio.TfdsDataSource, "num_input_examples", lambda self, split: None)


def offline_copy(name):
    return registry.get_task_or_mixture(registry.copy_with_vocabulary(name, vocab.embedded_vocabulary(), OFFLINE))


def first_examples(task, split, count=2):
    return list(task.get_dataset(LENGTHS, split=split, shuffle=False, seed=0).take(count).as_numpy_iterator())


# ================================ the real TFDS sources, mocked ===================================


def input_prefix(name):
    if name.startswith(("super_glue_wsc", "dpr")):
        return "wsc: "
    if name == ft.SQUAD:
        return "question: "
    benchmark = name.removeprefix("super_glue_").removeprefix("glue_").split("_")[0]
    return f"{benchmark} "


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_reads_its_tfds_dataset_into_tokens_ending_in_eos(name, no_tfds_split_sizes):
    task, spec = offline_copy(name), TASKS[name]
    assert task.source.tfds_dataset.name == spec.tfds_name
    assert task.output_features["targets"].vocabulary == vocab.embedded_vocabulary()
    with tfds.testing.mock_data(num_examples=10):
        examples = first_examples(task, spec.splits[0])
    assert len(examples) == 2
    for example in examples:
        assert example["inputs"][-1] == 1 and example["targets"][-1] == 1
        assert len(example["inputs"]) > 2 and len(example["targets"]) > 1
        assert example["inputs_pretokenized"].decode().startswith(input_prefix(name))


def test_tasks_use_t5s_tfds_names_and_versions():
    assert TASKS["glue_cola_v002"].tfds_name == "glue/cola:1.0.0"
    assert TASKS["glue_mnli_matched_v002"].tfds_name == "glue/mnli_matched:1.0.0"
    assert TASKS["super_glue_record_v102"].tfds_name == "super_glue/record:1.0.2"
    assert TASKS["super_glue_wsc_v102_simple_eval"].tfds_name == "super_glue/wsc.fixed:1.0.2"
    assert TASKS[ft.SQUAD].tfds_name == "squad/v1.1:3.0.0"
    registered = registry.get_task_or_mixture("glue_cola_v002")
    assert registered.output_features["targets"].vocabulary.sentencepiece_model_file == vocab.T5_VOCAB_PATH


def test_mnli_reads_its_matched_and_mismatched_validation_splits(no_tfds_split_sizes):
    mnli = offline_copy("glue_mnli_v002")
    assert "validation" not in mnli.splits
    with tfds.testing.mock_data(num_examples=10):
        for split in ("validation_matched", "validation_mismatched"):
            examples = first_examples(mnli, split)
            assert len(examples) == 2 and all(e["targets"][-1] == 1 for e in examples)
            assert examples[0]["inputs_pretokenized"].startswith(b"mnli hypothesis: ")
        with pytest.raises(KeyError, match="validation"):
            first_examples(mnli, "validation")
    assert registry.get_task_or_mixture("glue_mnli_matched_v002").splits == ("validation", "test")


# =================================== T5's text formats ============================================


def tensor(key, value):
    """A feature with TFDS's dtype: ClassLabel labels int64, STS-B's score float32, every other number int32."""
    if isinstance(value, dict):
        return {k: tensor(k, v) for k, v in value.items()}
    if key == "label":
        return tf.constant(value, tf.float32 if isinstance(value, float) else tf.int64)
    return tf.constant(value, tf.int32) if np.asarray(value).dtype.kind == "i" else tf.constant(value)


def formatted(name, **features):
    dataset = TASKS[name].preprocessor(tf.data.Dataset.from_tensors(tensor("", features)))
    return [{k: v.decode() if isinstance(v, bytes) else v for k, v in ex.items()} for ex in dataset.as_numpy_iterator()]


def text_pairs(examples):
    return [(ex["inputs"], ex["targets"]) for ex in examples]


@pytest.mark.parametrize("name, features, inputs, targets", [
    ("glue_cola_v002", dict(sentence="Our friends won't buy this analysis.", label=1, idx=0),
     "cola sentence: Our friends won't buy this analysis.", "acceptable"),
    ("glue_sst2_v002", dict(sentence="it 's a charming journey .", label=-1, idx=5),  # a test example
     "sst2 sentence: it 's a charming journey .", "<unk>"),
    ("glue_mrpc_v002", dict(sentence1="He left.", sentence2="She stayed.", label=0, idx=1),
     "mrpc sentence1: He left. sentence2: She stayed.", "not_equivalent"),
    ("glue_qqp_v002", dict(question1="Why do I easily get bored of my friends?",
                           question2="Why do I get bored of friends so quickly?", label=1, idx=10),
     "qqp question1: Why do I easily get bored of my friends? question2: Why do I get bored of friends so quickly?",
     "duplicate"),
    ("glue_mnli_v002", dict(premise="A man is eating.", hypothesis="Nobody eats.", label=2, idx=3),
     "mnli hypothesis: Nobody eats. premise: A man is eating.", "contradiction"),
    ("glue_mnli_mismatched_v002", dict(premise="A man is eating.", hypothesis="He is hungry.", label=1, idx=3),
     "mnli hypothesis: He is hungry. premise: A man is eating.", "neutral"),
    ("glue_qnli_v002", dict(question="Who ate?", sentence="The cat slept.", label=1, idx=2),
     "qnli question: Who ate? sentence: The cat slept.", "not_entailment"),
    ("glue_rte_v002", dict(sentence1="Paris is in France.", sentence2="Paris is French.", label=0, idx=4),
     "rte sentence1: Paris is in France. sentence2: Paris is French.", "entailment"),
    ("glue_wnli_v002", dict(sentence1="The fish ate the worm. It was tasty.", sentence2="The worm was tasty.",
                            label=1, idx=6),
     "wnli sentence1: The fish ate the worm. It was tasty. sentence2: The worm was tasty.", "entailment"),
    ("super_glue_boolq_v102", dict(question="is the sky blue", passage="The sky is blue.", label=1, idx=0),
     "boolq passage: The sky is blue. question: is the sky blue", "True"),
    ("super_glue_cb_v102", dict(premise="It may rain.", hypothesis="It rains.", label=2, idx=0),
     "cb hypothesis: It rains. premise: It may rain.", "neutral"),
    ("super_glue_copa_v102", dict(premise="My body cast a shadow over the grass.", choice1="The sun was rising.",
                                  choice2="The grass was cut.", question="cause", label=0, idx=0),
     "copa choice1: The sun was rising. choice2: The grass was cut. premise: My body cast a shadow over the grass. "
     "question: cause", "choice1"),
    ("super_glue_rte_v102", dict(premise="Paris is in France.", hypothesis="Paris is German.", label=1, idx=0),
     "rte hypothesis: Paris is German. premise: Paris is in France.", "not_entailment"),
    ("super_glue_wic_v102", dict(word="place", sentence1="Do you want to come over to my place later?",
                                 sentence2="A political system with no place for the less prominent groups.",
                                 start1=31, end1=36, start2=27, end2=32, label=0, idx=0),
     "wic sentence1: Do you want to come over to my place later? sentence2: A political system with no place for "
     "the less prominent groups. word: place", "False"),
    ("dpr_v001_simple", dict(sentence="Bob asked Tom if he can lend some money.", pronoun="he",
                             candidates=["Bob", "Tom"], label=1),
     "wsc: Bob asked Tom if *he* can lend some money.", "Tom"),
])
def test_glue_style_tasks_write_t5s_text(name, features, inputs, targets):
    examples = formatted(name, **features)
    assert text_pairs(examples) == [(inputs, targets)]
    if "idx" in features:
        assert examples[0]["idx"] == features["idx"]


@pytest.mark.parametrize("score, target", [(3.75, "3.8"), (2.31, "2.4"), (0.0, "0.0"), (5.0, "5.0"), (1.0, "1.0")])
def test_stsb_target_is_the_score_rounded_to_a_fifth(score, target):
    examples = formatted("glue_stsb_v002", sentence1="A plane takes off.", sentence2="An air plane is taking off.",
                         label=score, idx=0)
    assert text_pairs(examples) == [("stsb sentence1: A plane takes off. sentence2: An air plane is taking off.",
                                     target)]


def test_multirc_orders_question_answer_paragraph_drops_html_and_keeps_the_indices():
    [example] = formatted("super_glue_multirc_v102", question="Where did Tom go?", answer="home",
                          paragraph="<b>Sent 1: </b>Tom went home.<br><b>Sent 2: </b>He slept.<br>", label=1,
                          idx={"paragraph": 2, "question": 7, "answer": 1})
    assert example["inputs"] == ("multirc question: Where did Tom go? answer: home paragraph: Sent 1: Tom went home. "
                                 "Sent 2: He slept. ")
    assert example["targets"] == "True"
    assert (example["idx/paragraph"], example["idx/question"], example["idx/answer"]) == (2, 7, 1)


def test_record_makes_one_example_per_answer_and_one_unk_example_without_answers():
    features = dict(query="A @placeholder is a bird.", entities=["penguin", "potato", "pigeon"],
                    passage="Birds fly.\n@highlight\nPenguins swim\n@highlight\nPigeons walk",
                    idx={"passage": 4, "query": 9})
    examples = formatted("super_glue_record_v102", answers=["penguin", "pigeon"], **features)
    inputs = ("record query: A @placeholder is a bird. entities: penguin, potato, pigeon passage: Birds fly. "
              "Penguins swim. Pigeons walk")
    assert text_pairs(examples) == [(inputs, "penguin"), (inputs, "pigeon")]
    for example in examples:
        assert list(example["answers"]) == [b"penguin", b"pigeon"]
        assert (example["idx/passage"], example["idx/query"]) == (4, 9)
    test_examples = formatted("super_glue_record_v102", answers=tf.constant([], tf.string), **features)
    assert text_pairs(test_examples) == [(inputs, "<unk>")]


WSC = dict(text="Mark told Pete many lies about himself , which Pete included in his book .", span1_index=2,
           span2_index=12, span1_text="Pete", span2_text="his")


def test_wsc_marks_the_pronoun_and_targets_the_candidate_training_only_on_right_candidates():
    inputs = "wsc: Mark told Pete many lies about himself , which Pete included in *his* book ."
    assert text_pairs(formatted("super_glue_wsc_v102_simple_eval", label=0, idx=0, **WSC)) == [(inputs, "Pete")]
    assert formatted("super_glue_wsc_v102_simple_eval", label=0, idx=0, **WSC)[0]["label"] == 0
    assert text_pairs(formatted("super_glue_wsc_v102_simple_train", label=1, idx=0, **WSC)) == [(inputs, "Pete")]
    assert formatted("super_glue_wsc_v102_simple_train", label=0, idx=0, **WSC) == []


def test_wsc_finds_a_pronoun_indexed_one_word_early_and_keeps_attached_punctuation():
    early = dict(WSC, span2_index=11)
    assert formatted("super_glue_wsc_v102_simple_eval", label=1, idx=0, **early)[0]["inputs"] == (
        "wsc: Mark told Pete many lies about himself , which Pete included in *his* book .")
    quoted = dict(text='John laughed. "Good for him," he said.', span1_index=0, span2_index=4, span1_text="John",
                  span2_text="him")
    assert formatted("super_glue_wsc_v102_simple_eval", label=1, idx=0, **quoted)[0]["inputs"] == (
        'wsc: John laughed. "Good for *him*," he said.')


def test_squad_spaces_punctuation_and_targets_the_first_answer():
    [example] = formatted(ft.SQUAD, id="5733be", title="Notre_Dame", question="Who built it (first)?",
                          context="It was built by  Sorin, in 1842.",
                          answers={"text": ["Sorin", "Father Sorin."], "answer_start": [16, 9]})
    assert example["inputs"] == "question: Who built it ( first ) ? context: It was built by Sorin , in 1842 ."
    assert example["targets"] == "Sorin"
    assert list(example["answers"]) == [b"Sorin", b"Father Sorin ."]
    assert example["id"] == "5733be"


# ======================================= postprocess + metrics ====================================


# (targets, predictions) in each metric's input type; the rest take class ids
EXAMPLE_PAIRS = {
    "super_glue_multirc_v102": ([{"value": 1, "group": 0}], [{"value": 1}]),
    "super_glue_record_v102": ([{"value": ["a"], "group": (0, 0)}], [{"value": "a"}]),
    ft.SQUAD: ([["a"]], ["a"]),
}


def test_tasks_score_with_t5s_metrics():
    names = {name: [fn(*EXAMPLE_PAIRS.get(name, ([0, 1], [0, 1]))).keys() for fn in spec.metric_fns]
             for name, spec in TASKS.items()}
    assert names["glue_cola_v002"] == [{"matthews_corrcoef"}]
    assert names["glue_mrpc_v002"] == [{"f1"}, {"accuracy"}]
    assert names["glue_stsb_v002"] == [{"pearson_corrcoef"}, {"spearman_corrcoef"}]
    assert names["super_glue_cb_v102"] == [{"mean_3class_f1"}, {"accuracy"}]
    assert names["super_glue_multirc_v102"] == [{"f1"}, {"exact_match"}]
    assert names["super_glue_record_v102"] == [{"em", "f1"}]
    assert names[ft.SQUAD] == [{"em", "f1"}]
    assert names["super_glue_wsc_v102_simple_train"] == []
    assert all(names[n] == [{"accuracy"}] for n in ("glue_sst2_v002", "super_glue_wic_v102", "dpr_v001_simple"))


def perfect_predictions(dataset, model_feature_shapes=None):
    return [(index, features["decoder_target_tokens"]) for index, features in dataset.as_numpy_iterator()]


def evaluate(name):
    evaluator = seqio.Evaluator(name, feature_converter=seqio.EncDecFeatureConverter(pack=False),
                                eval_split="validation", num_examples=20, async_compute_metrics=False)
    all_metrics, _ = evaluator.evaluate(compute_metrics=True, predict_fn=perfect_predictions)
    return {k: float(getattr(v, "value", v)) for k, v in all_metrics.result()[name].items()}


def test_seqio_evaluator_scores_perfect_predictions_at_100(no_tfds_split_sizes):
    assert evaluate(ft.EMBEDDED_SST2) == {"accuracy": 100.0}
    with tfds.testing.mock_data(num_examples=20):
        def offline(name):
            return registry.copy_with_vocabulary(name, vocab.embedded_vocabulary(), OFFLINE)

        assert evaluate(offline(ft.SQUAD)) == {"em": 100.0, "f1": 100.0}
        assert evaluate(offline("super_glue_record_v102")) == {"em": 100.0, "f1": 100.0}
        assert evaluate(offline("super_glue_multirc_v102")) == {"f1": 100.0, "exact_match": 100.0}
        # WSC scores whether the model named the candidate, against whether the candidate is the referent.
        wsc = registry.copy_with_vocabulary("super_glue_wsc_v102_simple_eval", vocab.embedded_vocabulary(), OFFLINE)
        labels = [e["label"] for e in first_examples(registry.get_task_or_mixture(wsc), "validation", count=20)]
        assert evaluate(wsc) == {"accuracy": pytest.approx(100 * np.mean(np.array(labels) == 1))}
        assert 0 < np.mean(labels) < 1


# ============================================ mixtures ============================================

GLUE = {"glue_cola_v002", "glue_sst2_v002", "glue_mrpc_v002", "glue_qqp_v002", "glue_stsb_v002", "glue_mnli_v002",
        "glue_qnli_v002", "glue_rte_v002", "glue_mnli_matched_v002", "glue_mnli_mismatched_v002"}
SUPER_GLUE = {"super_glue_boolq_v102", "super_glue_cb_v102", "super_glue_copa_v102", "super_glue_multirc_v102",
              "super_glue_record_v102", "super_glue_rte_v102", "super_glue_wic_v102",
              "super_glue_wsc_v102_simple_train", "super_glue_wsc_v102_simple_eval", "dpr_v001_simple"}


def task_names(mixture_name):
    return {task.name for task in registry.get_task_or_mixture(mixture_name).tasks}


def test_mixtures_hold_t5s_tasks():
    assert task_names(ft.GLUE_MIXTURE) == GLUE  # T5 trains no WNLI
    assert task_names(ft.SUPER_GLUE_MIXTURE) == SUPER_GLUE
    assert task_names(ft.ALL_MIXTURE) == GLUE | SUPER_GLUE | {ft.SQUAD}


def test_mixture_rates_are_training_set_sizes_and_zero_for_evaluation_only_tasks(monkeypatch):
    sizes = {"glue/cola:1.0.0": 8_551, "glue/rte:1.0.0": 2_490, "super_glue/rte:1.0.2": 2_490,
             "squad/v1.1:3.0.0": 87_599}
    monkeypatch.setattr(seqio.TfdsDataSource, "num_input_examples",
                        lambda self, split: sizes[self.tfds_dataset.name] if split == "train" else 1)
    glue, everything = registry.get_task_or_mixture(ft.GLUE_MIXTURE), registry.get_task_or_mixture(ft.ALL_MIXTURE)
    rate = lambda mixture, name: mixture.get_rate(seqio.TaskRegistry.get(name))
    assert rate(glue, "glue_cola_v002") == 8_551
    assert rate(glue, "glue_rte_v002") == 2_490
    assert rate(glue, "glue_mnli_matched_v002") == 0.0
    assert rate(everything, "glue_rte_v002") == 2_490 / 2  # the same data as SuperGLUE RTE
    assert rate(everything, "super_glue_rte_v102") == 2_490
    assert rate(everything, ft.SQUAD) == 87_599
    assert rate(everything, "super_glue_wsc_v102_simple_eval") == 0.0


# ======================================== vocabulary copies ========================================


def test_copy_with_vocabulary_keeps_everything_but_the_vocabulary_and_is_idempotent():
    embedded = vocab.embedded_vocabulary()
    name = registry.copy_with_vocabulary("glue_stsb_v002", embedded, OFFLINE)
    assert name == "glue_stsb_v002" + OFFLINE
    assert registry.copy_with_vocabulary("glue_stsb_v002", embedded, OFFLINE) == name
    original, copy = registry.get_task_or_mixture("glue_stsb_v002"), registry.get_task_or_mixture(name)
    assert copy.source is original.source and copy.preprocessors == original.preprocessors
    assert copy.postprocessor is original.postprocessor and copy.metric_fns == original.metric_fns
    assert all(f.vocabulary == embedded and f.add_eos for f in copy.output_features.values())
    assert copy.output_features["inputs"].required is False


def test_copy_of_a_mixture_copies_its_subtasks_with_their_rates():
    name = registry.copy_with_vocabulary(ft.SUPER_GLUE_MIXTURE, vocab.embedded_vocabulary(), OFFLINE)
    original, copy = registry.get_task_or_mixture(ft.SUPER_GLUE_MIXTURE), registry.get_task_or_mixture(name)
    assert task_names(name) == {n + OFFLINE for n in SUPER_GLUE}
    assert copy.rate_per_task_name == {n + OFFLINE: r for n, r in original.rate_per_task_name.items()}
    assert all(t.output_features["targets"].vocabulary == vocab.embedded_vocabulary() for t in copy.tasks)


# ========================================== the demo task ==========================================


def test_demo_examples_have_glue_sst2s_schema():
    sst2 = tfds.builder("glue/sst2:1.0.0", try_gcs=False).info.features
    dataset = registry.get_task_or_mixture(ft.EMBEDDED_SST2).source.get_dataset("train")
    assert {k: spec.dtype for k, spec in dataset.element_spec.items()} == {k: sst2[k].tf_dtype for k in sst2.keys()}


def test_demo_labels_are_the_keyword_rule_and_roughly_balanced():
    assert [ft.demo_label(s) for s in ("Modules are objects.", "The VALUE is returned.", "Nothing here counts.",
                                       "Classification is not a keyword.")] == [1, 1, 0, 0]
    for split in ("train", "validation"):
        examples = ft.demo_examples(split)
        assert all(e["label"] == ft.demo_label(e["sentence"]) for e in examples)
        assert [e["idx"] for e in examples] == list(range(len(examples)))
        assert 0.35 <= np.mean([e["label"] for e in examples]) <= 0.65, split
    train = {e["sentence"] for e in ft.demo_examples("train")}
    assert len(train) > 1000 and len(ft.demo_examples("validation")) > 50
    assert train.isdisjoint(e["sentence"] for e in ft.demo_examples("validation"))


def test_demo_task_is_formatted_and_scored_like_sst2():
    demo, sst2 = registry.get_task_or_mixture(ft.EMBEDDED_SST2), registry.get_task_or_mixture("glue_sst2_v002")
    assert demo.preprocessors[0].func is sst2.preprocessors[0].func
    assert demo.preprocessors[0].keywords == sst2.preprocessors[0].keywords
    assert demo.postprocessor.keywords == sst2.postprocessor.keywords and demo.metric_fns == sst2.metric_fns
    [first] = first_examples(demo, "validation", count=1)
    source = ft.demo_examples("validation")[0]
    assert first["inputs_pretokenized"].decode() == "sst2 sentence: " + source["sentence"]
    assert first["targets_pretokenized"].decode() == ("negative", "positive")[source["label"]]


def bag_of_tokens(task, split):
    examples = list(task.get_dataset(None, split=split, shuffle=False).as_numpy_iterator())
    size = task.output_features["inputs"].vocabulary.vocab_size
    features = np.stack([np.bincount(e["inputs"], minlength=size) > 0 for e in examples])
    return features, np.array([e["targets_pretokenized"] == b"positive" for e in examples])


def test_demo_labels_are_learnable_from_the_input_tokens():
    demo = registry.get_task_or_mixture(ft.EMBEDDED_SST2)
    classifier = sklearn.linear_model.LogisticRegression(C=10.0, max_iter=1000)
    classifier.fit(*bag_of_tokens(demo, "train"))
    assert classifier.score(*bag_of_tokens(demo, "validation")) >= 0.9
