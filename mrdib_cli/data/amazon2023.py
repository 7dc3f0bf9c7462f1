"""Amazon Reviews 2023 (McAuley Lab): the category registry and the JSON Lines parsers.

The 2023 release differs from 2014 in every field name: reviews carry ``user_id``, ``parent_asin`` (the
product; ``asin`` is a variant, so recent papers and mrdib key items on ``parent_asin``), ``rating`` and
``timestamp`` in **milliseconds**; metadata lines are real JSON (no Python literals) with ``title``,
``features`` and ``description`` as lists of strings, ``store``, ``categories`` as one flat path, and
``images`` as a list of ``{thumb, large, hi_res, variant}``. Per category there is one reviews file
``<Category>.jsonl`` and one metadata file ``meta_<Category>.jsonl`` (gzipped on the download server).

The parsers return exactly what the 2014 ones return (same DataFrame columns, same item record keys), so
``prepare`` deduplicates, k-cores, splits and writes both releases with one code path.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import polars as pl

from mrdib_cli.data import amazon
from mrdib_cli.data.amazon import ParseReport, ReviewRow, _lines
from mrdib_cli.errors import DataError, UsageError

PREFIX = "amazon2023:"
DEFAULT_BASE_URL = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_2023/raw"
BASE_URL_ENV = "MRDIB_AMAZON2023_BASE_URL"

# The release's categories, spelled as in its file names.
CATEGORIES_2023: tuple[str, ...] = (
    "All_Beauty", "Amazon_Fashion", "Appliances", "Arts_Crafts_and_Sewing", "Automotive", "Baby_Products",
    "Beauty_and_Personal_Care", "Books", "CDs_and_Vinyl", "Cell_Phones_and_Accessories",
    "Clothing_Shoes_and_Jewelry", "Digital_Music", "Electronics", "Gift_Cards", "Grocery_and_Gourmet_Food",
    "Handmade_Products", "Health_and_Household", "Health_and_Personal_Care", "Home_and_Kitchen",
    "Industrial_and_Scientific", "Kindle_Store", "Magazine_Subscriptions", "Movies_and_TV",
    "Musical_Instruments", "Office_Products", "Patio_Lawn_and_Garden", "Pet_Supplies", "Software",
    "Sports_and_Outdoors", "Subscription_Boxes", "Tools_and_Home_Improvement", "Toys_and_Games",
    "Video_Games", "Unknown",
)
IMAGE_SIZES = ("hi_res", "large", "thumb")  # largest first
_PARENT_RE = re.compile(r'"parent_asin"\s*:\s*"([^"]+)"')


@dataclass(frozen=True)
class Category2023:
    """One category of the 2023 release; the same interface ``prepare`` uses for 2014 categories."""

    category: str
    release: str = "amazon2023"

    @property
    def name(self) -> str:
        return PREFIX + self.category

    @property
    def default_name(self) -> str:
        """Dataset name in the workdir (``amazon2023:Baby_Products`` -> ``baby-products-2023``)."""
        return self.category.lower().replace("_", "-") + "-2023"

    @property
    def reviews_file(self) -> str:
        return f"{self.category}.jsonl.gz"

    @property
    def meta_file(self) -> str:
        return f"meta_{self.category}.jsonl.gz"

    @property
    def files(self) -> tuple[str, str]:
        return (self.reviews_file, self.meta_file)

    def url_for(self, fname: str, override: str | None = None) -> str:
        base = (override or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
        sub = "meta_categories" if fname.startswith("meta_") else "review_categories"
        return f"{base}/{sub}/{fname}"


def is_2023(name: str) -> bool:
    return name.strip().lower().startswith(PREFIX)


def lookup(name: str) -> Category2023:
    """``amazon2023:Baby_Products`` (case-insensitive; spaces or dashes for underscores accepted)."""
    key = name.strip()[len(PREFIX):].strip().lower().replace(" ", "_").replace("-", "_")
    for c in CATEGORIES_2023:
        if c.lower() == key:
            return Category2023(c)
    raise UsageError(f"unknown Amazon 2023 category '{name[len(PREFIX):]}'; valid: {', '.join(CATEGORIES_2023)} "
                     "(see 'mrdib prepare --list')")


# ------------------------------------------------------------------------------------------- parsing
def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered lines of a ``.jsonl.gz`` (through the 2014 reader's gzip checks) or a plain ``.jsonl``."""
    if path.suffix == ".gz":
        yield from _lines(path)
        return
    with open(path, encoding="utf-8", errors="replace") as fh:
        yield from enumerate(fh, 1)


