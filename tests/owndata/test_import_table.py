"""`mrdib import table`: given and generated splits, filters, formats, original ids, one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.features.fixtures import run_cli  # noqa: F401 - pytest fixture
from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.data.table import TableOptions, import_table
from mrdib_cli.workspace import Workspace


def _rows(n_users: int = 12, per_user: int = 6, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    u, i, r, t = [], [], [], []
    for k in range(n_users):
        for j in rng.choice(20, per_user, replace=False):
            u.append(f"user-{k}")
            i.append(f"sku-{j:03d}")
            r.append(float(rng.integers(1, 6)))
            t.append(int(1_700_000_000 + rng.integers(0, 10**6)))
    return pl.DataFrame({"uid": u, "sku": i, "stars": r, "ts": t})


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_given_split_column_is_kept_with_its_value_mapping(tmp_path: Path, workdir: Path) -> None:
    df = _rows()
    labels = np.array(["TR", "VA", "TE"])[np.arange(df.height) % 3]
    df = df.with_columns(pl.Series("fold", labels))
    p = tmp_path / "log.csv"
    df.write_csv(p)
    ws = Workspace(workdir)
    _, card = import_table(ws, p, "mine", TableOptions(user="uid", item="sku", rating="stars", time="ts",
                                                        split="fold", split_values={"train": "TR", "valid": "VA",
                                                                                    "test": "TE"}))
    h = DatasetHandle.open(ws)
    assert h.name == "mine" and card["split"]["scheme"] == "given"
    inter = h.interactions.join(h.users, on="user_idx").join(h.items.select("item_idx", "asin"), on="item_idx")
    got = {(a, b, int(t)): s for a, b, t, s in zip(inter["reviewer_id"], inter["asin"], inter["timestamp"],
                                                    inter["split"])}
    want = {(a, b, int(t)): {"TR": "train", "VA": "valid", "TE": "test"}[f]
            for a, b, t, f in zip(df["uid"], df["sku"], df["ts"], df["fold"])}
    assert got == want  # every row kept, with its own label, under its original ids
    assert sorted(h.interactions["rating"].to_list()) == sorted(df["stars"].to_list())


def test_scheme_split_min_rating_and_kcore(tmp_path: Path, workdir: Path) -> None:
    df = _rows(n_users=30, per_user=8, seed=1)
    p = tmp_path / "log.tsv"
    df.write_csv(p, separator="\t")
    ws = Workspace(workdir)
    opts = TableOptions(user="uid", item="sku", rating="stars", time="ts", min_rating=3, k_core=3, seed=7)
    _, card = import_table(ws, p, "a", opts)
    h = DatasetHandle.open(ws, "a")
    inter = h.interactions
    assert inter["rating"].min() >= 3
    assert card["n_below_min_rating"] == int((df["stars"] < 3).sum())
    assert inter.group_by("user_idx").len()["len"].min() >= 3
    assert inter.group_by("item_idx").len()["len"].min() >= 3
    _, again = import_table(ws, p, "b", opts)
    assert DatasetHandle.open(ws, "b").interactions["split"].to_list() == inter["split"].to_list()  # seeded
    _, other = import_table(ws, p, "c", TableOptions(**{**opts.__dict__, "seed": 8}))
    assert DatasetHandle.open(ws, "c").interactions["split"].to_list() != inter["split"].to_list()


def test_parquet_with_dates_and_temporal_split(tmp_path: Path, workdir: Path) -> None:
    days = [f"2024-01-{d:02d}" for d in range(1, 11)]
    df = pl.DataFrame({"u": ["x"] * 10 + ["y"] * 10, "i": [f"i{k}" for k in range(10)] * 2,
                       "when": days + days[::-1]})
    p = tmp_path / "log.parquet"
    df.write_parquet(p)
    ws = Workspace(workdir)
    import_table(ws, p, "t", TableOptions(user="u", item="i", time="when", split="temporal"))
    inter = DatasetHandle.open(ws).interactions.join(DatasetHandle.open(ws).items, on="item_idx")
    test = inter.filter(pl.col("split") == "test").sort("user_idx")
    assert test["asin"].to_list() == ["i9", "i0"]  # each user's latest day held out
    assert inter["timestamp"].max() == 1704844800  # 2024-01-10 as Unix seconds


def test_recbole_atomic_inter_and_duplicate_rows(tmp_path: Path, workdir: Path) -> None:
    p = tmp_path / "ml.inter"
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += [f"{u}\t{i}\t4.0\t{100 + u * 10 + i}.0" for u in range(1, 6) for i in range(1, 6)]
    lines.append("1\t1\t4.0\t111.0")  # exact duplicate of an existing row: dropped
    p.write_text("\n".join(lines) + "\n")
    ws = Workspace(workdir)
    _, card = import_table(ws, p, "ml", TableOptions(user="user_id", item="item_id", rating="rating",
                                                      time="timestamp", split="loo"))
    assert (card["n_users"], card["n_items"], card["n_interactions"]) == (5, 5, 25)
    assert card["n_duplicates_dropped"] == 1 and card["split_sizes"] == {"train": 15, "valid": 5, "test": 5}


def test_cli_import_and_errors(tmp_path: Path, workdir: Path, run_cli) -> None:
    p = tmp_path / "log.csv"
    _rows().write_csv(p)
    rc, out, err = run_cli("import", "table", str(p), "--name", "mine", "--user", "uid", "--item", "sku")
    assert rc == 0, err
    assert "imported 'mine' (table)" in out and "active dataset: mine" in err
    rc, _, err = run_cli("import", "table", str(p), "--name", "mine", "--user", "uid", "--item", "sku")
    assert rc == 0 and "cached" in err  # same file, same options: no work
    rc, _, err = run_cli("import", "table", str(p), "-n", "x", "--user", "nope", "--item", "sku")
    assert rc == 2 and "--user 'nope'" in _one_line(err) and "uid" in err
    rc, _, err = run_cli("import", "table", str(p), "-n", "x", "--user", "uid", "--item", "sku", "--split", "random")
    assert rc == 2 and "neither a scheme" in _one_line(err)
    rc, _, err = run_cli("import", "table", str(p), "-n", "x", "--user", "uid", "--item", "sku", "--split", "ts")
    assert rc == 1 and "--split-values" in _one_line(err)
    rc, _, err = run_cli("import", "table", str(p), "-n", "x", "--user", "uid", "--item", "sku", "--min-rating", "4")
    assert rc == 2 and "--rating" in _one_line(err)
    rc, _, err = run_cli("import", "table", str(tmp_path / "none.csv"), "-n", "x", "--user", "u", "--item", "i")
    assert rc == 3 and "not found" in _one_line(err)
    rc, _, err = run_cli("import", "table", str(p), "-n", "x", "--user", "uid", "--item", "sku", "--time", "sku")
    assert rc == 1 and "neither a number nor an ISO date" in _one_line(err)
    assert not (workdir / "datasets" / "x").exists()  # failed imports leave nothing behind


@pytest.mark.parametrize("k", [0, -1])
def test_kcore_must_be_positive(tmp_path: Path, workdir: Path, k: int) -> None:
    from mrdib_cli.errors import UsageError

    with pytest.raises(UsageError, match="--k-core"):
        TableOptions(user="u", item="i", k_core=k).validate()
