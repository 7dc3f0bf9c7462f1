"""Importers for the formats researchers already have: MMRec, LATTICE and RecBole sequential folders.

Each importer keeps the split exactly as given (duplicate user-item rows are kept and counted), checks
that ids are contiguous, turns feature files found beside the interactions into feature tables with
provenance "imported from <file>", and writes a dataset folder through :func:`publish_dataset`.
Feature ``.npy`` files are loaded with ``allow_pickle=False``: a pickled file is refused, never unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl

from mrdib_cli.data.dataset_io import (CORE_FILES, ImportedFeature, discard_if_unpublished, interactions_frame, items_frame,
                                       make_card, publish_dataset, users_frame)
from mrdib_cli.errors import DataError, MissingInputError, UsageError
from mrdib_cli.data.feature_store import check_vectors
from mrdib_cli.workspace import StepResult, Workspace, cached_step, file_digest, read_json

FORMATS = ("mmrec", "lattice", "recbole")


@dataclass
class ImportData:
    """What an importer read, before it is written as a dataset."""

    inter: pl.DataFrame
    n_users: int
    n_items: int
    items: pl.DataFrame
    users: pl.DataFrame
    features: list[ImportedFeature] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- helpers
def _require_dir(d: Path) -> Path:
    d = Path(d)
    if not d.is_dir():
        raise MissingInputError(f"import folder not found: {d}")
    return d


def _check_contiguous(ids: np.ndarray, n: int, what: str, where: str, fix: str) -> None:
    """Ids must be 0..n-1 (with n known) or cover 0..max: gaps would silently create phantom rows."""
    if len(ids) == 0:
        return
    if ids.min() < 0:
        raise DataError(f"{where}: negative {what} id {int(ids.min())}; ids must be 0-based")
    if ids.max() >= n:
        raise DataError(f"{where}: {what} id {int(ids.max())} is outside 0..{n - 1} given by the id map")


def _contiguous_count(ids: np.ndarray, what: str, where: str, fix: str) -> int:
    """n = max+1, but only if every id in 0..max occurs; otherwise the ids are not an index."""
    if len(ids) == 0:
        raise DataError(f"{where}: no {what}s found")
    if ids.min() < 0:
        raise DataError(f"{where}: negative {what} id {int(ids.min())}; ids must be 0-based")
    n = int(ids.max()) + 1
    present = np.zeros(n, dtype=bool)
    present[ids] = True
    if not present.all():
        missing = np.flatnonzero(~present)
        raise DataError(f"{where}: {what} ids are not contiguous ({len(missing)} of 0..{n - 1} never occur, "
                        f"first {int(missing[0])}); {fix}")
    return n



def _entity_count(ids: np.ndarray, id_map: dict | None, what: str, where: str, fix: str) -> int:
    """How many users/items: the id map's size when one is given (ids must fall inside it), else the ids
    must be contiguous 0..max themselves."""
    if id_map is None:
        return _contiguous_count(ids, what, where, fix)
    _check_contiguous(ids, len(id_map), what, where, fix)
    return len(id_map)

def _id_map(path: Path, what: str) -> dict[str, int]:
    """A raw-id -> index map whose values must be exactly 0..n-1."""
    if path.suffix == ".json":
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path} is not valid JSON ({e})") from None
        m = {str(k): int(v) for k, v in m.items()}
    else:
        df = _read_tsv(path, has_header=path.suffix == ".csv", n_cols=2)
        m = dict(zip(df[:, 0].cast(pl.Utf8).to_list(), df[:, 1].cast(pl.Int64).to_list()))
    vals = np.fromiter(m.values(), dtype=np.int64, count=len(m))
    if len(vals) and not np.array_equal(np.sort(vals), np.arange(len(vals))):
        raise DataError(f"{path}: {what} ids are not contiguous 0..{len(vals) - 1}; re-index the map")
    return m


def _invert(m: dict[str, int], n: int) -> list[str | None]:
    out: list[str | None] = [None] * n
    for k, v in m.items():
        out[v] = k
    return out


def _read_tsv(path: Path, *, has_header: bool, n_cols: int | None = None) -> pl.DataFrame:
    try:
        df = pl.read_csv(path, separator="\t", has_header=has_header, quote_char=None,
                         infer_schema=False, truncate_ragged_lines=False)
    except Exception as e:  # polars raises ComputeError / NoDataError etc.
        raise DataError(f"cannot parse {path} as tab-separated text ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120]})") from None
    if n_cols is not None and df.width < n_cols:
        raise DataError(f"{path}: expected {n_cols} tab-separated columns, found {df.width}")
    return df


def load_npy_features(path: Path, n_items: int | None) -> np.ndarray:
    """A float32 feature matrix from ``.npy`` without ever unpickling (rows checked against ``n_items``)."""
    return check_vectors(read_npy(path).astype(np.float32), n_items, str(path))


def read_npy(path: Path) -> np.ndarray:
    """A numeric ``.npy`` array as stored; a pickled (object) file is refused, never unpickled."""
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise DataError(f"{path} is a pickled .npy (object array); mrdib never unpickles data files: "
                            "re-save it with np.save(path, np.asarray(feats, dtype=np.float32))") from None
        raise DataError(f"{path} is not a readable .npy file ({e})") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path} is not a readable .npy file ({e})") from None
    if arr.dtype.kind not in "fiu":
        raise DataError(f"{path}: expected a numeric feature matrix, got dtype {arr.dtype}")
    return arr


def load_raw_float32(path: Path, dim: int, n_items: int) -> np.ndarray:
    """Headerless float32 rows (RecBole/UniSRec ``.feat*CLS``)."""
    size = path.stat().st_size
    if size % (4 * dim):
        raise DataError(f"{path}: {size} bytes is not a whole number of {dim}-d float32 rows; "
                        "check --feature-dim")
    arr = np.fromfile(path, dtype=np.float32).reshape(-1, dim)
    return check_vectors(arr, n_items, str(path))


# ------------------------------------------------------------------------------------------- MMRec
def read_mmrec(d: Path) -> ImportData:
    """An MMRec data folder: ``<name>.inter`` (userID itemID rating timestamp x_label) and optional extras."""
    d = _require_dir(d)
    inters = sorted(d.glob("*.inter"))
    if not inters:
        raise MissingInputError(f"{d}: no <name>.inter file (MMRec format: tab-separated userID, itemID, "
                                "rating, timestamp, x_label)")
    if len(inters) > 1:
        pref = [p for p in inters if p.stem == d.name]
        if len(pref) != 1:
            raise UsageError(f"{d}: several .inter files ({', '.join(p.name for p in inters)}); "
                             "keep one per folder")
        inters = pref
    path = inters[0]
    df = _read_tsv(path, has_header=True)
    need = {"userID", "itemID", "x_label"}
    if not need <= set(df.columns):
        raise DataError(f"{path}: header must contain {sorted(need)}, found {df.columns}")
    for col in ("userID", "itemID", "x_label"):
        if df[col].null_count():
            row = int(df[col].is_null().arg_max()) + 2  # 1-based, after the header
            raise DataError(f"{path}: empty {col} on line {row}; every row needs an integer {col}")
    try:
        users = df["userID"].cast(pl.Int64).to_numpy()
        items = df["itemID"].cast(pl.Int64).to_numpy()
        label = df["x_label"].cast(pl.Int64).to_numpy()
        rating = df["rating"].cast(pl.Float64).to_numpy() if "rating" in df.columns else None
        ts = df["timestamp"].cast(pl.Float64).cast(pl.Int64).to_numpy() if "timestamp" in df.columns else None
    except pl.exceptions.PolarsError as e:
        raise DataError(f"{path}: non-numeric ids or labels ({str(e).splitlines()[0][:120]})") from None
    if not np.isin(label, [0, 1, 2]).all():
        raise DataError(f"{path}: x_label must be 0 (train), 1 (valid) or 2 (test)")
    imap = _id_map(d / "i_id_mapping.csv", "item") if (d / "i_id_mapping.csv").exists() else None
    umap = _id_map(d / "u_id_mapping.csv", "user") if (d / "u_id_mapping.csv").exists() else None
    fix = "re-index to 0..n-1 or add the id mapping file"
    n_items = _entity_count(items, imap, "item", str(path), fix)
    n_users = _entity_count(users, umap, "user", str(path), fix)
    split = np.array(["train", "valid", "test"])[label]
    inter = interactions_frame(users, items, split, rating, ts)
    features = []
    for fname, modality in (("image_feat.npy", "image"), ("text_feat.npy", "text")):
        if (d / fname).exists():
            vec = load_npy_features(d / fname, n_items)
            features.append(ImportedFeature(modality, vec, fname, f"imported-{Path(fname).stem}"))
    return ImportData(
        inter=inter, n_users=n_users, n_items=n_items,
        items=items_frame(n_items, asin=_invert(imap, n_items) if imap else None),
        users=users_frame(n_users, _invert(umap, n_users) if umap else None),
        features=features, source={"format": "mmrec", "path": str(d), "inter_file": path.name},
        split={"scheme": "given", "from": "x_label", "seed": None})


# ------------------------------------------------------------------------------------------- LATTICE
def _int_id(x: object) -> int:
    """An id as written by LATTICE: an integer or its decimal string (JSON keys are strings). Anything else
    (4.7, true, {"4": 1}) is refused: int() would silently turn it into another id."""
    if isinstance(x, int) and not isinstance(x, bool):
        return x
    if isinstance(x, str) and x.strip().isdigit():
        return int(x)
    raise ValueError(f"id {x!r} is not an integer")


def _id_list(v: object) -> list:
    if not isinstance(v, list):
        raise TypeError(f"expected a list of item ids, got {v!r}")
    return v


def read_lattice(d: Path) -> ImportData:
    """LATTICE-style ``train.json``/``val.json``/``test.json`` (``{"user": [items]}``)."""
    d = _require_dir(d)
    parts_u, parts_i, parts_s = [], [], []
    for fname, split in (("train.json", "train"), ("val.json", "valid"), ("test.json", "test")):
        p = d / fname
        if not p.exists():
            raise MissingInputError(f"{d}: {fname} missing (LATTICE format needs train.json, val.json, test.json)")
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
            us = np.array([_int_id(u) for u in obj for _ in _id_list(obj[u])], dtype=np.int64)
            its = np.array([_int_id(i) for u in obj for i in _id_list(obj[u])], dtype=np.int64)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as e:
            raise DataError(f"{p}: expected {{\"user_id\": [item_id, ...]}} with integer ids ({e})") from None
        parts_u.append(us)
        parts_i.append(its)
        parts_s.append(np.full(len(us), split, dtype=object))
    users, items = np.concatenate(parts_u), np.concatenate(parts_i)
    split = np.concatenate(parts_s)
    imap = _id_map(d / "item2id.json", "item") if (d / "item2id.json").exists() else None
    umap = _id_map(d / "user2id.json", "user") if (d / "user2id.json").exists() else None
    fix = "re-index to 0..n-1 or add item2id.json/user2id.json"
    n_items = _entity_count(items, imap, "item", str(d), fix)
    n_users = _entity_count(users, umap, "user", str(d), fix)
    return ImportData(
        inter=interactions_frame(users, items, split.tolist()), n_users=n_users, n_items=n_items,
        items=items_frame(n_items, asin=_invert(imap, n_items) if imap else None),
        users=users_frame(n_users, _invert(umap, n_users) if umap else None),
        source={"format": "lattice", "path": str(d)},
        split={"scheme": "given", "from": "train/val/test.json", "seed": None})


# ------------------------------------------------------------------------------------------- RecBole
def _recbole_prefix(d: Path) -> str:
    tests = sorted(d.glob("*.test.inter"))
    if not tests:
        raise MissingInputError(f"{d}: no <prefix>.test.inter file (RecBole sequential atomic files)")
    if len(tests) > 1:
        raise UsageError(f"{d}: several .test.inter files ({', '.join(p.name for p in tests)}); keep one prefix")
    return tests[0].name[: -len(".test.inter")]


def _recbole_seq(path: Path) -> tuple[list[str], list[list[str]], list[str]]:
    df = _read_tsv(path, has_header=True, n_cols=3)
    cols = {c.split(":")[0]: c for c in df.columns}
    for need in ("user_id", "item_id_list", "item_id"):
        if need not in cols:
            raise DataError(f"{path}: missing column '{need}' (have {df.columns})")
    seqs = [s.split() if s else [] for s in df[cols["item_id_list"]].fill_null("").to_list()]
    return df[cols["user_id"]].to_list(), seqs, df[cols["item_id"]].to_list()


def _to_index(tokens: np.ndarray, m: dict[str, int], n: int, what: str, where: str) -> np.ndarray:
    """RecBole files hold either the index itself or the raw token; accept both, refuse anything else."""
    mapped = np.array([m.get(t, -1) for t in tokens], dtype=np.int64) if m else np.full(len(tokens), -1)
    miss = mapped < 0
    if miss.any():
        try:
            mapped[miss] = np.array([int(t) for t in tokens[miss]], dtype=np.int64)
        except ValueError:
            bad = tokens[miss][0]
            raise DataError(f"{where}: {what} '{bad}' is neither an index nor in the {what}2index map") from None
    if mapped.min() < 0 or mapped.max() >= n:
        raise DataError(f"{where}: {what} index {int(mapped.max())} outside 0..{n - 1}")
    return mapped


def read_recbole(d: Path, features: dict[str, str] | None = None, feature_dim: int = 512) -> ImportData:
    """RecBole sequential leave-one-out files: the test file's history + target is each user's sequence.

    The last item is test, the second-to-last valid, the rest train. ``timestamp`` holds the position in
    the sequence (the files carry no times), so a temporal resplit keeps the sequence order.
    """
    d = _require_dir(d)
    prefix = _recbole_prefix(d)
    imap_p, umap_p = d / f"{prefix}.item2index", d / f"{prefix}.user2index"
    imap = _id_map(imap_p, "item") if imap_p.exists() else {}
    umap = _id_map(umap_p, "user") if umap_p.exists() else {}
    test_p = d / f"{prefix}.test.inter"
    u_tok, seqs, tgt = _recbole_seq(test_p)
    lens = np.array([len(s) + 1 for s in seqs], dtype=np.int64)
    if (lens < 3).any():
        raise DataError(f"{test_p}: every user needs at least 3 items (train, valid, test) in the sequence")
    flat = np.array([t for s, x in zip(seqs, tgt) for t in (*s, x)], dtype=object)
    if not imap:
        n_items = _contiguous_count(np.array([int(t) for t in flat]), "item", str(test_p),
                                    f"add {prefix}.item2index")
    else:
        n_items = len(imap)
    items = _to_index(flat, imap, n_items, "item", str(test_p))
    u_idx_tok = np.array(u_tok, dtype=object)
    if not umap:
        n_users = _contiguous_count(np.array([int(t) for t in u_idx_tok]), "user", str(test_p),
                                    f"add {prefix}.user2index")
    else:
        n_users = len(umap)
    u_idx = _to_index(u_idx_tok, umap, n_users, "user", str(test_p))
    if len(np.unique(u_idx)) != len(u_idx):
        raise DataError(f"{test_p}: a user has several test rows; expected leave-one-out (one per user)")
    users = np.repeat(u_idx, lens)
    pos = np.arange(len(items)) - np.repeat(np.cumsum(lens) - lens, lens)
    code = np.where(pos == np.repeat(lens - 1, lens), 2, np.where(pos == np.repeat(lens - 2, lens), 1, 0))
    split = np.array(["train", "valid", "test"])[code]
    _check_valid_file(d / f"{prefix}.valid.inter", u_idx, items, lens, imap, umap, n_items, n_users)
    text_col = _recbole_text(d / f"{prefix}.text", imap, n_items)
    feats = []
    for modality, fname in _recbole_feature_files(d, prefix, features or {}).items():
        vec = load_raw_float32(d / fname, feature_dim, n_items)
        feats.append(ImportedFeature(modality, vec, fname, f"imported-{fname.replace('.', '-')}"))
    src = {"format": "recbole", "path": str(d), "prefix": prefix}
    return ImportData(
        inter=interactions_frame(users, items, split, timestamp=pos), n_users=n_users, n_items=n_items,
        items=items_frame(n_items, asin=_invert(imap, n_items) if imap else None, title=text_col),
        users=users_frame(n_users, _invert(umap, n_users) if umap else None), features=feats, source=src,
        split={"scheme": "given", "from": "recbole leave-one-out (last=test, second-to-last=valid)",
               "seed": None},
        extra={"timestamp_kind": "sequence_position"})


def _check_valid_file(p: Path, u_idx: np.ndarray, items: np.ndarray, lens: np.ndarray, imap: dict,
                      umap: dict, n_items: int, n_users: int) -> None:
    """The valid file's targets must be the second-to-last items: catches truncated test histories."""
    if not p.exists():
        return
    vu, _, vt = _recbole_seq(p)
    vu_idx = _to_index(np.array(vu, dtype=object), umap, n_users, "user", str(p))
    vt_idx = _to_index(np.array(vt, dtype=object), imap, n_items, "item", str(p))
    second_last = dict(zip(u_idx.tolist(), items[np.cumsum(lens) - 2].tolist()))
    bad = sum(second_last.get(u) != i for u, i in zip(vu_idx.tolist(), vt_idx.tolist()))
    if bad:
        raise DataError(f"{p}: {bad} valid targets are not the second-to-last item of the test sequence; "
                        "the test histories look truncated (raise MAX_ITEM_LIST_LENGTH when exporting)")


