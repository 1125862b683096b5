"""Where t5scale keeps what it can rebuild: `$T5SCALE_CACHE`, by default `~/.cache/t5scale`.

    vocab/     sentencepiece models trained on the embedded corpus (t5scale.data.vocab)
    releases/  verified copies of releases read from gs:// (t5scale.release.load)
    xla/       JAX's persistent compilation cache, which the `t5scale` command turns on: a sweep that trains the
               same shape again, or a resumed run, loads its compiled step instead of compiling it again

Imports nothing heavy: every command calls it before it builds anything.
"""

from __future__ import annotations

import os
import pathlib


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("T5SCALE_CACHE") or pathlib.Path.home() / ".cache" / "t5scale")


def set_compilation_cache(enabled: bool = True) -> str | None:
    """Turn JAX's persistent compilation cache on (in `cache_dir()/xla`) or off, for this process and the processes
    it starts (through the environment JAX reads). A directory already named by JAX_COMPILATION_CACHE_DIR is kept.
    Returns the directory in use, None when off. JAX caches only programs that took >= 1 s to compile (its
    `jax_persistent_cache_min_compile_time_secs`), so small helpers do not fill the folder."""
    import jax

    if not enabled:
        os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(cache_dir() / "xla")
    os.environ.update(JAX_COMPILATION_CACHE_DIR=directory, JAX_ENABLE_COMPILATION_CACHE="true")
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", directory)
    return directory
