"""Training metrics: TensorBoard event files and plain files in MODEL_DIR, progress on the console.

Plain files, so a study can rebuild its table from run directories alone (`t5scale.analysis.results`):
- `metrics.jsonl`: every step's training metrics;
- `throughput.jsonl`: per logged window, its steps, seconds and target tokens, and the run's training and compile
  seconds so far (over all starts). Training seconds are the trainer's clock: evaluation, checkpoints and compiling
  the train step excluded. The first window after a start ran the newly compiled step for the first time (and
  waited for the input pipeline to start), and says so: `"after_start": true`;
- `eval.jsonl`: validation loss and accuracy, and the training seconds spent to reach them;
- `run_info.json`: devices, process count, library versions and the git commit, for provenance.
A resumed run appends again from its checkpoint's step; readers keep the last entry of each step.
Step metrics stay on the device until `flush`, so logging does not add a host sync to every step.

Progress: a tqdm bar on a terminal or in a Jupyter notebook; where stderr is a file or a pipe (a pod's or a SLURM
job's log, CI), one plain line per logged window instead, since a bar redrawn with carriage returns makes one
unreadable line there.

TensorBoard's event files are written by TensorFlow (clu -> tf.summary). For a gs:// MODEL_DIR they are written to a
local folder and copied into MODEL_DIR with etils.epath (`EventFiles`), at most every `UPLOAD_EVERY_S` seconds and
at close: a killed run loses at most that much of its TensorBoard curves (the jsonl files lose nothing logged).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import math
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from clu import metric_writers
from etils import epath
from tqdm import tqdm

from t5scale.staging import StagedDir

# Dense bf16 matmul peaks per device (vendor figures), for MFU.
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12,
              "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12}


UPLOAD_EVERY_S = 30.0  # a remote MODEL_DIR's TensorBoard files
ROLL_AT_BYTES = 4 << 20  # a new event file then, so that an upload rewrites at most this much


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stops without saving the state that produced it."""


def measure_matmul_peak(seconds: float = 0.5, size: int = 1024) -> float:
    """FLOP/s of a float32 matmul on the first local device, best of repeated runs (a CPU's practical peak)."""
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        tic = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - tic)
    return 2 * size**3 / best


def peak_flops(configured_per_device: float | None) -> tuple[float | None, str]:
    """(peak FLOP/s of the whole run, where the figure comes from) for MFU.

    Given by config, else the vendor figure of a known accelerator, else on CPU a float32 matmul measured now (the
    fake devices of one host share its cores, so the host counts once); None for an unknown accelerator.
    """
    if configured_per_device is not None:
        return configured_per_device * jax.device_count(), "configured"
    kind = jax.devices()[0].device_kind
    peak = next((peak for name, peak in PEAK_FLOPS.items() if kind.startswith(name)), None)
    if peak is not None:
        return peak * jax.device_count(), f"{kind} bf16 peak"
    if jax.devices()[0].platform == "cpu":
        return measure_matmul_peak() * jax.process_count(), "float32 matmul measured on this CPU"
    return None, f"unknown for {kind}; set peak_flops_per_device"


class EventFiles:
    """clu's default writer (the log, and TensorBoard event files via tf.summary) for `model_dir`; for a remote one
    the event files go to a local folder whose new or grown files are copied up by `write_scalars` (every
    `UPLOAD_EVERY_S`), `flush` and `close`. An upload that fails is retried at the next one; one that fails at close
    is logged with the local folder that keeps the files (it never stops the trainer from closing its checkpoints)."""

    def __init__(self, model_dir: str):
        self._staged = StagedDir(model_dir)
        self._writer = self._new_writer()
        self._uploaded_at = -float("inf")

    def _new_writer(self):
        folder = epath.Path(self._staged.local)
        self._earlier_files = set(folder.iterdir()) if folder.exists() else set()
        return metric_writers.create_default_writer(self._staged.local, asynchronous=False)

    def write_scalars(self, step: int, scalars: dict) -> None:
        self._writer.write_scalars(step, scalars)
        if self._staged.remote and time.monotonic() - self._uploaded_at >= UPLOAD_EVERY_S:
            try:
                self.flush()
            except OSError as error:
                logging.warning("TensorBoard files not copied to %s yet (%s); retrying later.",
                                self._staged.destination, error)

    def flush(self) -> None:
        self._writer.flush()
        if self._staged.remote and self._current_file_bytes() >= ROLL_AT_BYTES:
            self._writer.close()  # that file is complete: uploaded once more below, then never again
            self._writer = self._new_writer()
        self._uploaded_at = time.monotonic()
        self._staged.upload()

    def _current_file_bytes(self) -> int:
        current = set(epath.Path(self._staged.local).iterdir()) - self._earlier_files
        return max((p.stat().length for p in current if p.is_file()), default=0)

    def close(self) -> None:
        self._writer.close()
        try:
            self._staged.close()
        except OSError:
            pass  # logged by StagedDir.close, which keeps the local files


