"""Progress of `t5scale infer`, as training shows it (t5scale.train.metrics): a tqdm bar on a terminal or in a
notebook; in a log (a pod's, a SLURM job's, CI) one plain line every `every` batches; both with rows/s, tokens/s
and the time left. `summary()` is the last line: rows, tokens, seconds. Only process 0 shows anything."""

from __future__ import annotations

import sys
import time

import jax
from tqdm import tqdm


class Progress:
    def __init__(self, total_rows: int, *, done_rows: int = 0, every: int = 10, unit: str = "tokens"):
        self._main = jax.process_index() == 0
        redraws = sys.stderr.isatty() or "ipykernel" in sys.modules
        self._lines = self._main and not redraws
        self._bar = tqdm(total=total_rows, initial=done_rows, unit="row", dynamic_ncols=True,
                         disable=not self._main or self._lines)
        self._total, self._done, self._every, self._unit = total_rows, done_rows, every, unit
        self.rows = self.tokens = self.batches = 0  # this run's, skipped shards not counted
        self._start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._start

    def update(self, rows: int, tokens: int) -> None:
        self.rows, self.tokens, self.batches = self.rows + rows, self.tokens + tokens, self.batches + 1
        seconds = max(self.seconds, 1e-9)
        rates = {"rows_s": f"{self.rows / seconds:.3g}", f"{self._unit}_s": f"{self.tokens / seconds:,.0f}"}
        self._bar.update(rows)
        self._bar.set_postfix(rates)
        if self._lines and self.batches % self._every == 0:
            left = self._total - self._done - self.rows
            print(f"infer: {self._done + self.rows}/{self._total} rows, {rates['rows_s']} rows/s, "
                  f"{rates[f'{self._unit}_s']} {self._unit}/s, ETA {_duration(left * seconds / self.rows)}",
                  file=sys.stderr, flush=True)

    def summary(self) -> str:
        return (f"{self.rows} rows, {self.tokens} {self._unit}, {self.seconds:.1f} s "
                f"({self.rows / max(self.seconds, 1e-9):.3g} rows/s, "
                f"{self.tokens / max(self.seconds, 1e-9):,.0f} {self._unit}/s)")

    def close(self) -> None:
        self._bar.close()


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"
