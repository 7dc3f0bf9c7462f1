"""`mrdib features import`: by index or by ids, every file type, the checks, provenance, use downstream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.features.fixtures import run_cli  # noqa: F401 - pytest fixture
from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.data.table import TableOptions, import_table
from mrdib_cli.errors import DataError, UsageError
from mrdib_cli.features.imported import ImportOptions, import_features
from mrdib_cli.data.feature_store import read_feature_table
from mrdib_cli.workspace import Workspace, file_digest


def _ws(tmp_path: Path, workdir: Path) -> tuple[Workspace, list[str]]:
    rows = [(f"u{u}", f"sku{(u + k) % 8}") for u in range(8) for k in range(4)]
    p = tmp_path / "log.csv"
    pl.DataFrame({"user": [r[0] for r in rows], "item": [r[1] for r in rows]}).write_csv(p)
    ws = Workspace(workdir)
    import_table(ws, p, "shop", TableOptions(user="user", item="item"))
    return ws, DatasetHandle.open(ws).items["asin"].to_list()


def test_npy_by_index_and_by_ids(tmp_path: Path, workdir: Path) -> None:
    ws, asins = _ws(tmp_path, workdir)
    vec = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)
    np.save(tmp_path / "a.npy", vec)
    res, path, cov = import_features(ws, None, tmp_path / "a.npy", ImportOptions("image", model="my-cnn"))
    t = read_feature_table(path, n_items=8)
    np.testing.assert_array_equal(t.vectors, vec)
    assert t.meta["source_digest"] == file_digest(tmp_path / "a.npy") and t.meta["model"] == "my-cnn"
    assert cov["ok"] == 8 and set(t.status) == {"imported"}
    # rows in another order, named by id (plus one row for an item the dataset does not have)
    order = np.random.default_rng(1).permutation(8)
    ids = [asins[i] for i in order] + ["ghost"]
    np.save(tmp_path / "b.npy", np.vstack([vec[order], np.ones((1, 5), np.float32)]))
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    _, path, cov = import_features(ws, None, tmp_path / "b.npy", ImportOptions("text", ids=tmp_path / "ids.txt"))
    np.testing.assert_array_equal(read_feature_table(path).vectors, vec)  # every row landed on its item
    assert cov["rows_not_in_dataset"] == 1 and path.name == "text-imported-b.npy.parquet"
    assert DatasetHandle.open(ws).features("text").dim == 5


def test_parquet_raw_float32_missing_and_zero_rows(tmp_path: Path, workdir: Path) -> None:
    ws, asins = _ws(tmp_path, workdir)
    vec = np.arange(1, 7 * 4 + 1, dtype=np.float32).reshape(7, 4)
    vec[2] = 0.0  # a placeholder row: treated as missing
    pl.DataFrame({"sku": asins[:7], "vector": vec.tolist()}).write_parquet(tmp_path / "v.parquet")
    _, path, cov = import_features(ws, None, tmp_path / "v.parquet", ImportOptions("image", id_column="sku"))
    t = read_feature_table(path)
    assert (cov["ok"], cov["missing"], cov["all_zero"]) == (6, 1, 1)
    assert t.status[7] == "missing" and t.status[2] == "missing"
    np.testing.assert_allclose(t.vectors[7], vec[[0, 1, 3, 4, 5, 6]].mean(axis=0), rtol=1e-6)
    vec[:, :].tofile(tmp_path / "v.feat")
    with pytest.raises(UsageError, match="--dim"):
        import_features(ws, None, tmp_path / "v.feat", ImportOptions("image"))
    with pytest.raises(DataError, match="not a whole number"):
        import_features(ws, None, tmp_path / "v.feat", ImportOptions("image", dim=5))
    np.ones((8, 4), np.float32).tofile(tmp_path / "w.feat")
    _, path, _ = import_features(ws, None, tmp_path / "w.feat", ImportOptions("image", dim=4))
    assert read_feature_table(path).vectors.shape == (8, 4)


@pytest.mark.parametrize("case,needle,code", [
    ("rows", "has 5 rows but the dataset has 8 items", 1),
    ("nan", "NaN/inf", 1),
    ("dim", "not the --dim 7", 1),
    ("pickle", "pickled", 1),
    ("modality", "--modality", 2),
    ("dup-ids", "several rows", 1),
])
def test_bad_feature_files(tmp_path: Path, workdir: Path, run_cli, case: str, needle: str, code: int) -> None:
    _, asins = _ws(tmp_path, workdir)
    f = tmp_path / "f.npy"
    args: list[str] = []
    if case == "rows":
        np.save(f, np.ones((5, 3)))
    elif case == "nan":
        a = np.ones((8, 3))
        a[4, 1] = np.nan
        np.save(f, a)
    elif case == "dim":
        np.save(f, np.ones((8, 3)))
        args = ["--dim", "7"]
    elif case == "pickle":
        np.save(f, np.array([{"x": 1}] * 8, dtype=object), allow_pickle=True)
    elif case == "modality":
        np.save(f, np.ones((8, 3)))
        args = ["-m", "audio"]
    elif case == "dup-ids":
        np.save(f, np.ones((8, 3)))
        (tmp_path / "ids.txt").write_text("\n".join([asins[0]] * 8))
        args = ["--ids", str(tmp_path / "ids.txt")]
    rc, _, err = run_cli("features", "import", str(f), *(args if "-m" in args else ["-m", "image", *args]))
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == code and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert not (workdir / "datasets" / "shop" / "features").exists() or not any(
        (workdir / "datasets" / "shop" / "features").glob("*.parquet"))


def test_cli_import_then_ls(tmp_path: Path, workdir: Path, run_cli) -> None:
    _ws(tmp_path, workdir)
    np.save(tmp_path / "t.npy", np.random.default_rng(2).normal(size=(8, 6)))
    rc, _, err = run_cli("features", "import", str(tmp_path / "t.npy"), "-m", "text", "--model", "BERT mean-pool")
    assert rc == 0 and "8 of 8 items imported" in err, err
    rc, out, _ = run_cli("features", "ls")
    assert rc == 0 and "text-bert-mean-pool.parquet" in out and "(8/8)" in out
    rc, _, err = run_cli("features", "import", str(tmp_path / "t.npy"), "-m", "text", "--model", "BERT mean-pool")
    assert rc == 0 and "cached" in err
