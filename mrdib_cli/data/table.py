"""``mrdib import table``: any interaction table (CSV, TSV, Parquet, RecBole atomic ``.inter``) as a dataset.

A user's own log rarely comes in a research format, so this importer asks only which columns hold the
user and the item, and optionally the rating, the time and a split. The rows then go through the same
steps as ``prepare``: optional implicit-feedback threshold (``--min-rating``), exact-duplicate removal,
the iterative k-core, numbering by first appearance, and either the given split (a column, with its value
mapping) or one of the per-user schemes. Original ids are kept in ``users.parquet``/``items.parquet`` so
catalogues and feature files can be joined on them later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mrdib_cli.data.dataset_io import interactions_frame, items_frame, users_frame
from mrdib_cli.data.importers import ImportData, publish_import
from mrdib_cli.data.kcore import dedup_mask, factorize, kcore
from mrdib_cli.data.split import LABELS, SCHEMES, assign_split
from mrdib_cli.errors import DataError, MissingInputError, UsageError
from mrdib_cli.workspace import StepResult, Workspace, file_digest

# Spellings of the three splits accepted without a --split-values mapping (compared case-insensitively).
DEFAULT_SPLIT_VALUES = {"train": ("train", "training", "tr"), "valid": ("valid", "val", "validation", "dev"),
                        "test": ("test", "testing", "te")}


@dataclass
class TableOptions:
    """How to read an interaction table; every field changes the result, so all are cache parameters."""

    user: str
    item: str
    rating: str | None = None
    time: str | None = None
    split: str = "mmrec"  # a scheme in split.SCHEMES, or a column name of the table (a given split)
    split_values: dict[str, str] = field(default_factory=dict)  # train/valid/test -> value in the column
    seed: int = 999
    min_rating: float | None = None
    k_core: int = 1

    def validate(self) -> None:
        if self.k_core < 1:
            raise UsageError("--k-core must be >= 1 (1 keeps every user and item)")
        if self.min_rating is not None and self.rating is None:
            raise UsageError("--min-rating needs --rating COL (the column to threshold)")
        bad = set(self.split_values) - set(DEFAULT_SPLIT_VALUES)
        if bad:
            raise UsageError(f"--split-values keys must be train, valid, test (got {sorted(bad)})")


# ------------------------------------------------------------------------------------------- reading
def parse_split_values(spec: str | None) -> dict[str, str]:
    """``train=tr,valid=va,test=te`` -> mapping; the value side is the label used in the file."""
    if not spec:
        return {}
    out = {}
    for part in spec.split(","):
        if "=" not in part:
            raise UsageError(f"--split-values {spec!r}: expected train=VALUE,valid=VALUE,test=VALUE")
        k, v = part.split("=", 1)
        out[k.strip().lower()] = v.strip()
    return out


def read_any_table(path: Path) -> pl.DataFrame:
    """CSV/TSV/RecBole ``.inter``/Parquet by extension; text columns stay strings (ids are never parsed)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"table not found: {path}")
    suffixes = [s.lower() for s in path.suffixes]
    ext = suffixes[-2] if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1 else (suffixes or [""])[-1]
    try:
        if ext in (".parquet", ".pq"):
            return pl.read_parquet(path)
        if ext in (".jsonl", ".ndjson"):
            return pl.read_ndjson(path, infer_schema_length=None)
        if ext not in (".csv", ".tsv", ".tab", ".inter", ".txt"):
            raise UsageError(f"{path}: unknown table type '{ext or path.name}' (use .csv, .tsv, .inter, "
                             ".parquet or .jsonl)")
        sep = "," if ext == ".csv" else "\t"
        df = pl.read_csv(path, separator=sep, infer_schema=False, truncate_ragged_lines=False)
    except UsageError:
        raise
    except Exception as e:  # polars raises several error types for unreadable files
        raise DataError(f"cannot read {path} ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    if ext == ".inter":  # RecBole atomic files name their columns 'user_id:token', 'rating:float', ...
        df = df.rename({c: c.split(":")[0] for c in df.columns})
    return df


def _column(df: pl.DataFrame, col: str, option: str, path: Path) -> pl.Series:
    if col not in df.columns:
        raise UsageError(f"{option} {col!r}: no such column in {path.name} (columns: {', '.join(df.columns)})")
    return df[col]


def _ids(s: pl.Series, option: str, path: Path) -> np.ndarray:
    s = s.cast(pl.Utf8)
    if s.null_count():
        raise DataError(f"{path}: {s.null_count()} rows have no {option.removeprefix('--')} id "
                        f"(column {s.name!r}); drop or fill them")
    return s.to_numpy().astype(object)


def _numbers(s: pl.Series, what: str, path: Path) -> np.ndarray:
    """Numeric values (int/float text accepted); one line naming the first bad value otherwise."""
    got = s.cast(pl.Float64, strict=False)
    bad = got.is_null() & s.is_not_null()
    if bad.any():
        first = s.filter(bad)[0]
        raise DataError(f"{path}: {what} column {s.name!r} has a non-numeric value {first!r} "
                        f"({int(bad.sum())} rows); fix the column or leave the option out")
    return got.to_numpy()


def _timestamps(s: pl.Series, path: Path) -> np.ndarray:
    """int64 times: numbers as given (seconds, milliseconds, positions), or ISO dates as Unix seconds."""
    if s.dtype in (pl.Datetime, pl.Date):
        return s.cast(pl.Datetime("ms")).dt.epoch("s").to_numpy()
    num = s.cast(pl.Float64, strict=False)
    if num.null_count() > s.null_count():
        try:
            dt = s.cast(pl.Utf8).str.to_datetime(strict=False)
        except pl.exceptions.ComputeError:  # no date format fits any value
            dt = pl.Series(s.name, [None] * len(s), dtype=pl.Datetime("us"))
        if dt.null_count() > s.null_count():
            first = s.filter(num.is_null() & dt.is_null() & s.is_not_null())[0]
            raise DataError(f"{path}: time column {s.name!r} has {first!r}, neither a number nor an ISO "
                            "date; fix the column or leave --time out")
        return dt.dt.epoch("s").to_numpy()
    if num.null_count():
        raise DataError(f"{path}: {num.null_count()} rows have no time in column {s.name!r}; fill them or "
                        "leave --time out")
    return num.to_numpy().astype(np.int64)


def _given_split(s: pl.Series, mapping: dict[str, str], path: Path) -> np.ndarray:
    """Split codes (0 train, 1 valid, 2 test) from a column, through the user's or the default mapping."""
    vals = s.cast(pl.Utf8).to_numpy().astype(object)
    code = np.full(len(vals), -1, dtype=np.int64)
    for k, name in enumerate(("train", "valid", "test")):
        accepted = {mapping[name]} if name in mapping else set(DEFAULT_SPLIT_VALUES[name])
        low = {a.lower() for a in accepted}
        hit = np.fromiter((v is not None and str(v).strip().lower() in low for v in vals), bool, len(vals))
        code[hit & (code < 0)] = k
    if (code < 0).any():
        unknown = sorted({str(v) for v in vals[code < 0]})[:5]
        raise DataError(f"{path}: split column {s.name!r} has values {unknown} that are not train/valid/test; "
                        "map them with --split-values train=A,valid=B,test=C")
    return code


def read_table(path: Path, opts: TableOptions) -> ImportData:
    """Filter, deduplicate, k-core, number and split one interaction table."""
    opts.validate()
    path = Path(path)
    df = read_any_table(path)
    if df.height == 0:
        raise DataError(f"{path}: the table has no rows")
    users = _ids(_column(df, opts.user, "--user", path), "--user", path)
    items = _ids(_column(df, opts.item, "--item", path), "--item", path)
    rating = _numbers(_column(df, opts.rating, "--rating", path), "rating", path) if opts.rating else None
    ts = _timestamps(_column(df, opts.time, "--time", path), path) if opts.time else None
    given = opts.split not in SCHEMES
    if given:
        if opts.split not in df.columns:
            raise UsageError(f"--split {opts.split!r} is neither a scheme ({', '.join(SCHEMES)}) nor a column of "
                             f"{path.name} (columns: {', '.join(df.columns)})")
        code_all = _given_split(_column(df, opts.split, "--split", path), opts.split_values, path)
    elif opts.split_values:
        raise UsageError("--split-values maps the values of a split column; give that column with --split COL")
    keep = np.ones(df.height, dtype=bool)
    if opts.min_rating is not None:
        keep &= np.nan_to_num(rating, nan=-np.inf) >= opts.min_rating
    rows = np.flatnonzero(keep)
    n_below = int(df.height - len(rows))
    u_codes, u_vals = factorize(users)
    i_codes, i_vals = factorize(items)
    t_key = ts if ts is not None else np.zeros(df.height, dtype=np.int64)
    first = dedup_mask(u_codes[rows], i_codes[rows], t_key[rows])
    n_dups = int((~first).sum())
    rows = rows[first]
    kc = kcore(u_codes[rows], i_codes[rows], opts.k_core)
    if len(kc.keep) == 0:
        raise DataError(f"no interactions left after the {opts.k_core}-core of {len(rows):,} rows; lower --k-core")
    rows = rows[kc.keep]
    if given:
        code = code_all[rows]
        split = {"scheme": "given", "from": f"column '{opts.split}'", "seed": None,
                 "values": opts.split_values or {k: list(v) for k, v in DEFAULT_SPLIT_VALUES.items()}}
    else:
        code = assign_split(kc.user_idx, ts[rows] if ts is not None else None, opts.split, opts.seed)
        split = {"scheme": opts.split, "seed": opts.seed}
    order = np.argsort(kc.user_idx, kind="stable")
    inter = interactions_frame(kc.user_idx[order], kc.item_idx[order], LABELS[code[order]],
                               rating[rows][order] if rating is not None else None,
                               ts[rows][order] if ts is not None else None)
    n_users, n_items = len(kc.user_codes), len(kc.item_codes)
    extra = {"k_core": opts.k_core, "n_raw_rows": int(df.height), "n_below_min_rating": n_below,
             "n_duplicates_dropped": n_dups, "k_core_passes": kc.passes, "params": asdict(opts)}
    return ImportData(
        inter=inter, n_users=n_users, n_items=n_items,
        items=items_frame(n_items, asin=[str(v) for v in i_vals[kc.item_codes]]),
        users=users_frame(n_users, [str(v) for v in u_vals[kc.user_codes]]),
        source={"format": "table", "path": str(path.resolve()), "columns": {
            "user": opts.user, "item": opts.item, "rating": opts.rating, "time": opts.time}},
        split=split, extra=extra)


def import_table(ws: Workspace, path: Path, name: str, opts: TableOptions, *,
                 force: bool = False) -> tuple[StepResult, dict[str, Any]]:
    """Import ``path`` as dataset ``name`` (cached on the file's digest and the options), make it active."""
    opts.validate()
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"table not found: {path}")
    path = path.resolve()
    inputs = {f"file:{path.name}": file_digest(path)}
    params = {"format": "table", "path": str(path), **asdict(opts)}
    return publish_import(ws, name, inputs, params, lambda: read_table(path, opts), force=force)
