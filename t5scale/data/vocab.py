"""Vocabularies: T5's sentencepiece model by its gs:// path, and one trained in seconds on the embedded corpus.

Both use T5's id layout: pad 0, EOS 1, UNK 2, then pieces, then 100 sentinels counting down from the top
(`<extra_id_0>` = vocab_size - 1).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import tempfile

import sentencepiece as spm
import seqio

from t5scale.cache import cache_dir
from t5scale.data import corpus

T5_VOCAB_PATH = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
EXTRA_IDS = 100
EMBEDDED_PIECES = 2000  # small enough for CPU demos; + 100 sentinels
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def t5_vocab_path() -> str:
    """T5's sentencepiece model: `T5_VOCAB_PATH` (e.g. a local copy, for machines without gs:// access) or its
    public gs:// path."""
    return os.environ.get("T5_VOCAB_PATH") or T5_VOCAB_PATH


def t5_vocabulary() -> seqio.SentencePieceVocabulary:
    """T5's default vocabulary: 32000 pieces + 100 sentinels = 32100 ids (the model pads to 32128)."""
    return seqio.SentencePieceVocabulary(t5_vocab_path(), extra_ids=EXTRA_IDS)


def embedded_vocabulary(pieces: int = EMBEDDED_PIECES) -> seqio.SentencePieceVocabulary:
    """A unigram sentencepiece model of the embedded training documents, with EXTRA_IDS sentinels.

    Trained once and cached under `cache_dir()`, keyed by a hash of the corpus and every setting, so a changed
    corpus or setting trains a new model instead of reusing a stale one.
    """
    settings = dict(vocab_size=pieces, model_type="unigram", pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID,
                    bos_id=-1, character_coverage=1.0, num_threads=1, seed_sentencepiece_size=200_000,
                    input_sentence_size=0, shuffle_input_sentence=False, max_sentence_length=8192)
    text = corpus.split("train")
    key = hashlib.sha256(json.dumps([settings, spm.__version__, text]).encode()).hexdigest()[:16]
    path = cache_dir() / "vocab" / f"embedded-{pieces}-{key}.model"
    if not path.exists():
        _train(text, settings, path)
    return seqio.SentencePieceVocabulary(str(path), extra_ids=EXTRA_IDS)


def _train(documents: tuple[str, ...], settings: dict, path: pathlib.Path) -> None:
    model = io.BytesIO()
    lines = (line for doc in documents for line in doc.splitlines() if line.strip())
    spm.SentencePieceTrainer.train(sentence_iterator=lines, model_writer=model, minloglevel=2, **settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: a crash or a concurrent process never leaves a half-written model at `path`.
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
        tmp.write(model.getvalue())
    os.replace(tmp.name, path)
