"""Where this process stands in a multi-process job, read from the environment torchrun sets (``WORLD_SIZE``,
``RANK``, ...). Kept free of torch so that the command line's start-up path can ask without importing it;
:mod:`mrdib_cli.launch` holds everything that needs torch.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

#: set by the ``--nproc``/``--nnodes`` launcher for its workers: a folder where a worker leaves its one-line
#: error (a file named by its rank) instead of printing it, so an error every rank hits (a missing input, a
#: run that exists) is shown once, by the launcher
ERRORS_ENV = "MRDIB_WORKER_ERRORS"

#: set by the launcher for its workers: its process id (see :func:`die_with_launcher`)
LAUNCHER_ENV = "MRDIB_LAUNCHER_PID"


#: a worker's note for the launcher when it has told the user why it ended (rank 0's stopped run): nothing to add
ALREADY_SAID = ""
#: the note of a worker stopped by Ctrl-C
INTERRUPTED = "interrupted"


def leave_error(message: str) -> bool:
    """In a worker started by the launcher: hand ``message`` to it (printed once for every rank); False when it
    must be printed here (started by torchrun directly, or the note could not be written). Here, not with the
    launcher's torch code: a worker interrupted while it starts has not imported torch yet."""
    folder = os.environ.get(ERRORS_ENV)
    if not (folder and launched()):
        return False
    try:
        with open(os.path.join(folder, str(rank())), "w", encoding="utf-8") as f:
            f.write(message)
    except OSError:
        return False
    return True


def world_size() -> int:
    """Processes in the job: torchrun's WORLD_SIZE (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size())) or 1)


def node_rank() -> int:
    """This machine's place among the machines of the job: torchrun's GROUP_RANK (rank 0 runs on machine 0)."""
    return int(os.environ.get("GROUP_RANK", "0") or 0)


def launched() -> bool:
    """True inside a worker started by torchrun (or ``--nproc``) with more than one process."""
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def die_with_launcher() -> None:
    """In a worker of mrdib's launcher: be stopped (SIGTERM) when the launcher ends, however it ends. torchrun
    starts each worker in a session of its own, so a launcher killed outright (``kill -9``, the out-of-memory
    killer) would leave its workers training on in the background, unseen, still writing the run folder; the
    agent's own stop (Ctrl-C, SIGTERM) already stops them. Linux only (``prctl``); elsewhere nothing changes."""
    launcher = os.environ.get(LAUNCHER_ENV)
    if not (launcher and launched() and sys.platform.startswith("linux")):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != launcher:  # the launcher ended before the line above
        os.kill(os.getpid(), signal.SIGTERM)


#: set by the command line for a launcher of ``--nnodes``: it lowered torch's C++ log level (see
#: :func:`quiet_store_warnings`), which the launcher gives back before its workers start
QUIET_ENV = "MRDIB_QUIET_CPP_LOG"


def quiet_store_warnings(argv: list[str]) -> None:
    """In the launcher of a job on several machines, before torch loads (it reads the level once): when another
    machine's launcher goes away, torch's rendezvous store prints C++ warnings with stack traces on this one,
    ahead of the one line that the launcher prints about it. A level the user set is kept, and the workers
    get the user's environment back (:func:`mrdib_cli.launch.launch`)."""
    if "TORCH_CPP_LOG_LEVEL" in os.environ or _option_value(argv, "--nnodes") in (None, "1"):
        return
    os.environ["TORCH_CPP_LOG_LEVEL"] = "ERROR"
    os.environ[QUIET_ENV] = "1"


def _option_value(argv: list[str], name: str) -> str | None:
    """The value of ``name`` on a command line (``NAME VALUE`` or ``NAME=VALUE``), None when absent."""
    for k, a in enumerate(argv):
        if a == name and k + 1 < len(argv):
            return argv[k + 1]
        if a.startswith(name + "="):
            return a[len(name) + 1:]
    return None


def announces() -> bool:
    """Whether this process says what a command resolved before its work starts: a process on its own, the
    launcher of ``--nproc``/``--nnodes`` (its workers resolve the same again and stay quiet), or rank 0 of a
    job that torchrun started directly."""
    return not launched() or (is_main() and ERRORS_ENV not in os.environ)


#: a second SIGINT this soon after the first is the same key press delivered twice: a terminal signals the
#: whole process group, and a wrapper in it (``timeout``, a script's trap) passes the signal on again
REPEATED_INTERRUPT_S = 1.0
_clock = time.monotonic


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a scheduler's stop before its SIGKILL): a stop like Ctrl-C's, so that a
    training run keeps its checkpoint, writes results.json and says how to continue, instead of dying
    without a word; the command then exits with the signal's code, 143."""

    exit_code = 128 + int(signal.SIGTERM)


def stop_exit_code(e: BaseException | None) -> int:
    """The exit code of a stop: 143 after SIGTERM, else 130 (Ctrl-C)."""
    return Terminated.exit_code if isinstance(e, Terminated) else 130


@contextlib.contextmanager
def one_interrupt_per_press() -> Iterator[None]:
    """Within this block a Ctrl-C raises KeyboardInterrupt once per key press, and SIGTERM :class:`Terminated`
    (outside a multi-process job's workers). Why: a stopped training run
    still evaluates the test split and writes results.json, and any command then says it was interrupted; a
    copy of the same Ctrl-C arriving during that work would abort it (a traceback, or nothing written). A
    Ctrl-C that comes later is the user insisting, and interrupts as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    last = [-math.inf]

    def on_interrupt(signum: int, frame: Any) -> None:
        now, seen = _clock(), last[0]
        last[0] = now
        if now - seen >= REPEATED_INTERRUPT_S:
            raise KeyboardInterrupt

    def on_terminate(signum: int, frame: Any) -> None:
        raise Terminated

    signal.signal(signal.SIGINT, on_interrupt)
    # a worker of a multi-process job is stopped with SIGTERM by its agent, which then waits for it: it ends
    # there at once, as before (the launcher says why and how to continue)
    previous_term = None if launched() else signal.signal(signal.SIGTERM, on_terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
