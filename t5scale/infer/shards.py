"""The output files of `t5scale infer`: `predictions-00000-of-000NN.jsonl`, each a fixed range of rows, written
whole or not at all, and `infer.json`, the settings that made them.

A shard is written atomically: a local one to a temporary name in the same folder and renamed (a rename within a
file system is atomic); a gs:// one in one upload, since a GCS object becomes visible only once its upload completes
(t5scale.staging). So a shard that exists is complete, and a rerun skips it. `infer.json` records what decides the
rows of every shard (the checkpoint, the inputs, lengths, decoding, shard size): a rerun into the same folder with
other settings is refused rather than mixing the two runs' shards.
"""

from __future__ import annotations

import json
import os

from etils import epath

SETTINGS = "infer.json"
_TMP = ".tmp-"


def shard_name(shard: int, count: int) -> str:
    return f"predictions-{shard:05d}-of-{count:05d}.jsonl"


def plan(rows: int, rows_per_shard: int | None, shards: int | None) -> list[range]:
    """The row range of each shard: `shards` of them as equal as can be, else `rows_per_shard` rows each."""
    if shards is not None:
        if shards < 1:
            raise ValueError(f"--shards must be positive, got {shards}.")
        rows_per_shard = -(-rows // min(shards, rows))
    if rows_per_shard is None or rows_per_shard < 1:
        raise ValueError(f"rows per shard must be positive, got {rows_per_shard}.")
    return [range(start, min(start + rows_per_shard, rows)) for start in range(0, rows, rows_per_shard)]


def finished(output_dir: str, count: int) -> list[bool]:
    folder = epath.Path(output_dir)
    return [(folder / shard_name(i, count)).exists() for i in range(count)]


def write(output_dir: str, shard: int, count: int, rows: list[dict]) -> None:
    """One shard's rows as JSON lines, atomically (see the module doc)."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    target = epath.Path(output_dir) / shard_name(shard, count)
    if "://" in str(target):
        target.write_text(text)
        return
    tmp = target.parent / f"{_TMP}{target.name}"
    tmp.write_text(text)
    os.replace(tmp, target)


def remove_partial(output_dir: str) -> None:
    """Temporary files a killed run left behind."""
    for path in epath.Path(output_dir).glob(f"{_TMP}*"):
        path.unlink(missing_ok=True)


def check_settings(output_dir: str, settings: dict) -> None:
    """Record `settings` in a new output folder; in one that has them, refuse different ones."""
    path = epath.Path(output_dir) / SETTINGS
    settings = json.loads(json.dumps(settings))  # as read back: tuples are lists
    if path.exists():
        earlier = json.loads(path.read_text())
        changed = sorted(k for k in {*earlier, *settings} if earlier.get(k) != settings.get(k))
        if changed:
            raise ValueError(f"{output_dir} holds predictions made with other settings ({', '.join(changed)} "
                             f"differ from its {SETTINGS}): write to another INFER_OUTPUT_DIR, or delete it.")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1) + "\n")
