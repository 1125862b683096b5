"""The files of a release, built in a local staging folder from a checkpoint (local or gs://).

    params.safetensors     flat, layout-independent params (`layout.flat_params` names), float32 or bfloat16; or a
                           compressed checkpoint's own params.safetensors, copied as it is
    config.json            {"model": ModelConfig fields, "vocabulary": {"file", "extra_ids"}, "params_dtype", "step",
                           "compression": the compressed checkpoint's compression.json, or null}
    sentencepiece.model    the vocabulary the run's task read (T5's or the embedded one), byte for byte
    metrics.json           the eval metrics, when there are any
    training/              the released run's records, as it wrote them: config.json, config.gin (for the record:
    warm_start/            never parsed), metrics.jsonl, eval.jsonl, train_end.json; warm_start/ the same for the
                           run it was warm-started from (INITIAL_CHECKPOINT_PATH), when that is reachable
    README.md              the model card (t5scale.release.card)
The manifest is not made here: publishing writes it last. A release has no compression.json of its own: that file
marks a complete compressed checkpoint, and a half-published release must never look like one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib

import numpy as np
from etils import epath
from safetensors.numpy import save_file

from t5scale import storage
from t5scale.config import ModelConfig
from t5scale.release import card

PARAMS, CONFIG, VOCAB, METRICS, CARD = "params.safetensors", "config.json", "sentencepiece.model", "metrics.json", \
    "README.md"
COMPRESSION = "compression.json"  # in a compressed checkpoint (t5scale.weights.load)
RECORDS = ("config.json", "config.gin", "metrics.jsonl", "eval.jsonl", "train_end.json")
TRAINING, WARM_START = "training", "warm_start"
DTYPES = ("float32", "bfloat16")
T5_EXTRA_IDS = 100


def is_bundle_file(name: str) -> bool:
    """Whether `name` (relative to a release folder) is a file some release has: what --overwrite may replace."""
    from t5scale.release.manifest import MANIFEST

    folder, _, base = name.rpartition("/")
    if folder:
        return folder in (TRAINING, WARM_START) and base in RECORDS
    return name in (PARAMS, CONFIG, VOCAB, METRICS, CARD, MANIFEST)


@dataclasses.dataclass(frozen=True)
class Source:
    """What a release is made from."""

    path: str  # the checkpoint as resolved: MODEL_DIR/checkpoint_<N>, or a compressed folder
    cfg: ModelConfig
    step: int
    run_dir: epath.Path | None  # the MODEL_DIR whose config.json describes the run (None: unknown)
    compression: dict | None  # compression.json of a compressed checkpoint


def resolve_source(checkpoint: str) -> Source:
    from t5scale.train.checkpoints import resolve_checkpoint
    from t5scale.weights.load import is_compressed

    if is_compressed(checkpoint):
        folder = epath.Path(checkpoint)
        info = json.loads((folder / COMPRESSION).read_text())
        cfg = ModelConfig.from_dict(json.loads((folder / CONFIG).read_text())["model"])
        try:
            run_dir = resolve_checkpoint(info["source"]).parent
        except (FileNotFoundError, OSError):
            logging.warning("The source %s of compressed checkpoint %s is gone: the release will carry no run "
                            "records.", info["source"], folder)
            run_dir = None
        return Source(str(folder), cfg, int(info["step"]), run_dir, info)
    path = resolve_checkpoint(checkpoint, "CHECKPOINT")
    config_path = path.parent / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} is missing: cannot tell the shape of the model in {path}.")
    cfg = ModelConfig.from_dict(json.loads(config_path.read_text())["model"])
    return Source(str(path), cfg, int(path.name.removeprefix("checkpoint_")), path.parent, None)


def run_config(run_dir: epath.Path | None) -> dict:
    path = run_dir / "config.json" if run_dir is not None else None
    return json.loads(path.read_text()) if path is not None and path.exists() else {}


def vocabulary_source(source: Source, given: str | None) -> tuple[str, int]:
    """(path, extra_ids) of the vocabulary to bundle: `given`, else the one the run's task read."""
    if given:
        return given, T5_EXTRA_IDS
    task_name = run_config(source.run_dir).get("data", {}).get("mixture_or_task_name")
    if not task_name:
        raise ValueError(f"Cannot tell which vocabulary {source.path} was trained with (no task in its run's "
                         "config.json); pass --vocabulary PATH to its sentencepiece model.")
    from t5scale.data.registry import get_task_or_mixture

    try:
        provider = get_task_or_mixture(task_name)
    except ValueError as error:
        raise ValueError(f"The vocabulary of {source.path} comes from task {task_name!r}, which this process does "
                         f"not know ({str(error).split('.')[0]}); pass --vocabulary PATH.") from None
    task = provider.tasks[0] if hasattr(provider, "tasks") else provider
    vocabulary = task.output_features["targets"].vocabulary
    path = getattr(vocabulary, "sentencepiece_model_file", None)
    if path is None:
        raise ValueError(f"Task {task_name!r} has a {type(vocabulary).__name__}, not a sentencepiece model; pass "
                         "--vocabulary PATH.")
    return path, vocabulary.extra_ids


