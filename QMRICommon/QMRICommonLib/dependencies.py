"""The Python packages the QMRI modules need, checked, and installed into Slicer's Python on first use.

Slicer ships Python with numpy and VTK; PyTorch, MONAI, nibabel and the rest, and ``qmricore`` itself, are
installed once, after the user agrees, with pip into Slicer's own Python, while a message says what is
happening (as SlicerTotalSegmentator and SlicerMONAIAuto3DSeg do).  PyTorch goes through the PyTorchUtils
extension when it is there (it picks the CUDA build that fits the GPU driver), else pip's default wheel.
``qmricore`` comes from the ``core`` folder shipped with the extension, with ``--no-deps`` so that pip changes
nothing it did not list.

This module imports only the standard library at import time: a module file uses it before anything else is
installed, and imports its Lib (which needs all of it) only once :func:`missing` is empty.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Requirement:
    """An import name and what pip installs for it (a requirement string, or a local folder)."""

    module: str
    pip: str


#: What the modules import, pinned as in the repository's requirements.txt (a test checks).  PyTorch is a range:
#: which build fits is the GPU driver's business (PyTorchUtils), not this list's.
REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("torch", "torch>=2.1"),
    Requirement("monai", "monai==1.6.1"),
    Requirement("einops", "einops==0.8.2"),
    Requirement("nibabel", "nibabel==5.4.2"),
    Requirement("scipy", "scipy==1.17.1"),
    Requirement("tqdm", "tqdm==4.70.1"),
    Requirement("safetensors", "safetensors==0.8.0"),
    Requirement("threadpoolctl", "threadpoolctl==3.8.0"),
    Requirement("psutil", "psutil==7.2.2"),
)


def coreFolder() -> Path | None:
    """The ``core`` folder (qmricore's pyproject): next to ``QMRICommonLib`` in an installed extension, at the
    repository root in the source tree; ``None`` when neither exists."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "core", here.parents[1] / "core"):
        if (candidate / "pyproject.toml").is_file():
            return candidate
    return None


def missing(requirements: Sequence[Requirement] = REQUIREMENTS) -> list[Requirement]:
    """The requirements whose module cannot be imported, then ``qmricore`` if it cannot (installed last)."""
    absent = [r for r in requirements if importlib.util.find_spec(r.module) is None]
    if importlib.util.find_spec("qmricore") is None:
        core = coreFolder()
        absent.append(Requirement("qmricore", str(core) if core else "qmricore"))
    return absent


def describe(absent: Sequence[Requirement]) -> str:
    """One sentence for the confirmation dialog."""
    names = ", ".join(r.module for r in absent)
    heavy = " PyTorch is about 1-3 GB; this takes a few minutes." if any(r.module == "torch" for r in absent) else ""
    return f"This module needs Python packages that are not installed yet: {names}. Install them now?{heavy}"


def install(absent: Sequence[Requirement], pipInstall: Callable[[list[str]], object],
            installTorch: Callable[[], object] | None = None, status: Callable[[str], object] = print) -> None:
    """Install ``absent`` in order: PyTorch (through ``installTorch`` when given), the pinned packages in one pip
    call, then qmricore with ``--no-deps``.  ``pipInstall`` takes pip's arguments after ``install``."""
    pinned = [r for r in absent if r.module not in ("torch", "qmricore")]
    if any(r.module == "torch" for r in absent):
        status("Installing PyTorch...")
        if installTorch is not None:
            installTorch()
        else:
            pipInstall([next(r.pip for r in absent if r.module == "torch")])
    if pinned:
        status(f"Installing {', '.join(r.module for r in pinned)}...")
        pipInstall([r.pip for r in pinned])
    core = next((r for r in absent if r.module == "qmricore"), None)
    if core is not None:
        status("Installing qmricore...")
        pipInstall(["--no-deps", core.pip])
    importlib.invalidate_caches()


def ensureInSlicer(requirements: Sequence[Requirement] = REQUIREMENTS) -> bool:
    """In the app: True when everything imports; else ask, install with a wait cursor and status messages, and
    return whether everything imports now.  Nothing is installed without the user's OK."""
    absent = missing(requirements)
    if not absent:
        return True
    import slicer
    import slicer.util

    if not slicer.util.confirmOkCancelDisplay(describe(absent), windowTitle="QMRI: Python packages"):
        return False

    def pipInstall(arguments: list[str]) -> None:
        slicer.util.pip_install(arguments)

    installTorch = None
    try:
        import PyTorchUtils  # the PyTorch extension's module: chooses the CUDA/CPU build for this machine

        def installTorch() -> None:
            PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
    except ImportError:
        pass

    def status(message: str) -> None:
        slicer.util.showStatusMessage(message)
        slicer.app.processEvents()

    with slicer.util.WaitCursor():
        install(absent, pipInstall, installTorch, status)
    status("QMRI: Python packages installed.")
    return not missing(requirements)
