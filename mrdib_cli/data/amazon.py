"""Parsing the raw Amazon 2014 files: JSON-lines reviews and Python-literal metadata.

The 2014 metadata lines are Python dict literals (single quotes, ``u''`` strings), not JSON. They are parsed
with :func:`ast.literal_eval`, which only accepts literals, never with ``eval``. Both files are streamed
line by line; a malformed line is counted and the first few are reported with their line numbers, and
when their share exceeds ``max_malformed`` the step stops with a clear error rather than silently
building a dataset from a damaged file.
"""

from __future__ import annotations

import ast
import gzip
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import polars as pl

from mrdib_cli.errors import DataError

N_EXAMPLES = 5
_ASIN_RE = re.compile(r"""['"]asin['"]\s*:\s*u?['"]([^'"]+)['"]""")


@dataclass
class ParseReport:
    """Malformed-line accounting for one file."""

    path: str
    n_lines: int = 0
    n_bad: int = 0
    examples: list[tuple[int, str]] = field(default_factory=list)

    def bad(self, lineno: int, why: str) -> None:
        self.n_bad += 1
        if len(self.examples) < N_EXAMPLES:
            self.examples.append((lineno, why))

    @property
    def rate(self) -> float:
        return self.n_bad / max(1, self.n_lines)

    def describe(self) -> str:
        ex = "; ".join(f"line {n}: {w}" for n, w in self.examples)
        return f"{self.n_bad} of {self.n_lines} lines malformed in {Path(self.path).name} ({ex})"

    def check(self, max_malformed: float) -> None:
        if self.n_lines == 0:
            raise DataError(f"{self.path} is empty; delete it and download again (or pass a good file "
                            "with --raw-dir)")
        if self.rate > max_malformed:
            raise DataError(f"{self.describe()}; this exceeds --max-malformed {max_malformed:g}: the file is "
                            "damaged or not an Amazon 2014 file")

    def to_dict(self) -> dict[str, Any]:
        return {"lines": self.n_lines, "malformed": self.n_bad,
                "examples": [{"line": n, "error": w} for n, w in self.examples]}


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered text lines of a gzip file; a truncated/corrupt gzip becomes a one-line DataError."""
    try:
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                yield n, line
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(f"{path} is truncated or not a valid gzip file ({e}); delete it and download it "
                        "again, or pass a complete copy with --raw-dir") from None


ReviewRow = tuple[str, str, float | None, int]


def review_row_2014(r: dict[str, Any]) -> ReviewRow:
    """(user, item, rating, time) of one 2014 review; KeyError/TypeError/ValueError mark it malformed."""
    u, i, t = r["reviewerID"], r["asin"], r["unixReviewTime"]
    if not isinstance(u, str) or not isinstance(i, str) or not u or not i:
        raise TypeError("reviewerID/asin must be non-empty strings")
    o = r.get("overall")
    return u, i, None if o is None else float(o), int(t)


def parse_reviews(path: Path, report: ParseReport | None = None,
                  row: Callable[[dict[str, Any]], ReviewRow] = review_row_2014,
                  lines: Callable[[Path], Iterator[tuple[int, str]]] = _lines) -> tuple[pl.DataFrame, ParseReport]:
    """Reviews as a DataFrame (reviewer_id, asin, rating, timestamp) in file order.

    A line that is not JSON, or lacks the user, item or time (``row`` says which fields those are), is
    malformed: a review without a time cannot be deduplicated or split temporally. The rating may be missing.
    """
    rep = report or ParseReport(str(path))
    users: list[str] = []
    items: list[str] = []
    ratings: list[float | None] = []
    times: list[int] = []
    loads = json.loads
    for n, line in lines(path):
        if not line.strip():
            continue
        rep.n_lines += 1
        try:
            u, i, o, t = row(loads(line))
        except json.JSONDecodeError as e:
            rep.bad(n, f"not JSON ({e.msg})")
            continue
        except KeyError as e:
            rep.bad(n, f"missing field {e}")
            continue
        except (TypeError, ValueError, AttributeError) as e:
            rep.bad(n, f"bad value ({e})")
            continue
        users.append(u)
        items.append(i)
        ratings.append(o)
        times.append(t)
    df = pl.DataFrame({"reviewer_id": pl.Series(users, dtype=pl.Utf8), "asin": pl.Series(items, dtype=pl.Utf8),
                       "rating": pl.Series(ratings, dtype=pl.Float64),
                       "timestamp": pl.Series(times, dtype=pl.Int64)})
    return df, rep


def _text(v: Any) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def meta_record(d: dict[str, Any]) -> dict[str, str | None]:
    """The item columns mrdib keeps from one metadata dict (categories as JSON, lossless)."""
    cats = d.get("categories")
    return {
        "title": _text(d.get("title")), "brand": _text(d.get("brand")),
        "categories": json.dumps(cats, ensure_ascii=False) if cats else None,
        "description": _text(d.get("description")), "image_url": _text(d.get("imUrl")),
    }


def literal_dict(line: str) -> dict[str, Any]:
    """One 2014 metadata line: a Python dict literal (not JSON)."""
    d = ast.literal_eval(line.strip())
    if not isinstance(d, dict):
        raise ValueError(f"a {type(d).__name__}, not a dict")
    return d


def parse_meta(path: Path, wanted: Iterable[str] | None = None, report: ParseReport | None = None, *,
               lines: Callable[[Path], Iterator[tuple[int, str]]] = _lines, id_re: re.Pattern[str] = _ASIN_RE,
               id_key: str = "asin", decode: Callable[[str], dict[str, Any]] = literal_dict,
               record: Callable[[dict[str, Any]], dict[str, str | None]] = meta_record,
               what: str = "a Python dict literal") -> tuple[dict[str, dict[str, str | None]], ParseReport]:
    """item id -> item columns, for the ``wanted`` ids (all when None); 2014 by default, other releases pass
    their line reader, id field, decoder and record.

    Full decoding is costly (2014 metadata lines carry long ``related`` lists), so lines of items that are
    not wanted are only checked for a readable id; every wanted line is parsed fully.
    """
    rep = report or ParseReport(str(path))
    want = set(wanted) if wanted is not None else None
    out: dict[str, dict[str, str | None]] = {}
    for n, line in lines(path):
        if not line.strip():
            continue
        rep.n_lines += 1
        m = id_re.search(line)
        if m is None:
            rep.bad(n, f"no {id_key} field")
            continue
        if want is not None and m.group(1) not in want:
            continue
        try:
            d = decode(line)
            out[str(d[id_key])] = record(d)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, KeyError) as e:
            rep.bad(n, f"not {what} ({type(e).__name__})")
    return out, rep


def items_from_meta(asins: np.ndarray | list[str], meta: dict[str, dict[str, str | None]]) -> dict[str, list]:
    """Columns for items.parquet in item-index order (nulls for items without metadata)."""
    cols: dict[str, list] = {k: [] for k in ("title", "brand", "categories", "description", "image_url")}
    empty = dict.fromkeys(cols)
    for a in asins:
        rec = meta.get(a, empty)
        for k in cols:
            cols[k].append(rec[k])
    return cols