def review_row(r: dict[str, Any]) -> ReviewRow:
    """(user, item, rating, time in ms) of one 2023 review: the product is ``parent_asin``."""
    u, i, t = r["user_id"], r.get("parent_asin") or r["asin"], r["timestamp"]
    if not isinstance(u, str) or not isinstance(i, str) or not u or not i:
        raise TypeError("user_id/parent_asin must be non-empty strings")
    o = r.get("rating")
    return u, i, None if o is None else float(o), int(t)


def parse_reviews(path: Path, report: ParseReport | None = None) -> tuple[pl.DataFrame, ParseReport]:
    """Reviews as (reviewer_id, asin, rating, timestamp) from user_id, parent_asin, rating, timestamp (ms)."""
    df, rep = amazon.parse_reviews(path, report, row=review_row, lines=_text_lines)
    if df.height == 0 and rep.n_lines and all("'user_id'" in w for _, w in rep.examples):
        raise DataError(f"{path}: no line has the 2023 fields (user_id, parent_asin, timestamp); for an Amazon "
                        "2014 file use 'mrdib prepare <category>' without the amazon2023: prefix")
    return df, rep


def _strings(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [v.strip()] if v.strip() else []
    if isinstance(v, list):
        return [str(x).strip() for x in v if x is not None and str(x).strip()]
    return [str(v)]


def largest_image(images: Any) -> str | None:
    """The largest URL of the main image (variant ``MAIN`` if any, else the first): hi_res, large, thumb."""
    if not isinstance(images, list) or not images:
        return None
    imgs = [im for im in images if isinstance(im, dict)]
    main = next((im for im in imgs if im.get("variant") == "MAIN"), imgs[0] if imgs else None)
    for im in ([main] if main else []) + imgs:
        for size in IMAGE_SIZES:
            url = im.get(size)
            if isinstance(url, str) and url.strip():
                return url.strip()
    return None


def meta_record(d: dict[str, Any]) -> dict[str, str | None]:
    """The item columns of one 2023 metadata object, in the 2014 record's shape.

    The description joins the ``features`` bullet points and the ``description`` paragraphs; ``store`` is
    the brand; ``categories`` is stored as a one-path list of paths (JSON), like 2014's.
    """
    title = " ".join(_strings(d.get("title"))) or None
    desc = " ".join(_strings(d.get("features")) + _strings(d.get("description"))) or None
    cats = _strings(d.get("categories"))
    return {"title": title, "brand": " ".join(_strings(d.get("store"))) or None,
            "categories": json.dumps([cats], ensure_ascii=False) if cats else None,
            "description": desc, "image_url": largest_image(d.get("images"))}


def json_dict(line: str) -> dict[str, Any]:
    """One 2023 metadata line: a JSON object."""
    d = json.loads(line)
    if not isinstance(d, dict):
        raise TypeError(f"a {type(d).__name__}, not an object")
    return d


def parse_meta(path: Path, wanted: Iterable[str] | None = None,
               report: ParseReport | None = None) -> tuple[dict[str, dict[str, str | None]], ParseReport]:
    """parent_asin -> item columns for the ``wanted`` items; other lines are only checked for an id."""
    return amazon.parse_meta(path, wanted, report, lines=_text_lines, id_re=_PARENT_RE, id_key="parent_asin",
                             decode=json_dict, record=meta_record, what="a JSON object")
