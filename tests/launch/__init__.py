"""The launch/ scripts: their dry-run output, --help, argument errors, and a real 2-process CPU run."""

import os
import subprocess

from tests.testing import REPO

LAUNCH = REPO / "launch"


def run_script(script: str, *args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """`bash launch/<script> ARGS...` from the repository root, text output captured."""
    return subprocess.run(["bash", str(LAUNCH / script), *args], cwd=REPO, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
