"""How many CPU threads a compute call should use on this machine right now.

Shared by training (torch) and evaluation (FAISS): both run OpenMP-style thread teams whose threads spin at
barriers, so on a machine whose cores are already busy (a shared server, CI runners, a second job) more
threads make a step slower *and* burn more CPU. Taking the cores that are free is the default everywhere.
"""

from __future__ import annotations

import os


def auto_threads(max_threads: int | None = None) -> int:
    """The cores not already busy (cores minus the 1-minute load average, plus one), at least 1 and at
    most ``max_threads`` (default: all cores).

    Two spinning threads on two busy cores were measured 2x slower and 2x more CPU than one thread (FAISS,
    Baby-sized evaluation: 2.3 s vs 1.1 s wall at load 15 on 2 cores; LightGCN training on Baby: 16-29 s
    per epoch against 1.8 s). On an idle machine this returns all cores.
    """
    cores = os.cpu_count() or 1
    cap = cores if max_threads is None else max(1, int(max_threads))
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return cap
    return max(1, min(cap, int(round(cores - load)) + 1))


def choose_threads(requested: int | None) -> tuple[int, str]:
    """``requested`` threads if given (> 0), else :func:`auto_threads`; with the reason, for the line a
    command prints about it (a user on a busy machine should see why a run is single-threaded)."""
    if requested:
        return int(requested), "--threads"
    n = auto_threads()
    try:
        load = f"{os.getloadavg()[0]:.1f}"
    except OSError:
        load = "unknown"
    return n, f"auto from load {load} on {os.cpu_count() or 1} cores; --threads N overrides"
