"""Cached graph artefacts under ``<dataset>/graphs/``, keyed by the digests of their inputs.

Each graph is one ``cached_step`` (manifest in ``<dataset>/manifests/graph-<name>.json``): it is rebuilt
only when the train interactions (adjacency, co-occurrence) or the feature table (kNN) or the parameters
change, or when the cached file was deleted or modified. ``train`` calls the ``ensure_*`` functions, so a
missing graph is built implicitly; ``mrdib build-graph`` builds them ahead of time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.errors import UsageError
from mrdib_cli.graphs.bipartite import DEG_EPS, norm_adj_random_walk, norm_adj_symmetric
from mrdib_cli.graphs.cooccurrence import user_cooccurrence
from mrdib_cli.graphs.knn import NORMS, knn_graph
from mrdib_cli.workspace import atomic_path, cached_step, file_digest

ADJ_VARIANTS = ("sym", "rw")
GRAPH_DIR = "graphs"


@dataclass
class GraphInfo:
    """What ``ensure_*`` did: for the build-graph summary table."""

    name: str
    path: Path
    cached: bool
    shape: tuple[int, int]
    nnz: int
    seconds: float


def _save_npz(path: Path, m: sp.csr_matrix) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            sp.save_npz(fh, m, compressed=False)


def _load_npz(path: Path) -> sp.csr_matrix:
    return sp.csr_matrix(sp.load_npz(path))  # scipy loads with allow_pickle=False


def _train_digest(handle: DatasetHandle) -> str:
    # the split column is part of the file, so a changed split changes this digest
    return handle.digest


def ensure_norm_adj(handle: DatasetHandle, variant: str = "sym", force: bool = False
                    ) -> tuple[sp.csr_matrix, GraphInfo]:
    """The normalised (U+I)^2 user-item adjacency of train interactions (``sym`` Â or LATTICE's ``rw``)."""
    if variant not in ADJ_VARIANTS:
        raise UsageError(f"unknown adjacency variant '{variant}' (choose from {', '.join(ADJ_VARIANTS)})")
    rel = f"{GRAPH_DIR}/adj-{variant}.npz"
    path = handle.dir / rel

    def run() -> dict:
        r = handle.csr("train")
        m = norm_adj_symmetric(r) if variant == "sym" else norm_adj_random_walk(r)
        _save_npz(path, m)
        return {"nnz": int(m.nnz)}

    t0 = time.perf_counter()
    res = cached_step(f"graph-adj-{variant}", handle.dir, {"train_interactions": _train_digest(handle)},
                      {"variant": variant, "eps": DEG_EPS if variant == "sym" else 0.0}, run, [rel],
                      force=force)
    m = _load_npz(path)
    return m, GraphInfo(f"adj-{variant}", path, res.cached, m.shape, int(m.nnz), time.perf_counter() - t0)


def ensure_knn(handle: DatasetHandle, modality: str, k: int = 10, norm: str = "sym_binary",
               table: str | None = None, force: bool = False) -> tuple[sp.csr_matrix, GraphInfo]:
    """The item-item kNN graph of a modality's feature table (see :mod:`mrdib_cli.graphs.knn`)."""
    if norm not in NORMS:
        raise UsageError(f"unknown kNN normalisation '{norm}' (choose from {', '.join(NORMS)})")
    ft = handle.features(modality, table)
    rel = f"{GRAPH_DIR}/knn-{ft.path.stem}-k{k}-{norm}.npz"
    path = handle.dir / rel

    def run() -> dict:
        m = knn_graph(ft.vectors, k=k, norm=norm)
        _save_npz(path, m)
        return {"nnz": int(m.nnz)}

    t0 = time.perf_counter()
    res = cached_step(f"graph-knn-{ft.path.stem}-k{k}-{norm}", handle.dir,
                      {"features": file_digest(ft.path)}, {"k": k, "norm": norm, "self_included": True},
                      run, [rel], force=force)
    m = _load_npz(path)
    return m, GraphInfo(f"knn-{modality}-k{k}-{norm}", path, res.cached, m.shape, int(m.nnz),
                        time.perf_counter() - t0)


def ensure_cooccurrence(handle: DatasetHandle, max_neighbours: int = 200, force: bool = False
                        ) -> tuple[tuple[np.ndarray, np.ndarray], GraphInfo]:
    """Top user-user co-occurrence neighbours on train items: (neighbours [U,K] (-1 pad), counts [U,K])."""
    rel = f"{GRAPH_DIR}/uu-cooccurrence-{max_neighbours}.npz"
    path = handle.dir / rel

    def run() -> dict:
        nb, ct = user_cooccurrence(handle.csr("train"), max_neighbours)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, neighbours=nb, counts=ct)
        return {"users_with_neighbours": int((nb[:, 0] >= 0).sum())}

    t0 = time.perf_counter()
    res = cached_step(f"graph-uu-cooccurrence-{max_neighbours}", handle.dir,
                      {"train_interactions": _train_digest(handle)}, {"max_neighbours": max_neighbours},
                      run, [rel], force=force)
    with np.load(path, allow_pickle=False) as z:
        nb, ct = z["neighbours"], z["counts"]
    return (nb, ct), GraphInfo(f"uu-cooccurrence-{max_neighbours}", path, res.cached, nb.shape,
                               int((nb >= 0).sum()), time.perf_counter() - t0)


def build_graphs(handle: DatasetHandle, knn_k: int = 10, knn_norms: tuple[str, ...] = ("sym_binary",),
                 adj_variants: tuple[str, ...] = ("sym",), cooccurrence: int | None = None,
                 force: bool = False) -> list[GraphInfo]:
    """``mrdib build-graph``: the adjacency, a kNN graph per available modality and norm, optionally u-u."""
    infos = [ensure_norm_adj(handle, v, force)[1] for v in adj_variants]
    for modality in ("image", "text"):
        if handle.has_features(modality):
            infos += [ensure_knn(handle, modality, knn_k, n, force=force)[1] for n in knn_norms]
    if cooccurrence:
        infos.append(ensure_cooccurrence(handle, cooccurrence, force)[1])
    return infos


