"""An independent look at what a background command left running: the live members of its process group,
read from ``/proc`` (Linux), not through psutil, which the runner itself uses to stop them."""

from __future__ import annotations

from pathlib import Path


def processGroupMembers(pgid: int) -> list[int]:
    """PIDs of live (non-zombie) processes in a process group (the runner starts each command in its own)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            members.append(int(entry.name))
    return members
