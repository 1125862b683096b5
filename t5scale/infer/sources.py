"""What `t5scale infer` reads: examples in a fixed order from a seqio task or mixture, a TFDS dataset, or files.

    source = file_source("gs://bucket/inputs-*.jsonl", input_field="question", id_field="qid")
    for example in source.examples(): ...      # Example(input="...", id="q17", target=None)

- A seqio task (or a mixture: its tasks one after the other, each whole) with its own preprocessors: the inputs
  come tokenized by the task, with its vocabulary; the text is the task's `inputs_pretokenized`.
- A TFDS dataset: `input_field` (and optional `id_field`, `target_field`) name its features.
- Files, local or gs:// (etils.epath), comma-separated, each a path or a glob, read in sorted order: JSONL
  (`.jsonl`, `.json`: one object a line, `input_field` default "inputs"), TSV (`.tsv`: fields are 0-based column
  numbers, the input default column 0), anything else plain text, one input a line.
Every source gives the same examples in the same order each time it is read: `index` is the position in it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable, Iterator

import numpy as np
from etils import epath

GLOB_CHARACTERS = "*?["


@dataclasses.dataclass(frozen=True)
class Example:
    input: str
    id: str | int | None = None
    target: str | None = None
    input_ids: np.ndarray | None = None  # tokens the source made (a seqio task); None: tokenize `input`
    target_ids: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Source:
    name: str  # for messages: "task glue_sst2_v002 (validation)", "files a.jsonl, b.jsonl"
    examples: Callable[[], Iterator[Example]]  # a fresh pass over the examples, in order
    vocabulary: object | None = None  # the task's seqio vocabulary; None: the checkpoint's


def task_source(name: str, split: str, lengths: dict[str, int] | None) -> Source:
    """A seqio task's (or a mixture's tasks') `split`, unshuffled, preprocessed and tokenized by the task."""
    import seqio

    from t5scale.data.registry import get_task_or_mixture

    provider = get_task_or_mixture(name)  # an unknown name lists the registered ones
    mixture = isinstance(provider, seqio.Mixture)
    every = provider.tasks if mixture else [provider]
    tasks = [t for t in every if split in t.splits]
    if not tasks:
        splits = sorted({s for t in every for s in t.splits})
        raise ValueError(f"No task of {name!r} has a {split!r} split (it has: {', '.join(splits)}); set --split.")

    def examples() -> Iterator[Example]:
        for task in tasks:
            dataset = task.get_dataset(sequence_length=lengths, split=split, shuffle=False, num_epochs=1,
                                       use_cached=False)
            for position, row in enumerate(dataset.as_numpy_iterator()):
                yield Example(input=_text(row.get("inputs_pretokenized", b"")),
                              id=f"{task.name}:{position}" if mixture else None,
                              target=_text(row["targets_pretokenized"]) if "targets_pretokenized" in row else None,
                              input_ids=row["inputs"], target_ids=row.get("targets"))

    return Source(f"task {name} ({split})", examples, tasks[0].output_features["targets"].vocabulary)


def tfds_source(name: str, split: str, *, input_field: str | None, id_field: str | None = None,
                target_field: str | None = None, data_dir: str | None = None) -> Source:
    """A TFDS dataset's `split` in its stored order; the fields are feature names."""
    import tensorflow_datasets as tfds

    if not input_field:
        raise ValueError(f"TFDS dataset {name!r}: say which feature holds the inputs (--input_field).")
    where = f"TFDS dataset {name} ({split})"

    def examples() -> Iterator[Example]:
        dataset = tfds.load(name, split=split, shuffle_files=False, data_dir=data_dir)
        for row in dataset.as_numpy_iterator():
            yield _from_fields(row, input_field, id_field, target_field, where)

    return Source(where, examples)


def file_source(patterns: str, *, input_field: str | None = None, id_field: str | None = None,
                target_field: str | None = None) -> Source:
    """Files by comma-separated paths or globs (local or gs://), each read by its extension (see the module doc)."""
    paths = expand(patterns)

    def examples() -> Iterator[Example]:
        for path in paths:
            yield from _read_file(path, input_field, id_field, target_field)

    return Source(f"input files {', '.join(map(str, paths))}", examples)


def expand(patterns: str) -> list[epath.Path]:
    """Every file the comma-separated paths and globs name, each pattern's matches sorted by name."""
    paths = []
    for pattern in (p.strip() for p in patterns.split(",") if p.strip()):
        if not any(c in pattern for c in GLOB_CHARACTERS):
            if not epath.Path(pattern).is_file():
                raise FileNotFoundError(f"Input file {pattern} does not exist.")
            paths.append(epath.Path(pattern))
            continue
        parts = pattern.split("/")
        first = next(i for i, part in enumerate(parts) if any(c in part for c in GLOB_CHARACTERS))
        folder = epath.Path("/".join(parts[:first]) or ".")
        matches = sorted(p for p in folder.glob("/".join(parts[first:])) if p.is_file()) if folder.is_dir() else []
        if not matches:
            raise FileNotFoundError(f"Input files {pattern} match no file.")
        paths += matches
    if not paths:
        raise ValueError(f"--input_file {patterns!r} names no file.")
    return paths


def _read_file(path: epath.Path, input_field, id_field, target_field) -> Iterator[Example]:
    kind = _kind(path)
    with path.open("r") as lines:
        for number, line in enumerate(lines, 1):
            line = line.rstrip("\n").removesuffix("\r")
            where = f"{path}:{number}"
            if kind == "jsonl":
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{where} is not a JSON object ({error.msg}).") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{where} is not a JSON object.")
                yield _from_fields(row, input_field or "inputs", id_field, target_field, where)
            elif kind == "tsv":
                columns = dict(enumerate(line.split("\t")))
                yield _from_fields(columns, _column(input_field or "0", where), _column(id_field, where),
                                   _column(target_field, where), where)
            else:
                if id_field or target_field:
                    raise ValueError(f"{path} is plain text (one input a line): it has no id or target fields; "
                                     "use JSONL or TSV for those.")
                yield Example(input=line)


def _kind(path: epath.Path) -> str:
    """"jsonl", "tsv" or "text", by extension; a sharded name (`data.jsonl-00000-of-00008`) counts."""
    name = path.name.lower()
    if ".jsonl" in name or name.endswith(".json"):
        return "jsonl"
    return "tsv" if ".tsv" in name else "text"


def _column(field: str | None, where: str) -> int | None:
    if field is None:
        return None
    if not str(field).isdigit():
        raise ValueError(f"{where}: TSV fields are 0-based column numbers, not {field!r}.")
    return int(field)


def _from_fields(row: dict, input_field, id_field, target_field, where: str) -> Example:
    def get(field):
        if field not in row:
            known = ", ".join(map(str, row)) if len(row) < 30 else f"{len(row)} fields"
            raise ValueError(f"{where} has no field {field!r} (it has: {known}).")
        return row[field]

    return Example(input=_text(get(input_field)), id=None if id_field is None else _plain(get(id_field)),
                   target=None if target_field is None else _text(get(target_field)))


def _plain(value):
    """A JSON-ready value: bytes decoded, numpy scalars as Python ones."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    return value.item() if isinstance(value, np.generic) else value


def _text(value) -> str:
    value = _plain(value)
    return value if isinstance(value, str) else json.dumps(value)
