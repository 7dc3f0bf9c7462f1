"""Importers: real LATTICE/RecBole data (skipped when absent), synthetic MMRec folders and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.conftest import shared_data
from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.data.importers import import_dataset, read_lattice, read_mmrec
from mrdib_cli.errors import DataError
from mrdib_cli.workspace import Workspace


def _per_user(h: DatasetHandle, split: str) -> pl.Series:
    return h.interactions.group_by("user_idx").agg((pl.col("split") == split).sum().alias("n"))["n"]


def test_lattice_baby_real(workdir: Path) -> None:
    d = shared_data("amazon2014-baby-5core/lattice")
    ws = Workspace(workdir)
    _, card = import_dataset(ws, "lattice", d, "baby")
    assert (card["n_users"], card["n_items"], card["n_interactions"]) == (19445, 7050, 160792)
    assert card["split_sizes"] == {"train": 119674, "valid": 20559, "test": 20559}
    h = DatasetHandle.open(ws)  # the import became the active dataset
    assert h.name == "baby"
    items = h.items
    asin_of = dict(zip(items["item_idx"].to_list(), items["asin"].to_list()))
    raw_map = json.loads((d / "item2id.json").read_text())
    assert all(asin_of[v] == k for k, v in list(raw_map.items())[:200])
    train = json.loads((d / "train.json").read_text())
    u0 = sorted(train["0"])
    got = h.interactions.filter((pl.col("user_idx") == 0) & (pl.col("split") == "train"))["item_idx"]
    assert sorted(got.to_list()) == u0


def test_recbole_scientific_real(workdir: Path) -> None:
    d = shared_data("amazon2018-scientific-missrec")
    ws = Workspace(workdir)
    _, card = import_dataset(ws, "recbole", d, "sci", features={}, feature_dim=512)
    assert (card["n_users"], card["n_items"], card["n_interactions"]) == (2928, 1585, 19712)
    h = DatasetHandle.open(ws, "sci")
    assert set(_per_user(h, "valid").to_list()) == {1} and set(_per_user(h, "test").to_list()) == {1}
    img, txt = h.features("image"), h.features("text")
    assert img.vectors.shape == txt.vectors.shape == (1585, 512)
    assert img.meta["source"] == "imported from Scientific.feat3CLS"
    raw = np.fromfile(d / "Scientific.feat1CLS", np.float32).reshape(-1, 512)
    np.testing.assert_array_equal(txt.vectors, raw)
    # the test target is the last item of the sequence in the RecBole test file
    first = (d / "Scientific.test.inter").read_text().splitlines()[1].split("\t")
    test_item = h.interactions.filter((pl.col("user_idx") == int(first[0])) & (pl.col("split") == "test"))
    assert test_item["item_idx"].to_list() == [int(first[2])]
    assert h.items["title"].null_count() == 0


def _mmrec_dir(tmp: Path, rows: list[tuple[int, int, int]], n_items: int | None = None) -> Path:
    d = tmp / "mm"
    d.mkdir(exist_ok=True)
    lines = ["userID\titemID\trating\ttimestamp\tx_label"]
    lines += [f"{u}\t{i}\t5.0\t{1000 + k}\t{x}" for k, (u, i, x) in enumerate(rows)]
    (d / "mm.inter").write_text("\n".join(lines) + "\n")
    return d


ROWS = [(0, 0, 0), (0, 1, 0), (0, 1, 0), (0, 2, 1), (0, 3, 2), (1, 3, 0), (1, 2, 0), (1, 0, 1), (1, 1, 2)]


def test_mmrec_import_with_features_and_duplicates(workdir: Path, tmp_path: Path, cli) -> None:
    d = _mmrec_dir(tmp_path, ROWS)
    rng = np.random.default_rng(0)
    np.save(d / "image_feat.npy", rng.normal(size=(4, 8)))  # float64 on disk, like MMRec
    np.save(d / "text_feat.npy", rng.normal(size=(4, 6)).astype(np.float32))
    (d / "i_id_mapping.csv").write_text("asin\titemID\n" + "".join(f"A{i}\t{i}\n" for i in range(4)))
    rc, out, err = cli("import", "mmrec", str(d), "--name", "mm")
    assert rc == 0, err
    assert "duplicate user-item rows (kept)" in out
    h = DatasetHandle.open(Workspace(workdir))
    assert h.interactions.height == len(ROWS) and h.card["n_duplicate_pairs"] == 1
    assert h.split_sizes() == {"train": 5, "valid": 2, "test": 2}
    assert h.features("image").dim == 8 and h.features("text").dim == 6
    assert h.items["asin"].to_list() == ["A0", "A1", "A2", "A3"]
    rc, out, err = cli("import", "mmrec", str(d), "--name", "mm")
    assert rc == 0 and "cached" in err


@pytest.mark.parametrize("case,needle", [
    ("rows", "has 3 rows but the dataset has 4 items"),
    ("pickle", "pickled"),
    ("nan", "NaN/inf"),
    ("gap", "not contiguous"),
])
def test_mmrec_bad_input(tmp_path: Path, workdir: Path, cli, case: str, needle: str) -> None:
    rows = ROWS if case != "gap" else [(0, 0, 0), (0, 5, 1), (0, 2, 2)]
    d = _mmrec_dir(tmp_path, rows)
    if case == "rows":
        np.save(d / "image_feat.npy", np.zeros((3, 4), np.float32))
    elif case == "pickle":
        np.save(d / "image_feat.npy", np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    elif case == "nan":
        f = np.zeros((4, 4), np.float32)
        f[2, 1] = np.nan
        np.save(d / "text_feat.npy", f)
    rc, out, err = cli("import", "mmrec", str(d), "--name", "bad")
    assert rc == 1 and needle in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (workdir / "datasets" / "bad").exists()
    assert not list((workdir / "datasets").glob(".tmp-*"))  # (the folder itself need not exist)


def test_lattice_noncontiguous_users(tmp_path: Path) -> None:
    d = tmp_path / "lat"
    d.mkdir()
    for f, obj in (("train.json", {"0": [0, 1], "2": [1, 2]}), ("val.json", {"0": [2], "2": [0]}),
                   ("test.json", {"0": [3], "2": [3]})):
        (d / f).write_text(json.dumps(obj))
    with pytest.raises(DataError, match="user ids are not contiguous"):
        read_lattice(d)


def test_mmrec_reader_keeps_split(tmp_path: Path) -> None:
    data = read_mmrec(_mmrec_dir(tmp_path, ROWS))
    assert data.inter["split"].to_list() == ["train", "train", "train", "valid", "test", "train", "train",
                                             "valid", "test"]
    assert data.inter["timestamp"].to_list()[:2] == [1000, 1001]


def test_recbole_synthetic_truncated_history(tmp_path: Path) -> None:
    from mrdib_cli.data.importers import read_recbole

    d = tmp_path / "rb"
    d.mkdir()
    hdr = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    (d / "X.test.inter").write_text(hdr + "0\t0 1 2\t3\n1\t2 3\t0\n")
    (d / "X.valid.inter").write_text(hdr + "0\t0 1\t2\n1\t2\t3\n")
    (d / "X.train.inter").write_text(hdr + "0\t0\t1\n")
    data = read_recbole(d)
    assert data.inter["split"].to_list() == ["train", "train", "valid", "test", "train", "valid", "test"]
    (d / "X.valid.inter").write_text(hdr + "0\t0 1\t1\n1\t2\t3\n")
    with pytest.raises(DataError, match="second-to-last"):
        read_recbole(d)


def test_recbole_cli_feature_options(tmp_path: Path, workdir: Path, cli) -> None:
    d = tmp_path / "rb"
    d.mkdir()
    hdr = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    (d / "X.test.inter").write_text(hdr + "ua\tia ib ic\tid\nub\tic id\tia\n")
    (d / "X.item2index").write_text("ia\t0\nib\t1\nic\t2\nid\t3\n")
    (d / "X.user2index").write_text("ua\t0\nub\t1\n")
    (d / "X.text").write_text("item_id:token\ttext:token_seq\nia\tred cotton\nic\tblue steel\n")
    feats = np.arange(16, dtype=np.float32).reshape(4, 4)
    feats.tofile(d / "my.bin")
    rc, out, err = cli("import", "recbole", str(d), "--name", "rb", "--feature", "image=my.bin",
                       "--feature-dim", "4", check=True)
    h = DatasetHandle.open(Workspace(workdir))
    np.testing.assert_array_equal(h.features("image").vectors, feats)
    assert not h.has_features("text")
    assert h.items["title"].to_list() == ["red cotton", None, "blue steel", None]
    assert h.users["reviewer_id"].to_list() == ["ua", "ub"]
    assert h.interactions.filter(pl.col("split") == "test")["item_idx"].to_list() == [3, 0]
    rc, out, err = cli("import", "recbole", str(d), "--name", "rb", "--feature", "image=my.bin",
                       "--feature-dim", "3")
    assert rc == 1 and "not a whole number of 3-d float32 rows" in err
    rc, out, err = cli("import", "recbole", str(d), "--name", "rb", "--feature", "image")
    assert rc == 2 and "MODALITY=FILE" in err
