"""LoadedModel.generate's sampling: the settings reach `decoding.sample`, each text keeps its index as its row id
whatever the batch size, and bad settings are one error. (Greedy, beam, score and encode: release_test.py.)"""

import numpy as np
import pytest

from t5scale.data.vocab import embedded_vocabulary
from t5scale.model import decoding
from t5scale.release.loaded import LoadedModel
from tests.release.runs import TEXTS, VOCAB_SIZE
from tests.testing import random_model, tiny_config

FIVE = [*TEXTS, "a second line", "sst2 sentence: not a fine film"]


@pytest.fixture(scope="module")
def loaded():
    model = random_model(tiny_config(vocab_size=VOCAB_SIZE, name="test-tiny-embedded"), seed=3)
    return LoadedModel(model, embedded_vocabulary(), source="memory", kind="checkpoint")


def test_sampled_texts_are_the_sampled_tokens_of_each_text_by_its_index(loaded):
    settings = dict(temperature=0.9, top_k=50, top_p=0.95, seed=4)
    sampled = loaded.generate(FIVE, max_length=6, **settings)
    assert loaded.generate(FIVE, max_length=6, batch_size=2, **settings) == sampled  # row ids: indices in FIVE
    tokens = loaded._padded(loaded.tokenize(FIVE), 8)  # generate's one padded batch of 8 rows
    expected, _ = decoding.sample(loaded.nnx_model, tokens, 6, seed=4, temperature=0.9, top_k=50, top_p=0.95)
    assert sampled == [loaded.detokenize(row) for row in np.asarray(expected)[:5]]
    other_seed = loaded.generate(FIVE, max_length=6, **{**settings, "seed": 5})
    assert all(a != b for a, b in zip(other_seed, sampled))
    assert loaded.generate(FIVE, max_length=6, temperature=0.0, top_k=50, seed=4) == loaded.generate(FIVE,
                                                                                                   max_length=6)


@pytest.mark.parametrize("kwargs, message", [(dict(top_p=0.0), "^top_p must"),
                                             (dict(temperature=-1.0), "^temperature must"),
                                             (dict(temperature=0.5, beam_size=4), "beam_size must be 1")])
def test_bad_sampling_settings_are_one_error(loaded, kwargs, message):
    with pytest.raises(ValueError, match=message):
        loaded.generate(TEXTS, max_length=4, **kwargs)
