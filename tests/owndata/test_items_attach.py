"""`mrdib items attach` and `--items`: catalogues joined by original id, lists kept, images, errors."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from tests.features.fixtures import run_cli  # noqa: F401 - pytest fixture
from tests.features.helpers import good_image, png_bytes
from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.data.items import attach_items
from mrdib_cli.data.table import TableOptions, import_table
from mrdib_cli.features.text import build_texts
from mrdib_cli.workspace import Workspace


def _dataset(tmp_path: Path, workdir: Path) -> Workspace:
    rows = [(f"u{u}", f"sku{(u + k) % 6}") for u in range(6) for k in range(4)]
    p = tmp_path / "log.csv"
    pl.DataFrame({"user": [r[0] for r in rows], "item": [r[1] for r in rows]}).write_csv(p)
    ws = Workspace(workdir)
    import_table(ws, p, "shop", TableOptions(user="user", item="item"))
    return ws


def _asin_to(h: DatasetHandle, col: str) -> dict[str, str | None]:
    return dict(zip(h.items["asin"].to_list(), h.items[col].to_list()))


def test_jsonl_catalogue_with_lists(tmp_path: Path, workdir: Path) -> None:
    ws = _dataset(tmp_path, workdir)
    cat = tmp_path / "items.jsonl"
    lines = [{"item": f"sku{k}", "title": f"Mug {k}", "description": ["Big.", "Blue."], "store": "Acme",
              "categories": ["Kitchen", "Mugs"], "image_url": f"https://x/{k}.jpg"} for k in range(5)]
    lines[4]["description"] = "Plain text."  # a list on some lines, a string on others: each kept as given
    lines.append({"item": "not-in-data", "title": "Ghost"})
    cat.write_text("".join(json.dumps(x) + "\n" for x in lines))
    res, rep = attach_items(ws, None, cat)
    assert not res.cached
    assert rep["matched_items"] == 5 and rep["items_without_row"] == 1 and rep["catalogue_rows_not_in_dataset"] == 1
    h = DatasetHandle.open(ws)
    assert _asin_to(h, "title")["sku3"] == "Mug 3" and _asin_to(h, "title")["sku5"] is None
    assert _asin_to(h, "description")["sku0"] == "Big. Blue." and _asin_to(h, "description")["sku4"] == "Plain text."
    assert json.loads(_asin_to(h, "categories")["sku1"]) == ["Kitchen", "Mugs"]
    texts = dict(zip(h.items["asin"].to_list(), build_texts(h.items, n_items=h.n_items)))
    assert texts["sku2"] == "Mug 2 Acme Kitchen Mugs Big. Blue." and texts["sku5"] == ""
    res, _ = attach_items(ws, None, cat)
    assert res.cached  # same catalogue, same dataset


def test_csv_named_columns_image_paths_and_dir(tmp_path: Path, workdir: Path) -> None:
    ws = _dataset(tmp_path, workdir)
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(png_bytes(good_image(0)))
    cat = tmp_path / "cat.csv"
    pl.DataFrame({"product": ["sku0", "sku1"], "name": ["Cup", "Jug"], "photo": ["pics/a.png", "pics/none.png"]}
                 ).write_csv(cat)
    attach_items(ws, None, cat, columns={"id": "product", "title": "name", "image_path": "photo"},
                 image_dir=tmp_path / "pics")
    h = DatasetHandle.open(ws)
    assert _asin_to(h, "title")["sku1"] == "Jug"
    assert _asin_to(h, "image_path")["sku0"] == str((tmp_path / "pics" / "a.png").resolve())
    assert h.card["image_dir"] == str((tmp_path / "pics").resolve())
    from mrdib_cli.data.resplit import resplit

    _, card = resplit(ws, "shop", "shop-loo", "loo", 1)  # a re-split keeps the attached items and images
    h2 = DatasetHandle.open(ws, "shop-loo")
    assert h2.items.equals(h.items) and card["image_dir"] == h.card["image_dir"]
    assert card["items_attached"]["matched_items"] == 2


def test_cli_errors_and_import_items_option(tmp_path: Path, workdir: Path, run_cli) -> None:
    _dataset(tmp_path, workdir)
    bad = tmp_path / "bad.csv"
    pl.DataFrame({"item": ["zz1", "zz2"], "title": ["a", "b"]}).write_csv(bad)
    rc, _, err = run_cli("items", "attach", str(bad))
    assert rc == 1 and "no catalogue id matches" in err and "Traceback" not in err
    dup = tmp_path / "dup.csv"
    pl.DataFrame({"item": ["sku1", "sku1"], "title": ["a", "b"]}).write_csv(dup)
    rc, _, err = run_cli("items", "attach", str(dup))
    assert rc == 1 and "several rows" in err
    rc, _, err = run_cli("items", "attach", str(bad), "--title", "nope")
    assert rc == 2 and "--title 'nope'" in err
    rc, _, err = run_cli("items", "attach", str(tmp_path / "missing.csv"))
    assert rc == 3
    # the research importers take the same catalogue option
    lat = tmp_path / "lat"
    lat.mkdir()
    for f, d in (("train.json", {"0": [0, 1], "1": [1, 2]}), ("val.json", {"0": [2], "1": [0]}),
                 ("test.json", {"0": [3], "1": [3]})):
        (lat / f).write_text(json.dumps(d))
    (lat / "item2id.json").write_text(json.dumps({"sku0": 0, "sku1": 1, "sku2": 2, "sku3": 3}))
    good = tmp_path / "good.csv"
    pl.DataFrame({"item": ["sku0", "sku3"], "title": ["Cup", "Pot"]}).write_csv(good)
    rc, out, err = run_cli("import", "lattice", str(lat), "--name", "lat", "--items", str(good))
    assert rc == 0, err
    h = DatasetHandle.open(Workspace(workdir), "lat")
    assert _asin_to(h, "title") == {"sku0": "Cup", "sku1": None, "sku2": None, "sku3": "Pot"}
    assert "2 dataset items have no catalogue row" in err
