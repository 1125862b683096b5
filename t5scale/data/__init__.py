"""Input pipeline: seqio tasks (C4 and the embedded corpus), span corruption, vocabularies, packed batches.

TensorFlow only feeds data here: it runs on the CPU, and the accelerators belong to JAX.
"""

import contextlib
import os
import re
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ INFO/WARNING logs once logging is set up

# What TensorFlow's C++ side prints while it loads and probes for CUDA, before its logging is initialised (so
# TF_CPP_MIN_LOG_LEVEL cannot hide it): noise on every machine without a GPU, and on ones with a GPU too, since
# TF is kept off it. Anything else printed meanwhile is passed through.
_STARTUP_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|^I\d{4} .*\] "  # INFO lines (oneDNN, "Could not find cuda drivers", CPU features)
    r"|cuda_platform\.cc:\d+\] failed call to cuInit"
    r"|^To enable the following instructions: .* rebuild TensorFlow")


@contextlib.contextmanager
def _startup_noise_filtered():
    """Send file descriptor 2 to a temporary file meanwhile (the noise comes from C++, below sys.stderr), then
    replay the lines that are not noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not _STARTUP_NOISE.search(line)]
            sys.stderr.write("".join(kept))


with _startup_noise_filtered():
    import tensorflow as tf  # noqa: E402

    try:
        tf.config.set_visible_devices([], "GPU")
        tf.config.set_visible_devices([], "TPU")
    except (RuntimeError, ValueError):  # already initialised, or no such device type: nothing to hide
        pass
