"""A `jax.profiler` trace of a few training steps, in MODEL_DIR where TensorBoard's profile tab finds it
(`MODEL_DIR/plugins/profile/<timestamp>/*.xplane.pb`; `tensorboard --logdir MODEL_DIR` with
tensorboard-plugin-profile installed).

The trace starts after the run's first step (which compiles) and covers `num_steps` steps, synced on both ends so
it holds their device work. Every host traces its own devices. A gs:// MODEL_DIR gets the trace copied there when
it stops: the profiler writes local files.
"""

from __future__ import annotations

import shutil
import tempfile

import jax
from etils import epath


class StepProfiler:
    def __init__(self, model_dir: str, start_step: int, num_steps: int | None):
        self._model_dir = model_dir
        self._first, self._last = (None, None) if not num_steps else (start_step + 1, start_step + 1 + num_steps)
        self._local = None

    def maybe_start(self, step: int, state) -> None:
        """Before running step `step` + 1 (`step` steps done)."""
        if step == self._first:
            jax.block_until_ready(state)
            remote = "://" in self._model_dir
            self._local = tempfile.mkdtemp(prefix="t5scale-profile-") if remote else self._model_dir
            jax.profiler.start_trace(self._local)

    def maybe_stop(self, step: int, state, *, force: bool = False) -> None:
        """After step `step`; `force` at the end of training stops a trace the run ended inside."""
        if self._local is None or not (force or step == self._last):
            return
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        if self._local != self._model_dir:  # copy to gs://, then drop the local copy
            for path in epath.Path(self._local).rglob("*"):
                if path.is_file():
                    target = epath.Path(self._model_dir) / path.relative_to(self._local)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    path.copy(target, overwrite=True)
            shutil.rmtree(self._local, ignore_errors=True)
        self._local = None
