"""Writers for the raw Amazon 2014 formats (used by the demo generator, tests and benchmarks).

Reviews are gzipped JSON lines; metadata lines are Python dict literals (``repr`` of a dict), exactly the
quirk of the 2014 release that ``prepare`` must parse safely.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterable

from mrdib_cli.workspace import atomic_path


def write_reviews(path: Path, reviews: Iterable[dict[str, Any]]) -> Path:
    with atomic_path(path) as tmp:
        with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=5, newline="\n") as fh:
            for r in reviews:
                fh.write(json.dumps(r) + "\n")
    return path


def write_meta(path: Path, metas: Iterable[dict[str, Any]]) -> Path:
    with atomic_path(path) as tmp:
        with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=5, newline="\n") as fh:
            for m in metas:
                fh.write(repr(m) + "\n")
    return path
