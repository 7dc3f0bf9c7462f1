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
from mrdib_cli.defaults import settled_train
from mrdib_cli.workspace import digest_obj

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


def identity_fields(conf: dict[str, Any]) -> dict[str, Any]:
    """What makes a run that run: the data, the model and the training options that shape the steps (not the
    device, threads or the number of epochs). A resume must not change it; the files a run writes carry its
    digest (:func:`run_identity`), so that a file copied in from another run is refused where it is read."""
    keep = {k: conf[k] for k in ("dataset_digest", "backbone", "hparams", "plugin", "features")}
    if conf.get("feature_digests"):  # runs without feature tables keep their earlier identity
        keep["feature_digests"] = conf["feature_digests"]
    keep["train"] = settled_train(conf["train"], ("device", "threads", "epochs"))
    return keep


def run_identity(conf: dict[str, Any]) -> str:
    """:func:`identity_fields` of a run's ``config.json`` as one digest."""
    return digest_obj(identity_fields(conf))


def foreign_file(path: Path, run: str) -> str:
    """The refusal of a run's file whose identity is not the run's."""
    return (f"{path} was written by another run than '{run}' (its options, seed or data differ from config.json, "
            "or one of them was copied or edited); restore this run's own files, or train it again with --force")
