"""t5scale.cache: JAX's persistent compilation cache under $T5SCALE_CACHE, on for every command unless
--no_compilation_cache; a directory JAX was already given (as the tests' conftest gives one) is kept."""

import os

import jax
import pytest

from t5scale.cache import cache_dir, set_compilation_cache
from t5scale.cli.main import main


@pytest.fixture
def jax_cache_settings(monkeypatch):
    """Whatever a test sets, the session's cache settings (environment and jax.config) come back afterwards."""
    for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_ENABLE_COMPILATION_CACHE", "T5SCALE_CACHE"):
        monkeypatch.setenv(name, "")  # registered for restoring; each test sets or deletes it
        monkeypatch.delenv(name)
    saved = (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir)
    yield monkeypatch
    jax.config.update("jax_enable_compilation_cache", saved[0])
    jax.config.update("jax_compilation_cache_dir", saved[1])


def test_the_cache_lives_under_t5scale_cache(jax_cache_settings, tmp_path):
    jax_cache_settings.setenv("T5SCALE_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    assert set_compilation_cache() == str(tmp_path / "xla")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla") and jax.config.jax_enable_compilation_cache
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "xla")  # child processes too


def test_a_directory_given_to_jax_is_kept(jax_cache_settings, tmp_path):
    jax_cache_settings.setenv("T5SCALE_CACHE", str(tmp_path / "t5scale"))
    jax_cache_settings.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    assert set_compilation_cache() == str(tmp_path / "mine")


def test_the_default_is_in_the_home_cache(jax_cache_settings, tmp_path):
    jax_cache_settings.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "t5scale"


def test_every_command_turns_it_on_unless_told_not_to(jax_cache_settings, tmp_path, capsys):
    jax_cache_settings.setenv("T5SCALE_CACHE", str(tmp_path))
    assert main(["shapes", "small"]) == 0
    assert jax.config.jax_enable_compilation_cache and jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
    assert main(["shapes", "small", "--no_compilation_cache"]) == 0
    assert not jax.config.jax_enable_compilation_cache
    assert os.environ["JAX_ENABLE_COMPILATION_CACHE"] == "false"
