"""`make compress-study`, last step: one table and one figure from the study's two `t5scale compress` runs.

    python scripts/compress_study.py runs/compress-study

Reads STUDY/compress/results.json (the dense fine-tuned sizes, every setting) and, when present,
STUDY/compress-pruned/results.json (the same sizes pruned gradually while fine-tuning, then stored sparse), names
each curve "<shape> (<params>M)" and the second kind "... pruned in fine-tuning", and writes STUDY/results.csv,
results.json and accuracy_vs_bytes.png (a curve per size and kind, the frontier over all rows), and prints the
table. Computes no number of its own: bytes and scores are those `t5scale compress` measured.
"""

from __future__ import annotations

import json
import pathlib
import sys

from t5scale.compress.plot import plot_accuracy_vs_bytes
from t5scale.compress.study import format_table, write_results

PARTS = (("compress", ""), ("compress-pruned", ", pruned in fine-tuning"))


def main(study: str) -> None:
    rows = []
    for folder, suffix in PARTS:
        path = pathlib.Path(study, folder, "results.json")
        if folder == "compress" or path.exists():
            for row in json.loads(path.read_text()):
                rows.append({**row, "model": f"{row['model']} ({row['params'] / 1e6:.2f}M){suffix}"})
    write_results(rows, study)
    plot_accuracy_vs_bytes(rows, f"{study}/accuracy_vs_bytes.png",
                           quality_label="embedded_sst2 validation accuracy (%), 68 examples")
    print(format_table(rows))
    print(f"results: {study}/results.csv, results.json; figure: {study}/accuracy_vs_bytes.png")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    main(sys.argv[1])
