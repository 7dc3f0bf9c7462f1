"""Writers for the raw Amazon 2014 formats (used by the demo generator, tests and benchmarks).

Reviews are gzipped JSON lines; metadata lines are Python dict literals (``repr`` of a dict), exactly the
quirk of the 2014 release that ``prepare`` must parse safely. The gzip header carries no time stamp or
file name, so the same content always gives the same bytes (and the same digests in dataset cards).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, TextIO

from mrdib_cli.workspace import atomic_path


@contextlib.contextmanager
def _gzip_text(path: Path) -> Iterator[TextIO]:
    """A text writer into a reproducible gzip file (mtime 0, no name in the header)."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=5,
                                                mtime=0) as gz, \
            io.TextIOWrapper(gz, encoding="utf-8", newline="\n") as fh:
        yield fh


def write_reviews(path: Path, reviews: Iterable[dict[str, Any]]) -> Path:
    with atomic_path(path) as tmp:
        with _gzip_text(tmp) as fh:
            for r in reviews:
                fh.write(json.dumps(r) + "\n")
    return path


def write_meta(path: Path, metas: Iterable[dict[str, Any]]) -> Path:
    with atomic_path(path) as tmp:
        with _gzip_text(tmp) as fh:
            for m in metas:
                fh.write(repr(m) + "\n")
    return path
