"""`mrdib resplit`: new split, same items/features, exact LOO counts, source untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.workspace import Workspace
from test_import import ROWS, _mmrec_dir


def test_resplit_loo_and_mmrec(cli, tmp_path: Path, workdir: Path) -> None:
    rows = [(u, i, 0) for u in range(30) for i in range((u * 7) % 40, (u * 7) % 40 + 6 + u % 9)]
    rows = [(u, i % 40, x) for u, i, x in rows]
    rows[0:3] = [(u, i, 1 + k % 2) for k, (u, i, _) in enumerate(rows[0:3])]
    d = _mmrec_dir(tmp_path, rows)
    np.save(d / "image_feat.npy", np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32))
    cli("import", "mmrec", str(d), "--name", "src", check=True)
    before = (workdir / "datasets/src/interactions.parquet").read_bytes()
    rc, out, err = cli("resplit", "src", "--scheme", "loo", "--seed", "3", "--name", "loo3", check=True)
    ws = Workspace(workdir)
    h = DatasetHandle.open(ws)
    assert h.name == "loo3" and h.card["split"] == {"scheme": "loo", "seed": 3}
    per = h.interactions.group_by("user_idx").agg((pl.col("split") == "valid").sum().alias("v"),
                                                  (pl.col("split") == "test").sum().alias("t"))
    assert set(per["v"]) == {1} and set(per["t"]) == {1}
    assert h.features("image").dim == 4 and h.items.height == 40
    src = DatasetHandle.open(ws, "src")
    assert sorted(zip(*h.pairs(["train", "valid", "test"]))) == sorted(zip(*src.pairs(["train", "valid", "test"])))
    assert (workdir / "datasets/src/interactions.parquet").read_bytes() == before
    cli("resplit", "src", "--scheme", "loo", "--seed", "4", "--name", "loo4", check=True)
    a = DatasetHandle.open(ws, "loo3").interactions["split"].to_list()
    b = DatasetHandle.open(ws, "loo4").interactions["split"].to_list()
    assert a != b
    rc, out, err = cli("resplit", "src", "--scheme", "temporal", "--name", "src")
    assert rc == 2 and "must differ" in err


def test_resplit_drops_repeated_pairs(cli, tmp_path: Path, workdir: Path) -> None:
    cli("import", "mmrec", str(_mmrec_dir(tmp_path, ROWS)), "--name", "dup", check=True)
    rc, out, err = cli("resplit", "dup", "--scheme", "loo", "--name", "dup2", check=True)
    h = DatasetHandle.open(Workspace(workdir), "dup2")
    assert h.card["n_duplicate_pairs_dropped"] == 1 and h.interactions.height == len(ROWS) - 1
    assert "repeated user-item rows dropped" in out
