"""QMRICommonLib.dependencies: what the modules install into Slicer's Python on first use.

The list agrees with the repository's pins and qmricore's declared dependencies; the check sees what is
really importable; the install runs real ``pip install --dry-run`` subprocesses (offline, nothing changes).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib
from QMRICommonLib import dependencies
from QMRICommonLib.dependencies import REQUIREMENTS, Requirement

ROOT = Path(__file__).resolve().parents[2]


def pins() -> dict[str, str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return dict(re.match(r"([\w-]+)==([\w.+]+)", line).groups() for line in lines if re.match(r"[\w-]+==", line))


def test_requirements_are_the_repository_pins_and_cover_qmricore():
    pinned = pins()
    for requirement in REQUIREMENTS:
        if requirement.module == "torch":  # a range: PyTorchUtils chooses the build that fits the GPU driver
            low = requirement.pip.split(">=")[1]
            assert tuple(map(int, pinned["torch"].split("."))) >= tuple(map(int, low.split(".")))
        else:
            name, version = requirement.pip.split("==")
            assert pinned[name] == version, requirement
    declared = tomllib.loads((ROOT / "core" / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.match(r"[\w-]+", d).group() for d in declared} - {"numpy"}  # numpy ships with Slicer
    assert names <= {r.module for r in REQUIREMENTS}
    assert dependencies.coreFolder() == ROOT / "core"


def test_missing_sees_what_is_importable():
    assert dependencies.missing() == []  # this environment has everything
    absent = Requirement("qmri_no_such_package", "qmri-no-such-package==1.0")
    assert dependencies.missing([absent, *REQUIREMENTS]) == [absent]
    text = dependencies.describe([Requirement("torch", "torch>=2.1"), absent])
    assert "torch, qmri_no_such_package" in text and "PyTorch is about" in text


def dry_run(log: list[list[str]]):
    """A pip that installs nothing: the real pip with --dry-run, offline; records each call's arguments."""
    def pip_install(arguments: list[str]) -> None:
        log.append(arguments)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index",
                               "--no-build-isolation", *arguments], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    return pip_install


def test_install_order_and_real_pip_arguments():
    log: list[list[str]] = []
    messages: list[str] = []
    absent = [r for r in REQUIREMENTS if r.module in ("tqdm", "psutil")]
    absent.append(Requirement("qmricore", str(dependencies.coreFolder())))
    dependencies.install(absent, dry_run(log), status=messages.append)
    assert log == [["tqdm==4.70.1", "psutil==7.2.2"], ["--no-deps", str(ROOT / "core")]]
    assert messages == ["Installing tqdm, psutil...", "Installing qmricore..."]


def test_torch_goes_through_pytorchutils_when_given():
    log: list[list[str]] = []
    torch_calls = []
    torch = next(r for r in REQUIREMENTS if r.module == "torch")
    dependencies.install([torch], log.append, installTorch=lambda: torch_calls.append(1), status=lambda m: None)
    assert torch_calls == [1] and log == []
    dependencies.install([torch], log.append, status=lambda m: None)
    assert log == [["torch>=2.1"]]


def test_module_files_check_before_importing_their_libs():
    """Each module file imports only Slicer, the standard library and QMRICommonLib.dependencies at the top, so
    Slicer loads it before the packages are installed; the Lib comes after ensureInSlicer()."""
    import ast

    for module in ("QMRISynth", "QMRISegment"):
        tree = ast.parse((ROOT / module / f"{module}.py").read_text())
        top = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
        top |= {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
        assert not {name for name in top if name.split(".")[0] in ("qmricore", "torch", "monai", "nibabel")}
        assert not {name for name in top if name.startswith(f"{module}Lib")}
        source = (ROOT / module / f"{module}.py").read_text()
        connect = source[source.index("def connectLogic"):]
        assert connect.index("dependencies.ensureInSlicer()") < connect.index(f"from {module}Lib.logic import")

