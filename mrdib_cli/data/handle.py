"""The dataset handle: the one way every consumer reads a prepared dataset.

A prepared dataset is a folder with ``interactions.parquet`` (user_idx, item_idx, rating, timestamp,
split), ``items.parquet``, ``users.parquet``, ``dataset.json`` (the dataset card) and optional
``features/*.parquet``. Consumers never open those files directly: they ask the handle for interaction
pairs or sparse matrices by split, and for feature matrices by modality, so the on-disk format can evolve
in one place.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import polars as pl
import scipy.sparse as sp
from polars.exceptions import PanicException

from mrdib_cli.errors import DataError, MissingInputError
from mrdib_cli.data.feature_store import FeatureTable, read_feature_table, select_table
from mrdib_cli.workspace import Workspace, file_digest, read_json

SPLITS = ("train", "valid", "test")
INTERACTIONS = "interactions.parquet"
ITEMS = "items.parquet"
USERS = "users.parquet"
CARD = "dataset.json"
# present while prepare swaps the core files one by one; a dataset that has it is a mix of two builds
PUBLISHING = ".publishing"


# the steps that write a dataset's core files, and what a user runs to rebuild them
BUILD_STEPS = {"prepare": "re-run the prepare command that built it", "import": "re-run the import",
               "resplit": "re-run the resplit", "items": "re-run 'mrdib items attach'"}
_REBUILD = {"features": "re-run 'mrdib extract-features' with --force", "graph": "re-run 'mrdib build-graph --force'",
            **BUILD_STEPS}


def _read_parquet(path: Path) -> pl.DataFrame:
    """A dataset table, or a one-line DataError when the file is damaged (truncated copy, bit rot)."""
    try:
        return pl.read_parquet(path)
    except (Exception, PanicException) as e:  # several error types; a Rust panic is a BaseException
        raise DataError(f"cannot read {path} ({type(e).__name__}); re-run prepare/import") from None


def verified(path: Path, base: Path, steps: dict[str, str] | None = None, *, digest: str | None = None) -> str:
    """The content digest of ``path`` after checking it against the manifest of the step that wrote it.

    Parquet has no checksum that readers check, so a flipped bit can read as different, valid-looking
    data; the digest each step records in ``<base>/manifests/<step>.json`` catches it. Folders without
    manifests (written by hand or by older versions) are trusted as they are. ``steps`` narrows the
    manifests consulted and names the fix; ``digest`` skips recomputing a known one.
    """
    rel = str(path.relative_to(base))
    digest = digest or file_digest(path)
    found = _recorded(base, rel, steps)
    if found is not None and found[1] != digest:
        step, _ = found
        fix = (steps or {}).get(step) or _REBUILD.get(step.split("-")[0], "rebuild it")
        raise DataError(f"{path} does not match its manifest (changed since '{step}' wrote it, or that step was "
                        f"interrupted); {fix}")
    return digest


def _recorded(base: Path, rel: str, steps: dict[str, str] | None) -> tuple[str, str] | None:
    """(step, digest) of the newest manifest in ``base/manifests`` that lists ``rel`` among its outputs."""
    best: tuple[float, str, str] | None = None
    for m in (base / "manifests").glob("*.json"):
        if steps is not None and m.stem not in steps:
            continue
        try:
            outs, when = read_json(m).get("outputs") or {}, m.stat().st_mtime
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(outs, dict) and rel in outs and (best is None or when > best[0]):
            best = (when, m.stem, str(outs[rel]))
    return None if best is None else best[1:]


class DatasetHandle:
    """Paths, counts, interactions by split and lazily loaded features of one prepared dataset."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        if not (self.dir / CARD).exists():
            raise MissingInputError(f"no prepared dataset in {self.dir} (dataset.json missing)")
        if (self.dir / PUBLISHING).exists():
            raise DataError(f"dataset in {self.dir} was interrupted while being written; re-run the prepare "
                            "command that built it")
        try:
            self.card: dict[str, Any] = read_json(self.dir / CARD)
            int(self.card["n_users"]), int(self.card["n_items"])
        except (ValueError, KeyError, TypeError, OSError) as e:  # JSONDecodeError is a ValueError
            raise DataError(f"cannot read {self.dir / CARD} ({type(e).__name__}); re-run prepare/import") from None
        self.name: str = self.card.get("name", self.dir.name)
        self.n_users: int = int(self.card["n_users"])
        self.n_items: int = int(self.card["n_items"])
        self._features: dict[tuple[str, str | None], FeatureTable] = {}
        self._digests: dict[Path, str] = {}

    @classmethod
    def open(cls, workspace: Workspace, name: str | None = None) -> DatasetHandle:
        """Open ``name`` (or the active dataset) in a workspace."""
        return cls(workspace.dataset_dir(workspace.resolve_dataset(name)))

    # interactions ---------------------------------------------------------------------------
    @cached_property
    def interactions(self) -> pl.DataFrame:
        path = self.dir / INTERACTIONS
        verified(path, self.dir, BUILD_STEPS, digest=self.digest)
        df = _read_parquet(path)
        if df.height and (df["user_idx"].max() >= self.n_users or df["item_idx"].max() >= self.n_items):
            raise DataError(f"{path}: indices exceed the counts in dataset.json; re-run prepare/import")
        return df

    @cached_property
    def digest(self) -> str:
        """Content digest of the interactions (with split): the dataset part of protocol fingerprints."""
        return file_digest(self.dir / INTERACTIONS)

    def pairs(self, split: str | Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) int64 arrays of the interactions in ``split`` (one name or several)."""
        splits = [split] if isinstance(split, str) else list(split)
        df = self.interactions.filter(pl.col("split").is_in(splits))
        return (df["user_idx"].to_numpy().astype(np.int64), df["item_idx"].to_numpy().astype(np.int64))

    def csr(self, split: str | Iterable[str]) -> sp.csr_matrix:
        """Binary user x item CSR matrix of ``split`` (duplicate pairs collapse to 1)."""
        u, i = self.pairs(split)
        m = sp.csr_matrix((np.ones(len(u), dtype=np.float32), (u, i)), shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    def split_sizes(self) -> dict[str, int]:
        counts = self.interactions.group_by("split").len()
        got = dict(zip(counts["split"].to_list(), counts["len"].to_list()))
        return {s: int(got.get(s, 0)) for s in SPLITS}

    @cached_property
    def items(self) -> pl.DataFrame:
        p = self.dir / ITEMS
        return self._table(p) if p.exists() else pl.DataFrame({"item_idx": np.arange(self.n_items)})

    @cached_property
    def users(self) -> pl.DataFrame:
        p = self.dir / USERS
        return self._table(p) if p.exists() else pl.DataFrame({"user_idx": np.arange(self.n_users)})

    def _table(self, path: Path) -> pl.DataFrame:
        verified(path, self.dir, BUILD_STEPS)
        return _read_parquet(path)

    def content_digest(self, path: Path) -> str:
        """Digest of a file of this dataset, verified against its manifest; computed once per handle."""
        if path not in self._digests:
            self._digests[path] = verified(path, self.dir)
        return self._digests[path]

    # features -------------------------------------------------------------------------------
    def feature_path(self, modality: str, name: str | None = None) -> Path | None:
        return select_table(self.dir, modality, name)

    def features(self, modality: str, name: str | None = None) -> FeatureTable:
        """The feature table of ``modality`` (``name`` or the newest), validated against this dataset."""
        key = (modality, name)
        if key not in self._features:
            path = self.feature_path(modality, name)
            if path is None:
                raise MissingInputError(
                    f"dataset '{self.name}' has no {modality} features; run 'mrdib extract-features' "
                    "or import a dataset that has them")
            self.content_digest(path)
            self._features[key] = read_feature_table(path, n_items=self.n_items)
        return self._features[key]

    def has_features(self, modality: str) -> bool:
        return self.feature_path(modality) is not None

    def __repr__(self) -> str:
        return f"DatasetHandle({self.name!r}, users={self.n_users}, items={self.n_items})"
