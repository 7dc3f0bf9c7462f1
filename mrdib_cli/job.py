"""Where this process stands in a multi-process job, read from the environment torchrun sets (``WORLD_SIZE``,
``RANK``, ...). Kept free of torch so that the command line's start-up path can ask without importing it;
:mod:`mrdib_cli.launch` holds everything that needs torch.
"""

from __future__ import annotations

import os

#: set by the ``--nproc``/``--nnodes`` launcher for its workers: a folder where a worker leaves its one-line
#: error (a file named by its rank) instead of printing it, so an error every rank hits (a missing input, a
#: run that exists) is shown once, by the launcher
ERRORS_ENV = "MRDIB_WORKER_ERRORS"


def world_size() -> int:
    """Processes in the job: torchrun's WORLD_SIZE (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size())) or 1)


def launched() -> bool:
    """True inside a worker started by torchrun (or ``--nproc``) with more than one process."""
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def announces() -> bool:
    """Whether this process says what a command resolved before its work starts: a process on its own, the
    launcher of ``--nproc``/``--nnodes`` (its workers resolve the same again and stay quiet), or rank 0 of a
    job that torchrun started directly."""
    return not launched() or (is_main() and ERRORS_ENV not in os.environ)
