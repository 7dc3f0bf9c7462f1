"""Raw Amazon 2014 parsing on hand-written lines: Python-literal meta, unicode, missing fields, damage."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from mrdib_cli.data.amazon import parse_meta, parse_reviews
from mrdib_cli.errors import DataError


def _gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def test_meta_python_literals_unicode_and_missing_fields(tmp_path: Path) -> None:
    lines = [
        "{'asin': '0000031852', 'title': u'Girls Ballet Tutu Zebra \\u00e9', 'price': 3.17, "
        "'imUrl': 'http://ecx.images-amazon.com/images/I/51fAmVkTbyL._SY300_.jpg', "
        "'related': {'also_bought': ['B00JHONN1S']}, 'salesRank': {'Toys & Games': 211836}, "
        "'categories': [['Clothing, Shoes & Jewelry', 'Girls'], ['Sports & Outdoors']], 'brand': 'Coxlures'}",
        '{"asin": "B00002", "description": "He said \\"hi\\" – 日本語", "categories": []}',
        "{'asin': 'B00003', 'title': __import__('os').system('echo pwned')}",  # not a literal: refused
        "{'asin': 'B00004', 'title': 'cut off",  # truncated line
        "not a dict at all",
        "{'asin': 'B00006'}",
    ]
    meta, rep = parse_meta(_gz(tmp_path / "m.json.gz", lines))
    assert rep.n_lines == 6 and rep.n_bad == 3
    assert [n for n, _ in rep.examples] == [3, 4, 5]
    a = meta["0000031852"]
    assert a["title"] == "Girls Ballet Tutu Zebra é" and a["brand"] == "Coxlures"
    assert json.loads(a["categories"]) == [["Clothing, Shoes & Jewelry", "Girls"], ["Sports & Outdoors"]]
    assert a["image_url"].endswith("._SY300_.jpg") and a["description"] is None
    assert meta["B00002"]["description"] == 'He said "hi" – 日本語' and meta["B00002"]["categories"] is None
    assert meta["B00006"] == {"title": None, "brand": None, "categories": None, "description": None,
                              "image_url": None}


def test_meta_only_parses_wanted_items(tmp_path: Path) -> None:
    lines = ["{'asin': 'A1', 'title': 'x'}", "{'asin': 'A2', 'title': 'broken", "{'asin': 'A3', 'title': 'z'}"]
    meta, rep = parse_meta(_gz(tmp_path / "m.json.gz", lines), wanted=["A1", "A3"])
    assert set(meta) == {"A1", "A3"} and rep.n_bad == 0  # A2 is not needed: only its asin is checked


def test_reviews_json_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"reviewerID": "U1", "asin": "A1", "overall": 5.0, "unixReviewTime": 1400000000,
                    "reviewText": "très bien 👍"}),
        json.dumps({"reviewerID": "U2", "asin": "A1", "unixReviewTime": "1400000001"}),  # no rating: kept
        json.dumps({"reviewerID": "U3", "asin": "A2", "overall": 4.0}),  # no time: malformed
        "{'reviewerID': 'U4'}",  # python literal in a JSON file: malformed
        "",  # blank lines are not counted
        json.dumps({"reviewerID": None, "asin": "A3", "unixReviewTime": 1}),
    ]
    df, rep = parse_reviews(_gz(tmp_path / "r.json.gz", lines))
    assert df["reviewer_id"].to_list() == ["U1", "U2"]
    assert df["rating"].to_list() == [5.0, None] and df["timestamp"].to_list() == [1400000000, 1400000001]
    assert rep.n_lines == 5 and rep.n_bad == 3
    assert [n for n, _ in rep.examples] == [3, 4, 6] and "missing field" in rep.examples[0][1]
    with pytest.raises(DataError, match="3 of 5 lines malformed.*--max-malformed 0.01"):
        rep.check(0.01)
    rep.check(0.9)


def test_truncated_gzip(tmp_path: Path) -> None:
    p = _gz(tmp_path / "r.json.gz", [json.dumps({"reviewerID": "U", "asin": "A", "unixReviewTime": 1})] * 2000)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or not a valid gzip"):
        parse_reviews(p)
    p.write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match="truncated or not a valid gzip"):
        parse_reviews(p)