def check_vocabulary_reachable(path: str) -> None:
    """One line, before anything is written, when the vocabulary (e.g. T5's, on gs://t5-data) cannot be read."""
    storage.check_reachable([storage.Remote("the vocabulary", path, "file",
                                            "copy it to this machine and pass --vocabulary /local/copy")])
    if not epath.Path(path).exists():
        raise FileNotFoundError(f"The vocabulary {path} does not exist; pass --vocabulary PATH to a copy.")


def write_params(source: Source, staging: pathlib.Path, dtype: str) -> None:
    if source.compression is not None:
        if dtype != "float32":
            raise ValueError(f"{source.path} is a compressed checkpoint: it is released as compressed, not as "
                             f"{dtype}; drop --dtype.")
        (staging / PARAMS).write_bytes((epath.Path(source.path) / PARAMS).read_bytes())
        return
    import ml_dtypes

    from t5scale.model.layout import flat_params
    from t5scale.train.checkpoints import load_model

    model, _ = load_model(source.path)
    as_dtype = np.float32 if dtype == "float32" else ml_dtypes.bfloat16
    save_file({name: np.ascontiguousarray(value.astype(as_dtype)) for name, value in flat_params(model).items()},
              str(staging / PARAMS), metadata={"format": "t5scale-flat-params"})


def copy_records(run_dir: epath.Path | None, staging: pathlib.Path, folder: str) -> list[str]:
    if run_dir is None:
        return []
    copied = []
    for name in RECORDS:
        if (run_dir / name).exists():
            (staging / folder).mkdir(exist_ok=True)
            (staging / folder / name).write_bytes((run_dir / name).read_bytes())
            copied.append(f"{folder}/{name}")
    return copied


def warm_start_dir(run: dict) -> epath.Path | None:
    """The MODEL_DIR a run was warm-started from, if it can still be read."""
    initial = (run.get("train") or {}).get("initial_checkpoint_path")
    if not initial:
        return None
    path = epath.Path(initial)
    try:
        folder = path.parent if path.name.startswith("checkpoint_") else path
        return folder if (folder / "config.json").exists() else None
    except OSError:
        return None


def build(checkpoint: str, staging: pathlib.Path, *, dtype: str = "float32", vocabulary: str | None = None,
          metrics: str | None = None, destination: str = "") -> list[str]:
    """Write a release's files into `staging` (a local folder); returns their names, relative to it."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}.")
    source = resolve_source(checkpoint)
    vocab_path, extra_ids = vocabulary_source(source, vocabulary)
    check_vocabulary_reachable(vocab_path)
    metrics_path = epath.Path(metrics) if metrics else _default_metrics(source)
    if metrics and not metrics_path.exists():
        raise FileNotFoundError(f"--metrics {metrics}: no such file.")

    write_params(source, staging, dtype)
    (staging / VOCAB).write_bytes(epath.Path(vocab_path).read_bytes())
    config = {"model": source.cfg.to_dict(), "vocabulary": {"file": VOCAB, "extra_ids": extra_ids},
              "params_dtype": "compressed" if source.compression else dtype, "step": source.step,
              "compression": source.compression}
    (staging / CONFIG).write_text(json.dumps(config, indent=1) + "\n")
    names = [PARAMS, VOCAB, CONFIG]
    if metrics_path is not None:
        (staging / METRICS).write_bytes(metrics_path.read_bytes())
        names.append(METRICS)
    run = run_config(source.run_dir)
    names += copy_records(source.run_dir, staging, TRAINING)
    names += copy_records(warm_start_dir(run), staging, WARM_START)
    facts = card.Facts(cfg=source.cfg, step=source.step, source=source.path, destination=destination,
                       params_dtype=config["params_dtype"], vocabulary=vocab_path, run=run,
                       train_end=_json(staging / TRAINING / "train_end.json"),
                       warm_start=_json(staging / WARM_START / "config.json"),
                       warm_start_end=_json(staging / WARM_START / "train_end.json"),
                       metrics=_json(staging / METRICS), compression=source.compression,
                       files={name: (staging / name).stat().st_size for name in names})
    (staging / CARD).write_text(card.model_card(facts))
    return [*names, CARD]


def _default_metrics(source: Source) -> epath.Path | None:
    """`eval/metrics.json` beside the checkpoint (where the demo and compress write it), if there is one."""
    folder = epath.Path(source.path) if source.compression is not None else source.run_dir
    path = folder / "eval" / METRICS if folder is not None else None
    return path if path is not None and path.exists() else None


def _json(path: pathlib.Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None
