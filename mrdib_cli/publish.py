"""Results made of several files, published as one unit.

Each file is renamed into place on its own, so a crash (or a full disk) between two renames leaves a set
whose parts come from different runs of the step. The unit's index (a JSON file) is therefore written
last and records every part's digest; readers trust the set only when each part still matches, and treat
anything else as "not written yet" rather than mixing two results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mrdib_cli.workspace import atomic_write_json, file_digest, read_json

PARTS = "parts"


def write_index(path: Path, body: dict[str, Any], parts: list[Path]) -> None:
    """Write ``body`` to ``path`` (atomically, last), naming each part file (beside it) and its digest."""
    atomic_write_json(path, {**body, PARTS: {p.name: file_digest(p) for p in parts}})


def read_index(path: Path) -> dict[str, Any] | None:
    """The index at ``path`` when it and all of its parts are intact, else None (absent, torn or mixed)."""
    try:
        body = read_json(path)
        parts = body[PARTS]
        intact = all(file_digest(path.parent / name) == digest for name, digest in parts.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return body if intact else None
