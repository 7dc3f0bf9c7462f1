"""Helpers for feature tests: a tiny open_clip config, toy datasets, awkward image bytes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

HERE = Path(__file__).resolve().parent
TINY_CONFIG = HERE / "tiny-vit-test.json"
TINY_ARGS = ["--image-model-config", str(TINY_CONFIG), "--image-model", "tiny-vit-test",
             "--image-pretrained", "none", "--allow-random-weights"]


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def good_image(seed: int, size: tuple[int, int] = (40, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def write_dataset(workdir: Path, name: str, items: list[dict], image_dir: Path | None = None,
                  activate: bool = True) -> Path:
    """A minimal prepared dataset per the contract (items, interactions, users, card)."""
    d = workdir / "datasets" / name
    d.mkdir(parents=True, exist_ok=True)
    n = len(items)
    cols = ("asin", "title", "brand", "categories", "description", "image_url")
    pl.DataFrame({"item_idx": np.arange(n, dtype=np.int64),
                  **{c: pl.Series([it.get(c) for it in items], dtype=pl.String) for c in cols}}
                 ).write_parquet(d / "items.parquet")
    u = np.repeat(np.arange(3), n)
    i = np.tile(np.arange(n), 3)
    pl.DataFrame({"user_idx": u.astype(np.int64), "item_idx": i.astype(np.int64),
                  "rating": np.ones(len(u)), "timestamp": np.arange(len(u), dtype=np.int64),
                  "split": ["train"] * len(u)}).write_parquet(d / "interactions.parquet")
    pl.DataFrame({"user_idx": np.arange(3, dtype=np.int64), "reviewer_id": ["a", "b", "c"]}
                 ).write_parquet(d / "users.parquet")
    card = {"name": name, "n_users": 3, "n_items": n, "n_interactions": len(u),
            "split_sizes": {"train": len(u), "valid": 0, "test": 0}, "split": {"scheme": "toy", "seed": 0},
            "k_core": 0, "source": {"kind": "test"}}
    if image_dir is not None:
        card["image_dir"] = str(image_dir)
    (d / "dataset.json").write_text(json.dumps(card))
    if activate:
        (workdir / "state.json").write_text(json.dumps({"active_dataset": name}))
    return d


AWKWARD = {
    # asin -> (bytes or None, expected status)
    "A0": ("good-rgb", "ok"),
    "A1": ("palette-transparent", "ok"),
    "A2": ("rgba", "ok"),
    "A3": ("cmyk-jpeg", "ok"),
    "A4": ("greyscale", "ok"),
    "A5": ("corrupt", "failed"),
    "A6": ("truncated", "failed"),
    "A7": ("zero-byte", "failed"),
    "A8": ("html-as-png", "failed"),
    "A9": ("bomb", "failed"),
    "A10": (None, "missing"),
    "A11": ("by-index", "ok"),
}


def awkward_bytes(kind: str) -> tuple[str, bytes]:
    """(file extension, content) for each awkward case."""
    if kind == "good-rgb":
        return ".png", png_bytes(good_image(1))
    if kind == "palette-transparent":
        p = good_image(2).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        buf = io.BytesIO()
        p.save(buf, format="PNG", transparency=0)
        return ".png", buf.getvalue()
    if kind == "rgba":
        a = good_image(3).convert("RGBA")
        a.putalpha(128)
        return ".png", png_bytes(a)
    if kind == "cmyk-jpeg":
        return ".jpg", png_bytes(good_image(4).convert("CMYK"), "JPEG")
    if kind == "greyscale":
        return ".png", png_bytes(good_image(5).convert("L"))
    if kind == "corrupt":
        return ".png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    if kind == "truncated":
        return ".jpg", png_bytes(good_image(6, (64, 64)), "JPEG")[:300]
    if kind == "zero-byte":
        return ".png", b""
    if kind == "html-as-png":
        return ".png", b"<!doctype html><html><body>Not found</body></html>"
    if kind == "bomb":
        return ".png", png_bytes(Image.new("L", (400, 400)))  # 160k pixels > the test's --max-pixels
    if kind == "by-index":
        return ".png", png_bytes(good_image(11))
    raise ValueError(kind)