def _recbole_text(p: Path, imap: dict[str, int], n_items: int) -> list[str | None] | None:
    if not p.exists():
        return None
    df = _read_tsv(p, has_header=True, n_cols=2)
    out: list[str | None] = [None] * n_items
    for tok, text in zip(df[:, 0].to_list(), df[:, 1].to_list()):
        idx = imap.get(tok) if imap else (int(tok) if tok.isdigit() else None)
        if idx is not None and 0 <= idx < n_items:
            out[idx] = text.strip() if text else None
    return out


def _recbole_feature_files(d: Path, prefix: str, given: dict[str, str]) -> dict[str, str]:
    """``--feature text=FILE``; otherwise UniSRec/MISSRec's feat1CLS (text) and feat3CLS (image)."""
    out: dict[str, str] = {}
    for modality, fname in given.items():
        if modality not in ("image", "text"):
            raise UsageError(f"--feature {modality}=...: modality must be 'image' or 'text'")
        if not (d / fname).exists():
            raise MissingInputError(f"feature file {d / fname} not found")
        out[modality] = fname
    for modality, suffix in (("text", "feat1CLS"), ("image", "feat3CLS")):
        if modality not in out and (d / f"{prefix}.{suffix}").exists():
            out[modality] = f"{prefix}.{suffix}"
    return out


