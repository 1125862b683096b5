"""`make compress-study`, last step: the tables and figures from the study's `t5scale compress` runs.

    python scripts/compress_study.py runs/compress-study

Reads STUDY/compress/results.json (the dense fine-tuned sizes, every setting) and, when present,
STUDY/compress-pruned/results.json (the same sizes pruned gradually while fine-tuning, then stored sparse), names
each curve "<shape> (<params>M)" and the second kind "<shape> (<params>M) pruned in fine-tuning", and writes
STUDY/results.csv, results.json and accuracy_vs_bytes.png (a curve per size and kind, the frontier over all rows),
and prints the table. The same for STUDY/compress-train512 and compress-pruned-train512 when present (the first
512 examples of the training split: seen in fine-tuning, but 7.5x as many as the 68 of validation), into
STUDY/train512/.
Computes no number of its own: bytes and scores are those `t5scale compress` measured.
"""

from __future__ import annotations

import json
import pathlib
import sys

from t5scale.compress.plot import plot_accuracy_vs_bytes
from t5scale.compress.study import format_table, write_results

VIEWS = (("", "validation accuracy (%), 68 examples"),
         ("-train512", "accuracy (%), 512 train examples"))
PARTS = (("compress", ""), ("compress-pruned", " pruned in fine-tuning"))


def main(study: str) -> None:
    for view, label in VIEWS:
        rows = []
        for folder, suffix in PARTS:
            path = pathlib.Path(study, folder + view, "results.json")
            if path.exists():
                for row in json.loads(path.read_text()):
                    rows.append({**row, "model": f"{row['model']} ({row['params'] / 1e6:.2f}M){suffix}"})
        if not rows:
            continue
        out = pathlib.Path(study, view.lstrip("-"))  # STUDY itself, or STUDY/train512
        write_results(rows, str(out))
        plot_accuracy_vs_bytes(rows, f"{out}/accuracy_vs_bytes.png", quality_label=f"embedded_sst2 {label}")
        print(f"embedded_sst2 {label}:")
        print(format_table(rows))
        print(f"results: {out}/results.csv, results.json; figure: {out}/accuracy_vs_bytes.png\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    main(sys.argv[1])
