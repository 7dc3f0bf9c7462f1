"""Ctrl-C: every command says it was interrupted in one line (exit 130), once per key press."""

from __future__ import annotations

import os
import signal
import time

import pytest


def test_ctrl_c_inside_a_command_is_one_line_with_exit_130(monkeypatch, capsys) -> None:
    """typer turns a KeyboardInterrupt inside a command into a silent exit 130; the command group catches it
    first, so the user reads why the command ended."""
    import mrdib_cli.cli.app as appmod

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(appmod, "set_globals", interrupted)  # runs inside the group, before any command
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as ex:
        appmod.main(["doctor"])
    assert ex.value.code == 130
    err = capsys.readouterr().err
    assert err.strip() == "error: interrupted", err
    assert signal.getsignal(signal.SIGINT) is before  # the process's handler is back


def _presses(monkeypatch, at: list[float]) -> int:
    """KeyboardInterrupts raised by SIGINTs sent to this process at the (monotonic clock) times ``at``."""
    from mrdib_cli import job

    now = [0.0]
    monkeypatch.setattr(job, "_clock", lambda: now[0])
    raised = 0
    with job.one_interrupt_per_press():
        for t in at:
            now[0] = t
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler runs at the next bytecode boundary
            except KeyboardInterrupt:
                raised += 1
    return raised


def test_a_ctrl_c_delivered_twice_interrupts_once(monkeypatch) -> None:
    """A terminal signals the whole process group and a wrapper in it (``timeout``) passes the signal on: the
    same key press arrives twice, and the second copy must not abort the stop the first began (a stopped run
    evaluates the test split and writes results.json). A later Ctrl-C still interrupts."""
    from mrdib_cli.job import REPEATED_INTERRUPT_S as gap

    before = signal.getsignal(signal.SIGINT)
    assert _presses(monkeypatch, [100.0, 100.0 + gap / 10]) == 1
    assert _presses(monkeypatch, [100.0, 100.0 + gap / 10, 100.0 + 2 * gap, 100.0 + 2.05 * gap]) == 2
    assert signal.getsignal(signal.SIGINT) is before


def test_the_launcher_adds_nothing_to_what_rank_0_said(tmp_path) -> None:
    """Rank 0 of an interrupted run prints how to continue and leaves an empty note: the launcher, stopped by
    the same Ctrl-C, then ends quietly instead of adding "interrupted" (the other ranks' notes of that say
    nothing more), but still reports another rank's real error."""
    from mrdib_cli.job import ALREADY_SAID, INTERRUPTED
    from mrdib_cli.launch import _worker_errors

    def notes(**by_rank: str) -> str | None:
        for f in tmp_path.iterdir():
            f.unlink()
        for r, note in by_rank.items():
            (tmp_path / r.lstrip("r")).write_text(note)
        return _worker_errors(str(tmp_path))

    assert notes(r0=ALREADY_SAID, r1=INTERRUPTED) == ALREADY_SAID
    assert notes(r0=ALREADY_SAID) == ALREADY_SAID
    assert notes(r0=INTERRUPTED, r1=INTERRUPTED) == INTERRUPTED
    assert notes(r0=ALREADY_SAID, r1="lost contact with another rank") == "lost contact with another rank"
    assert notes() is None


def test_a_write_failure_outside_the_workdir_is_not_blamed_on_it(monkeypatch, capsys, tmp_path) -> None:
    """EACCES on an --out path outside the workdir: the advice names that folder, not --workdir/MRDIB_HOME."""
    import errno
    from types import SimpleNamespace

    import mrdib_cli.cli.app as appmod
    import mrdib_cli.cli.common as common

    monkeypatch.setattr(common, "ws", lambda: SimpleNamespace(root=tmp_path / "wd"))
    for path, advice in ((tmp_path / "elsewhere" / "r.md", "make that folder writable or write elsewhere"),
                         (tmp_path / "wd" / "runs" / "x", "make the workdir writable")):
        with pytest.raises(SystemExit):
            appmod._write_failure(errno.EACCES, "Permission denied", str(path), False)
        assert advice in capsys.readouterr().err
