"""`mrdib prepare` end to end on generated raw files: raw-dir, download, cache, determinism, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.data.prepare import PrepareOptions, prepare
from mrdib_cli.errors import DataError, MissingInputError, UsageError
from mrdib_cli.workspace import Workspace
from rawfixtures import FileServer, make_raw


def _one_line_error(rc: int, err: str, code: int, needle: str) -> None:
    assert rc == code, err
    assert needle in err, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[-1].startswith("error:"), err
    assert sum(line.startswith("error:") for line in lines) == 1, err


def test_prepare_raw_dir_cache_and_force(cli, tmp_path: Path, workdir: Path) -> None:
    raw = tmp_path / "raw"
    make_raw(raw, extra_lines=['{"reviewerID": "U0000", "asin": "B00000", "unixReviewTime": 5}'] * 2)
    rc, out, err = cli("prepare", "baby", "--raw-dir", str(raw), check=True)
    assert "built" in err and "users" in out and "duplicate reviews dropped" in out
    h = DatasetHandle.open(Workspace(workdir))  # became the active dataset
    assert h.name == "baby" and h.card["n_duplicates_dropped"] == 1  # the two extra lines are identical
    inter = h.interactions
    assert inter.columns == ["user_idx", "item_idx", "rating", "timestamp", "split"]
    assert inter.schema["user_idx"] == pl.Int64 and inter.schema["rating"] == pl.Float64
    deg_u = inter.group_by("user_idx").len()["len"]
    deg_i = inter.group_by("item_idx").len()["len"]
    assert deg_u.min() >= 5 and deg_i.min() >= 5
    assert set(inter["split"].unique()) == {"train", "valid", "test"}
    assert h.items["title"][0].startswith("Item ") and h.users["reviewer_id"][0].startswith("U")
    assert h.card["source"]["digests"]["reviews"].startswith("sha256:")
    mtime = (workdir / "datasets/baby/interactions.parquet").stat().st_mtime_ns
    rc, out, err = cli("prepare", "baby", "--raw-dir", str(raw), check=True)
    assert "cached" in err and "reusing" in err
    assert (workdir / "datasets/baby/interactions.parquet").stat().st_mtime_ns == mtime  # no work done
    rc, out, err = cli("prepare", "baby", "--raw-dir", str(raw), "--seed", "7", check=True)
    assert "parameter 'seed' changed (999 -> 7)" in err
    rc, out, err = cli("prepare", "baby", "--raw-dir", str(raw), "--seed", "7", "--force", check=True)
    assert "--force" in err
    manifest = json.loads((workdir / "datasets/baby/manifests/prepare.json").read_text())
    assert manifest["params"]["seed"] == 7 and "interactions.parquet" in manifest["outputs"]


def test_same_seed_byte_identical_other_seed_differs(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    make_raw(raw, n_users=80, per_user=12)
    digests = []
    for k, seed in enumerate((999, 999, 5)):
        ws = Workspace(tmp_path / f"w{k}")
        prepare(ws, "baby", PrepareOptions(seed=seed), raw_dir=raw)
        digests.append((ws.dataset_dir("baby") / "interactions.parquet").read_bytes())
    assert digests[0] == digests[1] and digests[0] != digests[2]


def test_temporal_split_holds_out_latest(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    make_raw(raw, n_users=40, per_user=12)
    ws = Workspace(tmp_path / "w")
    prepare(ws, "baby", PrepareOptions(split="temporal"), raw_dir=raw)
    df = DatasetHandle.open(ws).interactions
    g = df.group_by("user_idx").agg(pl.col("timestamp").filter(pl.col("split") == "train").max().alias("tr"),
                                    pl.col("timestamp").filter(pl.col("split") != "train").min().alias("ho"))
    assert (g["tr"] <= g["ho"]).all()


def test_prepare_downloads_from_base_url(cli, tmp_path: Path, workdir: Path) -> None:
    raw = tmp_path / "raw"
    files = make_raw(raw, category="Sports_and_Outdoors")
    with FileServer({p.name: p.read_bytes() for p in files.values()}) as srv:
        srv.fail_503["meta_Sports_and_Outdoors.json.gz"] = 1
        rc, out, err = cli("prepare", "sports", "--base-url", srv.url, check=True,
                           env={"MRDIB_DOWNLOAD_BACKOFF": "0.01"})
        names = [n for n, _ in srv.requests]
    assert names.count("reviews_Sports_and_Outdoors_5.json.gz") == 1 and names.count(
        "meta_Sports_and_Outdoors.json.gz") == 2
    assert (workdir / "raw/amazon2014/reviews_Sports_and_Outdoors_5.json.gz").read_bytes() == \
        files["reviews"].read_bytes()
    card = json.loads((workdir / "datasets/sports/dataset.json").read_text())
    assert card["source"]["urls"][0] == f"{srv.url}/reviews_Sports_and_Outdoors_5.json.gz"
    # the raw files are now local: a second run needs no server
    rc, out, err = cli("prepare", "sports", "--base-url", srv.url, check=True)
    assert "cached" in err


def test_prepare_list(cli) -> None:
    rc, out, err = cli("prepare", "--list", check=True)
    for name in ("demo", "baby", "sports", "clothing", "Sports_and_Outdoors", "Clothing_Shoes_and_Jewelry"):
        assert name in out
    from mrdib_cli.data.sources import AMAZON_2014
    assert len(AMAZON_2014) == 24


def test_bad_inputs(cli, tmp_path: Path, workdir: Path) -> None:
    rc, out, err = cli("prepare", "babyy")
    _one_line_error(rc, err, 2, "unknown dataset 'babyy'; valid names: demo, baby, sports")
    rc, out, err = cli("prepare", "baby", "--raw-dir", str(tmp_path))
    _one_line_error(rc, err, 3, "is missing reviews_Baby_5.json.gz, meta_Baby.json.gz")
    rc, out, err = cli("prepare", "baby", "--base-url", "http://127.0.0.1:9", env={
        "MRDIB_DOWNLOAD_RETRIES": "1", "MRDIB_DOWNLOAD_BACKOFF": "0.01"})
    _one_line_error(rc, err, 3, "--raw-dir DIR")
    raw = tmp_path / "raw"
    files = make_raw(raw)
    rc, out, err = cli("prepare", "baby", "--raw-dir", str(raw), "--k-core", "50")
    _one_line_error(rc, err, 1, "no interactions left after the 50-core")
    data = files["reviews"].read_bytes()
    files["reviews"].write_bytes(data[: len(data) // 2])
    rc, out, err = cli("prepare", "baby", "--raw-dir", str(raw))
    _one_line_error(rc, err, 1, "truncated or not a valid gzip")
    assert not (workdir / "datasets" / "baby").exists()  # nothing half-written
    assert not list((workdir / "datasets").glob(".tmp-*"))


def test_failed_rebuild_keeps_previous_dataset(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    files = make_raw(raw)
    ws = Workspace(tmp_path / "w")
    prepare(ws, "baby", PrepareOptions(), raw_dir=raw)
    before = (ws.dataset_dir("baby") / "interactions.parquet").read_bytes()
    with pytest.raises(DataError):
        prepare(ws, "baby", PrepareOptions(k_core=99), raw_dir=raw)
    assert (ws.dataset_dir("baby") / "interactions.parquet").read_bytes() == before
    with pytest.raises(UsageError):
        prepare(ws, "baby", PrepareOptions(split="random"), raw_dir=raw)
    with pytest.raises(MissingInputError):
        prepare(ws, "baby", PrepareOptions(), raw_dir=tmp_path / "nowhere")


def test_malformed_threshold(cli, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    make_raw(raw, n_users=20, n_items=12, per_user=6, extra_lines=["{oops"] * 3)  # 3 of 123 lines = 2.4%
    rc, out, err = cli("prepare", "baby", "--raw-dir", str(raw))
    _one_line_error(rc, err, 1, "3 of 123 lines malformed in reviews_Baby_5.json.gz (line 121")
    rc, out, err = cli("prepare", "baby", "--raw-dir", str(raw), "--max-malformed", "0.05", check=True)
    assert "malformed review lines" in out


def test_demo(cli, workdir: Path) -> None:
    rc, out, err = cli("prepare", "demo", "--users", "120", "--items", "60", "--interactions", "1500",
                       check=True)
    h = DatasetHandle.open(Workspace(workdir))
    assert h.name == "demo" and h.n_users == 120 and h.n_items >= 55
    img = Path(h.card["image_dir"])
    assert img.is_absolute()
    asins = h.items["asin"].to_list()
    assert all((img / f"{a}.png").exists() for a in asins)
    from PIL import Image
    with Image.open(img / f"{asins[0]}.png") as im:
        assert im.size == (64, 64) and im.format == "PNG"
    assert h.items["title"].null_count() == 0 and h.items["description"].null_count() == 0
    assert h.card["source"]["kind"] == "synthetic demo"


def test_prepare_refuses_download_with_wrong_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mrdib_cli.data import sources

    files = make_raw(tmp_path / "raw")
    monkeypatch.setitem(sources.KNOWN_DIGESTS, "reviews_Baby_5.json.gz", "sha256:" + "ab" * 32)
    ws = Workspace(tmp_path / "w")
    with FileServer({p.name: p.read_bytes() for p in files.values()}) as srv:
        with pytest.raises(DataError, match="does not match the expected"):
            prepare(ws, "baby", PrepareOptions(), url=srv.url)
    assert not (ws.raw_dir / "amazon2014" / "reviews_Baby_5.json.gz").exists()
    assert not ws.dataset_dir("baby").exists()
