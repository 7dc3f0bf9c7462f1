"""`mrdib prepare amazon2023:<Category>`: the 2023 field names and nesting, ms timestamps, mirrors, errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl

from tests.features.fixtures import run_cli  # noqa: F401 - pytest fixture
from mrdib_cli.data.amazon2023 import largest_image, meta_record
from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.data.prepare import PrepareOptions, prepare
from mrdib_cli.workspace import Workspace
from rawfixtures import FileServer, make_raw, make_raw_2023, meta_2023


def test_raw_dir_gz_and_plain_jsonl_give_the_same_dataset(tmp_path: Path, workdir: Path) -> None:
    make_raw_2023(tmp_path / "gz")
    make_raw_2023(tmp_path / "plain", gz=False)
    ws = Workspace(workdir)
    _, a = prepare(ws, "amazon2023:Baby_Products", PrepareOptions(), raw_dir=tmp_path / "gz")
    _, b = prepare(ws, "amazon2023:baby-products", PrepareOptions(), raw_dir=tmp_path / "plain", name="plain")
    assert a["name"] == "baby-products-2023" and a["source"]["kind"] == "amazon2023"
    assert (a["n_users"], a["n_items"], a["n_interactions"]) == (40, 20, 280)
    assert a["timestamp_unit"] == "ms" and a["split_sizes"] == b["split_sizes"]
    ha, hb = DatasetHandle.open(ws, "baby-products-2023"), DatasetHandle.open(ws, "plain")
    assert ha.interactions.equals(hb.interactions) and ha.items.equals(hb.items)
    assert set(ha.items["asin"].to_list()) == {f"P{i:05d}" for i in range(20)}  # parent_asin, not the variant
    assert set(ha.users["reviewer_id"].str.slice(0, 2).to_list()) == {"AG"}


def test_item_text_and_largest_image(tmp_path: Path, workdir: Path) -> None:
    make_raw_2023(tmp_path)
    ws = Workspace(workdir)
    prepare(ws, "amazon2023:Baby_Products", PrepareOptions(), raw_dir=tmp_path)
    items = DatasetHandle.open(ws).items.sort("asin")
    row = items.row(3, named=True)  # P00003: no hi_res (i % 3 == 0) -> large
    assert row["title"] == "Soft blanket 3" and row["brand"] == "Cozy Co"
    assert row["description"] == "100% cotton size 3 cm A soft blanket. Machine washable."
    assert json.loads(row["categories"]) == [["Baby Products", "Nursery", "Bedding"]]
    assert row["image_url"] == "https://m.media-amazon.com/images/I/3.jpg"
    assert items.row(4, named=True)["image_url"].endswith("4._SL1500_.jpg")
    imgs = [{"thumb": "t1", "large": "l1", "variant": "PT01", "hi_res": None},
            {"thumb": "t0", "large": None, "variant": "MAIN", "hi_res": None}]
    assert largest_image(imgs) == "t0" and largest_image([]) is None
    assert meta_record(meta_2023("P1", 1, images=[]))["image_url"] is None


def test_temporal_split_uses_milliseconds(tmp_path: Path, workdir: Path) -> None:
    make_raw_2023(tmp_path)
    ws = Workspace(workdir)
    prepare(ws, "amazon2023:Baby_Products", PrepareOptions(split="temporal"), raw_dir=tmp_path)
    inter = DatasetHandle.open(ws).interactions
    assert inter["timestamp"].min() > 10**12  # kept in ms, as the release gives them
    last = inter.group_by("user_idx").agg(pl.col("timestamp").max().alias("t"))
    test = inter.filter(pl.col("split") == "test").join(last, on="user_idx")
    assert (test["timestamp"] == test["t"]).all()


def test_base_url_mirror_layout(tmp_path: Path, workdir: Path) -> None:
    paths = make_raw_2023(tmp_path / "src")
    files = {f"review_categories/{paths['reviews'].name}": paths["reviews"].read_bytes(),
             f"meta_categories/{paths['meta'].name}": paths["meta"].read_bytes()}
    with FileServer(files) as srv:
        _, card = prepare(Workspace(workdir), "amazon2023:Baby_Products", PrepareOptions(), url=srv.url)
        assert {r for r, _ in srv.requests} == set(files)
    assert card["n_interactions"] == 280
    assert (workdir / "raw" / "amazon2023" / "Baby_Products.jsonl.gz").exists()


def test_cli_list_and_errors(tmp_path: Path, run_cli) -> None:
    rc, out, _ = run_cli("prepare", "--list")
    assert rc == 0 and "amazon2023:Baby_Products" in out and "amazon2023:Industrial_and_Scientific" in out
    rc, _, err = run_cli("prepare", "amazon2023:Nope")
    assert rc == 2 and "unknown Amazon 2023 category" in err
    rc, _, err = run_cli("prepare", "amazon2023:Baby_Products", "--raw-dir", str(tmp_path))
    assert rc == 3 and "Baby_Products.jsonl.gz" in err
    p2014 = make_raw(tmp_path / "old", category="Baby")
    (tmp_path / "mix").mkdir()
    (tmp_path / "mix" / "Baby_Products.jsonl.gz").write_bytes(p2014["reviews"].read_bytes())
    (tmp_path / "mix" / "meta_Baby_Products.jsonl.gz").write_bytes(gzip.compress(b'{"parent_asin": "x"}\n'))
    rc, _, err = run_cli("prepare", "amazon2023:Baby_Products", "--raw-dir", str(tmp_path / "mix"))
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 1 and "Amazon 2014 file" in lines[-1] and "Traceback" not in err