class TrainingClock:
    """Training seconds over all starts of a run: runs from `resume` (the first step) while the loop trains, paused
    while it evaluates, checkpoints, writes its logs or compiles the train step (which `compile_seconds` counts)."""

    def __init__(self, train_seconds: float = 0.0, compile_seconds: float = 0.0):
        self.start_seconds = train_seconds  # of the earlier starts, as the checkpoint resumed from recorded them
        self._banked, self.compile_seconds = train_seconds, compile_seconds
        self._since: float | None = None  # when it last resumed; None while paused

    @property
    def train_seconds(self) -> float:
        return self._banked + (time.perf_counter() - self._since if self._since is not None else 0.0)

    def resume(self) -> None:
        if self._since is None:
            self._since = time.perf_counter()

    def pause(self) -> None:
        self._banked, self._since = self.train_seconds, None

    @contextlib.contextmanager
    def paused(self):
        running = self._since is not None
        self.pause()
        try:
            yield
        finally:
            if running:
                self.resume()

    @contextlib.contextmanager
    def compiling(self):
        tic = time.perf_counter()
        with self.paused():
            yield
        self.compile_seconds += time.perf_counter() - tic


class MetricsLogger:
    def __init__(self, model_dir: str, *, flops_per_step: float, learning_rate_fn, peak_flops: float | None,
                 total_steps: int, start_step: int, progress_bar: bool, clock: TrainingClock | None = None):
        self._main = jax.process_index() == 0
        self._writer = EventFiles(model_dir) if self._main else metric_writers.create_default_writer(
            just_logging=True, asynchronous=False)
        self._dir = epath.Path(model_dir)
        self._jsonl = self._dir / "metrics.jsonl"
        self._after_start = True
        self._flops_per_step, self._lr_fn, self._peak = flops_per_step, learning_rate_fn, peak_flops
        self._pending: list[tuple[int, dict]] = []  # on the device
        self._fetched: list[tuple[int, dict]] = []  # on the host, checked finite, not yet written
        if clock is None:  # timed from now
            clock = TrainingClock()
            clock.resume()
        self._clock = clock
        self._last_seconds, self._last_step = self._clock.start_seconds, start_step  # the end of the last window
        self.last_loss: float | None = None
        self.last_scalars: dict[str, float] = {}  # of the last logged window: loss, throughput, MFU
        progress_bar = progress_bar and self._main
        redraws = sys.stderr.isatty() or "ipykernel" in sys.modules  # a terminal, or a Jupyter notebook's output
        self._lines = progress_bar and not redraws  # plain lines where a bar cannot redraw
        self._total_steps = total_steps
        self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                         disable=not progress_bar or self._lines)

    def record(self, step: int, step_metrics: dict) -> None:
        self._pending.append((step, step_metrics))

    def check_finite(self) -> list[tuple[int, dict]]:
        """Fetch pending step metrics; raise NonFiniteLossError at the first NaN/Inf loss."""
        fetched = [(step, {k: float(v) for k, v in jax.device_get(m).items()}) for step, m in self._pending]
        self._pending = []
        for step, values in fetched:
            if not math.isfinite(values["loss"]):
                raise NonFiniteLossError(
                    f"Loss is {values['loss']} at step {step}; stopped without saving that state. The last "
                    "checkpoint is intact: lower the learning rate, use float32, or check the data, then rerun.")
        self._fetched += fetched
        return fetched

    def flush(self, step: int) -> None:
        """Log the steps recorded since the last window as one window, timed by the clock once they are done."""
        self.check_finite()  # waits for the steps
        fetched, self._fetched = self._fetched, []
        if not fetched:
            return
        train_seconds = self._clock.train_seconds
        with self._clock.paused():  # writing the logs is not training either
            self._write_window(step, fetched, train_seconds)

    def _write_window(self, step: int, fetched: list[tuple[int, dict]], train_seconds: float) -> None:
        steps = step - self._last_step
        seconds = max(train_seconds - self._last_seconds, 1e-9)
        self._last_seconds, self._last_step = train_seconds, step
        mean = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[0][1]}
        tokens = sum(m["tokens"] for _, m in fetched)
        flops_per_s = self._flops_per_step * steps / seconds
        scalars = {**mean, "learning_rate": float(self._lr_fn(step)), "step_time_s": seconds / max(steps, 1),
                   "target_tokens_per_s": tokens / seconds, "flops_per_s": flops_per_s}
        if self._peak:
            scalars["mfu"] = flops_per_s / self._peak
        self.last_loss, self.last_scalars = mean["loss"], scalars
        self._writer.write_scalars(step, scalars)
        if self._main:
            append_lines(self._jsonl, [{"step": s, **m} for s, m in fetched])
            window = {"step": step, "steps": steps, "seconds": seconds, "target_tokens": tokens,
                      "train_seconds": train_seconds, "compile_seconds": self._clock.compile_seconds,
                      **({"after_start": True} if self._after_start else {})}
            self._append("throughput.jsonl", window)
        self._after_start = False
        progress = {"loss": f"{mean['loss']:.3f}", "acc": f"{mean['accuracy']:.3f}",
                    "tok_s": f"{tokens / seconds:,.0f}", **({"mfu": f"{scalars['mfu']:.1%}"} if self._peak else {})}
        if self._lines:
            print(f"step {step}/{self._total_steps}: " + ", ".join(f"{k} {v}" for k, v in progress.items())
                  + f", {seconds / max(steps, 1):.3g} s/step", file=sys.stderr, flush=True)
        self._bar.update(step - self._bar.n)
        self._bar.set_postfix(progress)

    def write_eval(self, step: int, values: dict) -> None:
        """Validation metrics at `step`; eval.jsonl also gets the training seconds it took to get there."""
        self._writer.write_scalars(step, {f"eval/{k}": v for k, v in values.items()})
        if self._main:
            self._append("eval.jsonl", {"step": step, **values, "train_seconds": self._clock.train_seconds})
        self._bar.write(f"step {step}: validation loss {values['loss']:.4f}, accuracy {values['accuracy']:.4f}")

    def write_task_eval(self, step: int, summary: dict | None) -> None:
        """A task evaluation's metrics (t5scale.evaluate's summary; None on the processes that do not write)."""
        if summary is None:
            return
        values = {f"{task}/{name}": value for task, metrics in summary["tasks"].items()
                  for name, value in metrics.items()}
        values.update(summary["averages"])
        self._writer.write_scalars(step, {f"task_eval/{k}": v for k, v in values.items()})
        self._append("task_eval.jsonl", {"step": step, "tasks": summary["tasks"], "averages": summary["averages"]})
        self._bar.write(f"step {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in values.items()))

    def _append(self, name: str, row: dict) -> None:
        append_lines(self._dir / name, [row])

    def close(self) -> None:
        self._bar.close()
        self._writer.close()


def append_lines(path: epath.Path, rows: list[dict]) -> None:
    """Append JSON lines. Object stores cannot append (gcsfs would replace the object, and tf.io.gfile rewrites
    it too): a remote file is read and written back whole."""
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if "://" in str(path):
        path.write_text((path.read_text() if path.exists() else "") + text)
    else:
        with path.open("a") as f:
            f.write(text)


def write_run_info(model_dir: str) -> None:
    """`run_info.json`: where and with what the run trained (process 0; rewritten by every start)."""
    if jax.process_index() != 0:
        return
    versions = {}
    for package in ("t5scale", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "seqio", "tensorflow"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    info = {"device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count(),
            "process_count": jax.process_count(), "platform": jax.devices()[0].platform, "versions": versions,
            "git_commit": _git_commit()}
    (epath.Path(model_dir) / "run_info.json").write_text(json.dumps(info, indent=1) + "\n")


def _git_commit() -> str | None:
    """The commit of the t5scale checkout in use, when it runs from one (an installed wheel has none)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=epath.Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
