"""Run long work in a background process and follow it by polling, without Qt.

:class:`BackgroundRunner` starts a command (``python -m qmricore <command> ... --progress-lines``, made
by :func:`qmricoreCommand`) in its own session, reads its output on two threads and turns it into
:class:`RunnerEvent` events that :meth:`BackgroundRunner.poll` hands out without blocking (the module's
widget calls it from a ``qt.QTimer``; tests and batch scripts call it in a loop or use
:meth:`BackgroundRunner.wait`).

Output protocol of the command (:mod:`qmricore.cli.progress_lines`; one line each, on stdout)::

    PROGRESS <fraction 0..1> <message>     progress
    RESULT <json object>                   the result, before a clean exit
    anything else                          log text

On failure the last non-empty stderr line (the CLI prints ``error: <file>: <problem>``) becomes the
FAILED event's message.  :meth:`BackgroundRunner.cancel` stops the whole process tree (the command and
anything it started, found with psutil on every platform), so nothing is left running.
"""

from __future__ import annotations

import collections
import enum
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

#: Lines of stderr kept for the error message and the log.
STDERR_TAIL = 50


class RunnerEvent(enum.Enum):
    PROGRESS = "progress"
    LOG = "log"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = (RunnerEvent.FINISHED, RunnerEvent.FAILED, RunnerEvent.CANCELLED)


@dataclass(frozen=True)
class Event:
    """One thing that happened: ``fraction`` in [0, 1] for PROGRESS, ``result`` for FINISHED."""

    kind: RunnerEvent
    message: str = ""
    fraction: float | None = None
    result: dict[str, Any] = field(default_factory=dict)


def pythonExecutable() -> str:
    """The Python that runs ``qmricore``: Slicer's ``PythonSlicer`` inside the app (``sys.executable`` there is
    the application), this interpreter outside it."""
    import slicer

    if hasattr(slicer, "app"):
        found = shutil.which("PythonSlicer")
        if not found:
            raise RuntimeError("PythonSlicer, Slicer's Python launcher, is not on PATH")
        return found
    return sys.executable


def qmricoreCommand(*arguments: object) -> list[str]:
    """``python -m qmricore <arguments> --progress-lines``: a CLI run the runner can follow."""
    return [pythonExecutable(), "-m", "qmricore", *(str(a) for a in arguments), "--progress-lines"]


def liveDescendants(pid: int) -> list[psutil.Process]:
    """The processes ``pid`` started (children, grandchildren, ...) that are still running (not zombies)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [c for c in children if _alive(c)]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class Job:
    """A running background command and what is needed to import its result (the module's Logic reads it)."""

    kind: str  # "segment", "estimate", "mwf", "brain"
    runner: BackgroundRunner
    folder: Path  # the job's temporary folder: its inputs and outputs, removed by cleanup()
    referenceNode: Any = None  # the node whose grid the result takes, if any
    inputs: list[tuple[Any, str]] = field(default_factory=list)
    model: Path | None = None
    outputs: dict[str, Any] = field(default_factory=dict)

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class BackgroundRunner:
    """A command running in the background, polled for events.

    Parameters
    ----------
    command
        Program and arguments (no shell).
    env
        Extra environment variables.
    cwd
        Working folder.
    """

    def __init__(self, command: Sequence[str], env: dict[str, str] | None = None, cwd: str | Path | None = None):
        self.command = [str(c) for c in command]
        self.env = env
        self.cwd = cwd
        self.process: subprocess.Popen[str] | None = None
        self.fraction = 0.0
        self.result: dict[str, Any] = {}
        self.log: list[str] = []
        self._events: queue.Queue[Event] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self._threads: list[threading.Thread] = []
        self._cancelled = False
        self._done: Event | None = None

    # ------------------------------------------------------------------ life cycle
    def start(self) -> BackgroundRunner:
        if self.process is not None:
            raise RuntimeError("BackgroundRunner: already started")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            bufsize=1, env=env, cwd=self.cwd, start_new_session=True, errors="replace")
        self._threads = [threading.Thread(target=self._readStdout, daemon=True),
                         threading.Thread(target=self._readStderr, daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self._done is None

    def poll(self) -> list[Event]:
        """Events since the last call (never blocks); the last one is terminal once the process ended."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        if self._done is None and self.process is not None and self.process.poll() is not None:
            for thread in self._threads:
                thread.join(timeout=5.0)
            while True:  # lines read while we waited for the readers
                try:
                    events.append(self._events.get_nowait())
                except queue.Empty:
                    break
            self._done = self._finalEvent(self.process.returncode)
            events.append(self._done)
        return events

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> list[Event]:
        """Block until the process ends (or ``timeout`` s pass); returns every event meanwhile."""
        deadline = None if timeout is None else time.monotonic() + timeout
        events: list[Event] = []
        while True:
            events += self.poll()
            if self._done is not None:
                return events
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"background process {self.pid} still running after {timeout} s")
            time.sleep(interval)

    def cancel(self, grace: float = 3.0) -> None:
        """Stop the command and everything it started: terminate, then kill what is left after ``grace`` s."""
        if self.process is None or self._done is not None:
            return
        self._cancelled = True
        tree = liveDescendants(self.process.pid)  # before the parent goes: orphans are re-parented away
        try:
            tree.insert(0, psutil.Process(self.process.pid))
        except psutil.NoSuchProcess:
            pass
        for process in tree:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(tree, timeout=grace)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=grace)
        self.process.wait()

    # ------------------------------------------------------------------ output
    def _readStdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self._handleLine(line.rstrip("\n"))

    def _readStderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            text = line.rstrip("\n")
            for part in text.split("\r"):  # progress bars redraw with carriage returns
                if part.strip():
                    self._stderr.append(part.strip())
            if text.strip():
                self._events.put(Event(RunnerEvent.LOG, text.strip()))

    def _handleLine(self, line: str) -> None:
        if line.startswith("PROGRESS "):
            parts = line.split(maxsplit=2)
            try:
                fraction = min(max(float(parts[1]), 0.0), 1.0)
            except (IndexError, ValueError):
                self._events.put(Event(RunnerEvent.LOG, line))
                return
            self.fraction = fraction
            self._events.put(Event(RunnerEvent.PROGRESS, parts[2] if len(parts) > 2 else "", fraction))
        elif line.startswith("RESULT "):
            try:
                self.result = json.loads(line[len("RESULT "):])
            except json.JSONDecodeError:
                self._events.put(Event(RunnerEvent.LOG, line))
        elif line.strip():
            self.log.append(line)
            self._events.put(Event(RunnerEvent.LOG, line))

    def _finalEvent(self, returncode: int) -> Event:
        if self._cancelled:
            return Event(RunnerEvent.CANCELLED, "cancelled")
        if returncode == 0:
            self.fraction = 1.0
            return Event(RunnerEvent.FINISHED, "done", 1.0, dict(self.result))
        message = self._stderr[-1] if self._stderr else f"the background process exited with status {returncode}"
        if returncode < 0:
            detail = f" ({message})" if self._stderr else ""
            message = f"the background process was killed by signal {-returncode}{detail}"
        return Event(RunnerEvent.FAILED, message)

    @property
    def stderrTail(self) -> list[str]:
        return list(self._stderr)
