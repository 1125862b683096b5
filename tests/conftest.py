import os
import tempfile


def _session_directory(name: str) -> str:
    """A private directory for this test session, the same in every pytest-xdist worker of one run (so that the
    workers share what one of them has compiled or trained), a fresh one otherwise."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None:
        return tempfile.mkdtemp(prefix=f"t5scale-test-{name}-")
    path = os.path.join(tempfile.gettempdir(), f"t5scale-test-{name}-{run}")
    os.makedirs(path, exist_ok=True)
    return path


# Set before jax is imported. CPU only; and a compilation cache shared by every test and the processes they
# start, so the many small runs that compile the same programs pay for XLA once.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _session_directory("xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The embedded vocabulary is trained once per session into a private cache, never the user's (written by rename,
# so two workers training it at once leave one whole file).
os.environ.setdefault("T5SCALE_CACHE", _session_directory("cache"))

# The GCS emulator fixtures (`gcs`, `gcs_server`).
pytest_plugins = ("tests.gcs",)
