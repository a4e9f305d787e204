"""What the cross-module CLI tests share: how to start the real ``qmricore`` command in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_SCRIPT = Path(sys.executable).with_name("qmricore")  # the console script of the installed package
#: Command prefix for a real ``qmricore`` process: the entry point when installed, else ``python -m qmricore``.
QMRICORE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "qmricore"]


def run_qmricore(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``qmricore ARGS...`` (each argument through ``str``) and capture its text output; never raises on
    a non-zero exit, so tests can check the code and the one-line error."""
    return subprocess.run([*QMRICORE, *map(str, args)], check=False, capture_output=True, text=True, timeout=timeout)
