"""The model and vocabulary `t5scale infer` decodes with, from whatever `t5scale.load` reads: a MODEL_DIR or its
checkpoint_<step>, a compressed checkpoint, a release, a Hugging Face T5 folder.

With a mesh, a t5scale checkpoint is read shard by shard onto it, each host the shards its devices hold (as
`t5scale eval` loads it); a release or a Hugging Face folder is read whole and then placed on the mesh. A
compressed checkpoint or release is dequantized to float32, unless `narrow` keeps the weights narrow
(`t5scale.compress.inference`), which runs on one device.
"""

from __future__ import annotations

import jax


def load_for_inference(path: str, *, mesh=None, rules: str = "t5x", vocabulary: str | None = None,
                       need_vocabulary: bool = True, narrow: str | None = None):
    """(T5, seqio vocabulary or None, step or None). The vocabulary: `vocabulary` (a sentencepiece model), else the
    one the checkpoint carries or its run's task names; None when not `need_vocabulary` and none was given."""
    from t5scale import storage

    storage.check_reachable([storage.Remote("CHECKPOINT_PATH", path, "dir")])
    if narrow is not None and (mesh is not None or jax.process_count() > 1):
        raise ValueError(f"Weights held {narrow} (--narrow) decode on one device of one process; drop --narrow to "
                         "decode on the mesh.")
    if not _is_t5scale_checkpoint(path):  # a release, a Hugging Face folder, or t5scale.load's error
        import t5scale
        from t5scale.train.partitioning import place_on_mesh

        loaded = t5scale.load(path, vocabulary=vocabulary)
        model, vocab, step = loaded.nnx_model, loaded.vocabulary, None
        if mesh is not None:
            place_on_mesh(model, mesh, rules)
        if vocab is None and need_vocabulary:
            raise ValueError(f"{path} carries no vocabulary; pass --vocabulary PATH to its sentencepiece model.")
    else:
        from t5scale.weights.load import load_any

        model, _, step = load_any(path, mesh=mesh, rules=rules)
        vocab = _checkpoint_vocabulary(path, vocabulary) if need_vocabulary or vocabulary else None
    if narrow is not None:
        from t5scale.compress.inference import keep_weights_narrow

        model = keep_weights_narrow(model, narrow)
    return model, vocab, step


def _is_t5scale_checkpoint(path: str) -> bool:
    from t5scale.train.checkpoints import resolve_checkpoint
    from t5scale.weights.load import is_compressed

    try:
        return is_compressed(path) or bool(resolve_checkpoint(path))
    except FileNotFoundError:
        return False


def _checkpoint_vocabulary(path: str, given: str | None):
    """The vocabulary of a MODEL_DIR or compressed checkpoint: `given`, else the one its run's task read."""
    import seqio

    from t5scale.release import bundle

    vocab_path, extra_ids = bundle.vocabulary_source(bundle.resolve_source(path), given)
    bundle.check_vocabulary_reachable(vocab_path)
    return seqio.SentencePieceVocabulary(vocab_path, extra_ids=extra_ids)
