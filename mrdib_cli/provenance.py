"""Which code produced an artefact: the package and torch versions and, in a git checkout, the commit and
whether the package's source had uncommitted changes.

Stored in every run's ``config.json``: float results of a retrained run can differ because the code changed,
the device changed (CPU vs GPU rounding), or neither; without the commit there is no telling which.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

import torch

from mrdib_cli import __version__

_SRC = Path(__file__).resolve().parent


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(_SRC), *args], capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """{"mrdib", "torch", "git_commit", "git_dirty"}; the git fields are None outside a checkout of this
    package (an installed wheel) or without git. Dirty means uncommitted changes under ``mrdib_cli/`` only:
    docs, tests and benchmarks do not change what a run computes."""
    out: dict[str, Any] = {"mrdib": __version__, "torch": torch.__version__, "git_commit": None, "git_dirty": None}
    try:
        if Path(_git("rev-parse", "--show-toplevel")).resolve() != _SRC.parent:
            return out  # some other repository that happens to contain the installed package
        out["git_commit"] = _git("rev-parse", "HEAD")
        out["git_dirty"] = bool(_git("status", "--porcelain", "--untracked-files=no", "--", str(_SRC)))
    except (OSError, subprocess.SubprocessError):
        pass
    return out