# ------------------------------------------------------------------------------------------- driver
READERS: dict[str, Callable[..., ImportData]] = {"mmrec": read_mmrec, "lattice": read_lattice,
                                                 "recbole": read_recbole}


def import_dataset(ws: Workspace, fmt: str, directory: Path, name: str, *, force: bool = False,
                   **options: Any) -> tuple[StepResult, dict[str, Any]]:
    """Import ``directory`` as dataset ``name`` (cached on the folder's digest), make it the active one."""
    if fmt not in READERS:
        raise UsageError(f"unknown import format '{fmt}' (choose from {', '.join(FORMATS)})")
    directory = _require_dir(Path(directory)).resolve()
    inputs = {f"file:{p.name}": file_digest(p) for p in sorted(directory.iterdir()) if p.is_file()}
    params = {"format": fmt, "source_dir": str(directory), **options}
    return publish_import(ws, name, inputs, params, lambda: READERS[fmt](directory, **options), force=force)


def publish_import(ws: Workspace, name: str, inputs: dict[str, str], params: dict[str, Any],
                   read: Callable[[], ImportData], *, force: bool = False) -> tuple[StepResult, dict[str, Any]]:
    """The cached ``import`` step every importer ends in: read, build the card, publish, make active.

    ``read`` runs only when ``inputs``/``params`` differ from the last import of ``name``.
    """
    ds_dir = ws.dataset_dir(name)

    def run() -> dict[str, Any]:
        data = read()
        card = make_card(name, data.inter, data.n_users, data.n_items, split=data.split,
                         k_core=data.extra.pop("k_core", None), source={**data.source, "digests": inputs},
                         features=[{"modality": f.modality, "source": f"imported from {f.source_file}",
                                    "dim": int(f.vectors.shape[1])} for f in data.features],
                         **data.extra)
        publish_dataset(ds_dir, data.inter, data.items, data.users, card, data.features, replace_folder=True)
        return {"n_interactions": card["n_interactions"]}

    with discard_if_unpublished(ds_dir):
        res = cached_step("import", ds_dir, inputs, params, run, outputs=list(CORE_FILES), force=force,
                          lock_path=ws.lock("dataset", name))
    ws.set_active_dataset(name, by=f"mrdib import {params['format']}")
    return res, read_json(ds_dir / "dataset.json")
