"""Memory and CPU readings of running processes from Linux's /proc, for the supervisor and the
benchmark. Elsewhere, and for processes that have exited, every reading is 0."""

from __future__ import annotations

import os

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def peak_rss_bytes(pid: int) -> int:
    """Return the peak resident memory (VmHWM) of a process."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0
    return 0


def cpu_seconds(pid: int) -> float:
    """Return the CPU time (user and system) a process has used so far."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # utime and stime are fields 14 and 15 of /proc/PID/stat (proc(5)), so 11 and 12 from zero
    # after the command name.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """Return the CPU time of a process and of all its descendants that are still running."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0.0
    for entry in entries:
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        total += cpu_seconds(current)
        pending.extend(children.get(current, []))
    return total


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as stat:
            text = stat.read()
    except OSError:
        return None
    # The command name sits in parentheses and may itself contain spaces or parentheses.
    return text[text.rfind(")") + 2 :].split()
