"""SIGKILL during ``mrdib build-graph``: the rerun gives the same graphs as an uninterrupted build."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.faults.helpers import IMAGE_ARGS, killed, leftovers, mrdib, ok

GRAPH = ["build-graph", "--cooccurrence", "20"]


def _graphs(ds: Path) -> dict[str, dict[str, list]]:
    out = {}
    for f in sorted((ds / "graphs").glob("*.npz")):
        with np.load(f, allow_pickle=False) as z:
            out[f.name] = {k: z[k].tolist() for k in z.files}
    return out


@pytest.fixture(scope="module")
def with_features(tmp_path_factory: pytest.TempPathFactory, reference_demo) -> Path:
    """A demo workdir with an image feature table (the kNN graph's input), graphs not built yet."""
    wd = tmp_path_factory.mktemp("graph-src") / "wd"
    shutil.copytree(reference_demo[0], wd)
    ok(mrdib(wd, *IMAGE_ARGS))
    return wd


@pytest.fixture(scope="module")
def reference_graphs(tmp_path_factory: pytest.TempPathFactory, with_features: Path) -> dict:
    wd = tmp_path_factory.mktemp("ref-graph") / "wd"
    shutil.copytree(with_features, wd)
    ok(mrdib(wd, *GRAPH))
    g = _graphs(wd / "datasets" / "demo")
    assert len(g) == 3, sorted(g)
    return g


POINTS = {
    "saving-adjacency": {"target": "mrdib_cli.graphs.store._save_npz", "action": "kill"},
    "saving-knn": {"target": "mrdib_cli.graphs.store._save_npz", "nth": 2, "action": "kill"},
    "renaming-cooccurrence": {"target": "os.replace", "match": "uu-cooccurrence", "action": "kill"},
    "before-knn-manifest": {"target": "mrdib_cli.workspace.atomic_write_json", "match": "graph-knn",
                            "action": "kill"},
}


@pytest.mark.parametrize("point", list(POINTS))
def test_build_graph_killed_then_rerun_is_identical(workdir: Path, with_features: Path, reference_graphs: dict,
                                                    point: str) -> None:
    shutil.copytree(with_features, workdir)
    killed(mrdib(workdir, *GRAPH, fault=POINTS[point]))
    ok(mrdib(workdir, *GRAPH))
    assert _graphs(workdir / "datasets" / "demo") == reference_graphs
    ok(mrdib(workdir, "cache", "gc", "--min-age", "0"))
    assert leftovers(workdir) == []
