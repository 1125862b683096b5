import os
import tempfile

# Set before jax is imported. CPU only; and a compilation cache shared by every test and the processes they
# start, so the many small runs that compile the same programs pay for XLA once.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="t5scale-test-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The embedded vocabulary is trained once per session into a private cache, never the user's.
os.environ.setdefault("T5SCALE_CACHE", tempfile.mkdtemp(prefix="t5scale-test-cache-"))

# The GCS emulator fixtures (`gcs`, `gcs_server`).
pytest_plugins = ("tests.gcs",)
