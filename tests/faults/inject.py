"""Run the mrdib CLI with one fault injected from outside the production code.

``MRDIB_TEST_FAULT`` holds a JSON spec (or a list of specs)::

    {"target": "mrdib_cli.data.dataset_io._write_parquet",   # module attribute (or "os.replace")
     "nth": 2,                # act on the n-th matching call (1-based)
     "match": "items.parquet",  # only calls whose repr(args) contains this text count (optional)
     "when": "before",        # act before or after the real call
     "action": "kill"}        # kill (SIGKILL itself), enospc, eacces, sleep:<s>, oom, raise:<Module.Exc>,
                              # nan (multiply the returned dict of loss tensors by NaN),
                              # devfull (the path a tempfile.mkstemp call returns becomes a link to /dev/full,
                              # so the real writer that follows fails with a genuine ENOSPC)

The wrapper replaces the attribute on its module, so it catches every call that looks the name up through
that module (``os.replace`` everywhere; module-level helpers called from their own module). Nothing in
``mrdib_cli`` knows about it: the production code has no fault hooks. Usage::

    MRDIB_TEST_FAULT='{...}' python tests/faults/inject.py prepare demo ...
"""

from __future__ import annotations

import errno
import functools
import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _resolve(target: str):
    """(owner object, attribute name) for a dotted target, importing the longest module prefix."""
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for p in parts[cut:-1]:
            owner = getattr(owner, p)
        return owner, parts[-1]
    raise ImportError(target)


def _act(action: str, args: tuple) -> None:
    if action == "kill":
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    # the file the operating system would name: the call's first path argument (a writer's data comes first)
    path = next((str(a) for a in args if isinstance(a, (str, os.PathLike))), None)
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    if action == "eacces":
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
    if action.startswith("sleep:"):
        marker = os.environ.get("MRDIB_TEST_FAULT_MARKER")
        if marker:
            Path(marker).write_text("in fault point")
        time.sleep(float(action.split(":", 1)[1]))
        return
    if action == "oom":
        import torch

        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
    if action.startswith("raise:"):
        mod, _, name = action[6:].rpartition(".")
        raise getattr(importlib.import_module(mod), name)("injected fault")
    raise ValueError(f"unknown fault action {action!r}")


def install(spec: dict) -> None:
    owner, name = _resolve(spec["target"])
    real = getattr(owner, name)
    nth, match = int(spec.get("nth", 1)), spec.get("match")
    when, action = spec.get("when", "before"), spec["action"]
    seen = {"n": 0}

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        hit = False
        if match is None or match in repr(args) + repr(kwargs):
            seen["n"] += 1
            hit = seen["n"] == nth
        if hit and when == "before" and action not in ("nan", "devfull"):
            _act(action, args)
        result = real(*args, **kwargs)
        if hit and action == "nan":  # poison a returned dict of loss tensors
            return {k: v * float("nan") for k, v in result.items()}
        if hit and action == "devfull":  # (fd, path) of mkstemp: the writer will open /dev/full
            os.unlink(result[1])
            os.symlink("/dev/full", result[1])
        if hit and when == "after" and action != "devfull":
            _act(action, args)
        return result

    setattr(owner, name, wrapper)


def main() -> None:
    sys.path.insert(0, str(ROOT))
    raw = os.environ.get("MRDIB_TEST_FAULT")
    if raw:
        specs = json.loads(raw)
        for spec in specs if isinstance(specs, list) else [specs]:
            install(spec)
    from mrdib_cli.cli.app import main as cli_main

    sys.argv = ["mrdib", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
