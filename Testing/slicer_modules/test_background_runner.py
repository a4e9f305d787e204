"""BackgroundRunner with real subprocesses: progress, results, errors, and Cancel leaving no process."""

from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest
from process_helpers import processGroupMembers
from QMRICommonLib.runner import BackgroundRunner, RunnerEvent

SCRIPT = textwrap.dedent("""
    import json, subprocess, sys, time
    mode = sys.argv[1]
    if mode == "spawn":  # a grandchild that would outlive a naive kill of the worker alone
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(f"CHILD {child.pid}", flush=True)
    for i in range(1, 5):
        print(f"PROGRESS {i / 4:.2f} step {i}", flush=True)
        time.sleep(0.05 if mode != "spawn" else 0.2)
    if mode == "fail":
        print("Traceback (most recent call last):", file=sys.stderr)
        print("error: /data/flair.nii.gz: input 1: is 4D (shape (4, 4, 4, 2)); a 3D volume is needed", file=sys.stderr)
        sys.exit(2)
    if mode == "spawn":
        time.sleep(60)
    print("RESULT " + json.dumps({"answer": 42}), flush=True)
""")


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "fake_worker.py"
    path.write_text(SCRIPT)
    return path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def test_progress_then_finished_with_result(script):
    runner = BackgroundRunner([sys.executable, str(script), "ok"]).start()
    assert runner.running and alive(runner.pid)
    events = runner.wait(timeout=30)
    progress = [e for e in events if e.kind is RunnerEvent.PROGRESS]
    assert [e.fraction for e in progress] == [0.25, 0.5, 0.75, 1.0]
    assert progress[0].message == "step 1"
    assert events[-1].kind is RunnerEvent.FINISHED and events[-1].result == {"answer": 42}
    assert not runner.running and runner.poll() == []  # the terminal event comes once


def test_failure_reports_the_last_stderr_line(script):
    runner = BackgroundRunner([sys.executable, str(script), "fail"]).start()
    events = runner.wait(timeout=30)
    assert events[-1].kind is RunnerEvent.FAILED
    assert events[-1].message == "error: /data/flair.nii.gz: input 1: is 4D (shape (4, 4, 4, 2)); a 3D volume is needed"


def test_poll_does_not_block(script):
    runner = BackgroundRunner([sys.executable, str(script), "spawn"]).start()
    try:
        start = time.monotonic()
        runner.poll()
        assert time.monotonic() - start < 0.1
    finally:
        runner.cancel()


def test_cancel_kills_the_whole_process_tree(script):
    runner = BackgroundRunner([sys.executable, str(script), "spawn"]).start()
    child = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and child is None:  # wait until the grandchild exists
        time.sleep(0.05)
        runner.poll()
        child = next((int(line.split()[1]) for line in runner.log if line.startswith("CHILD ")), None)
    assert child is not None and alive(child) and alive(runner.pid)
    pgid = runner.pid
    assert set(processGroupMembers(pgid)) >= {runner.pid, child}
    runner.cancel()
    events = runner.wait(timeout=10)
    assert events[-1].kind is RunnerEvent.CANCELLED
    assert not alive(runner.pid) and not alive(child)
    assert processGroupMembers(pgid) == []  # nothing left but, at most, zombies awaiting their reaper
