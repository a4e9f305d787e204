"""What the cross-module CLI tests share: how to start the real ``qmricore`` command in a subprocess."""

from __future__ import annotations

import sys
from pathlib import Path

_SCRIPT = Path(sys.executable).with_name("qmricore")  # the console script of the installed package
#: Command prefix for a real ``qmricore`` process: the entry point when installed, else ``python -m qmricore``.
QMRICORE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "qmricore"]
