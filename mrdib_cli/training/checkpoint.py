"""Checkpoints: everything needed to continue a run exactly where it stopped.

``last.pt`` (written atomically after every epoch) holds the model, optimiser and plug-in states, the
torch / CUDA / numpy / Python RNG states, the sampler's generator state, the epoch, the best score and the
patience counter. ``best.pt`` holds the model (and plug-in) state of the best-validation epoch. Only plain
tensors, numbers and strings are stored, so both load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrdib_cli.errors import DataError
from mrdib_cli.workspace import atomic_path

FORMAT = 1


def rng_state() -> dict[str, Any]:
    """All global RNG states as plain types (tensors, JSON strings)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": json.dumps(random.getstate()),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`. RNG states must be CPU ByteTensors whatever device the checkpoint was mapped to."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))


def save(path: Path, obj: dict[str, Any]) -> None:
    """torch.save to a temp file, then rename: a crash never leaves a truncated checkpoint."""
    with atomic_path(path) as tmp:
        try:
            torch.save({"format": FORMAT, **obj}, tmp)
        except RuntimeError as e:
            raise _write_failure(tmp, path, e) from None


def _write_failure(tmp: Path, path: Path, e: RuntimeError) -> Exception:
    """torch's writer reports a failed write as '[enforce fail ...] unexpected pos' without the cause;
    appending one byte to the same file reproduces the operating system's error (ENOSPC, EFBIG...)."""
    try:
        with open(tmp, "ab") as fh:
            fh.write(b"\0")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as os_err:
        return OSError(os_err.errno, os_err.strerror, str(path))
    return DataError(f"cannot write checkpoint {path} ({str(e).splitlines()[0][:200]})")


def saved_epoch(path: Path) -> int | None:
    """The epoch a checkpoint holds, read without loading its tensors (memory-mapped), for checks made
    before a run starts; None when there is no readable checkpoint (the run itself then says why)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:  # absent or damaged: refused, with the reason, when the run opens it
        return None


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        why = str(e).splitlines()[0].split(". ")[0][:160]  # torch appends a paragraph about miniz
        raise DataError(f"cannot read checkpoint {path} ({type(e).__name__}: {why}); it is damaged: restore the "
                        "run's own file, or train the run again with --force") from None
    if obj.get("format") != FORMAT:
        raise DataError(f"checkpoint {path} has format {obj.get('format')}, expected {FORMAT}")
    return obj
