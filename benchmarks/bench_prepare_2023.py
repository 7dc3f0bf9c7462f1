"""Benchmark `mrdib prepare amazon2023:<Category>` on generated files the size of Amazon Baby.

Generates ``Baby_Products.jsonl.gz`` (160,792 review lines with every field of the 2023 release: rating,
title, text, images, asin, parent_asin, user_id, timestamp in ms, helpful_vote, verified_purchase) from
19,445 users over 7,050 products, and ``meta_Baby_Products.jsonl.gz`` (the 7,050 products plus 3x as many
never-reviewed ones, as the release's metadata covers the whole category: title, features and
description lists, images as {thumb, large, variant, hi_res}, videos, store, categories, details, ...),
then times ``python -m mrdib_cli prepare amazon2023:Baby_Products --raw-dir ...`` in a fresh workdir (a
cold build) and reports wall time, peak RSS and the resulting counts.

    python benchmarks/bench_prepare_2023.py [--out DIR] [--json]

Target (issue #28): under 20 s on the 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mrdib_cli.data.rawfmt import write_reviews  # noqa: E402  (gzipped JSON lines, reproducible bytes)

N_REVIEWS, N_USERS, N_ITEMS, META_FACTOR = 160_792, 19_445, 7_050, 3
CATEGORY = "Baby_Products"
WORDS = ("baby soft great love easy clean bottle size fits well daughter son recommend quality price "
         "product would bought cute little use perfect car seat stroller works nice months old").split()


def _text(rng: np.random.Generator, mean_words: int) -> str:
    return " ".join(rng.choice(WORDS, max(3, int(rng.exponential(mean_words)))))


def _pairs(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) rows: every user >= 5 distinct items, popularity-skewed items, N_REVIEWS rows in all."""
    extra = rng.multinomial(N_REVIEWS - 5 * N_USERS, rng.dirichlet(np.full(N_USERS, 0.5)))
    counts = 5 + extra
    pop = 1.0 / np.arange(1, N_ITEMS + 1) ** 0.6
    pop /= pop.sum()
    users, items = [], []
    for u, c in enumerate(counts):
        c = min(int(c), N_ITEMS)
        users.append(np.full(c, u))
        items.append(rng.choice(N_ITEMS, c, replace=False, p=pop))
    return np.concatenate(users), np.concatenate(items)


def _image(rng: np.random.Generator, k: int, variant: str) -> dict:
    return {"thumb": f"https://m.media-amazon.com/images/I/{k}._SS40_.jpg",
            "large": f"https://m.media-amazon.com/images/I/{k}.jpg", "variant": variant,
            "hi_res": f"https://m.media-amazon.com/images/I/{k}._SL1500_.jpg" if rng.random() < 0.8 else None}


def generate(out: Path, seed: int = 0) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    users, items = _pairs(rng)
    ts = 1_500_000_000_000 + rng.integers(0, 7 * 365 * 86_400_000, len(users))

    def reviews():
        for u, i, t in zip(users.tolist(), items.tolist(), ts.tolist()):
            yield {"rating": float(rng.integers(1, 6)), "title": _text(rng, 4), "text": _text(rng, 40),
                   "images": [], "asin": f"B{i:08d}V{int(rng.integers(0, 3))}", "parent_asin": f"B{i:08d}",
                   "user_id": f"AG{u:026d}", "timestamp": t, "helpful_vote": int(rng.poisson(1)),
                   "verified_purchase": bool(rng.random() < 0.9)}

    def metas():
        for i in rng.permutation(N_ITEMS * (1 + META_FACTOR)).tolist():
            yield {"main_category": "Baby", "title": _text(rng, 8),
                   "average_rating": round(float(rng.uniform(1, 5)), 1),
                   "rating_number": int(rng.integers(1, 5000)), "features": [_text(rng, 8) for _ in range(4)],
                   "description": [_text(rng, 30)], "price": round(float(rng.uniform(3, 90)), 2),
                   "images": [_image(rng, i * 10 + k, "MAIN" if k == 0 else f"PT0{k}") for k in range(4)],
                   "videos": [], "store": f"Store {i % 500}",
                   "categories": ["Baby Products", "Nursery", "Bedding"][: 1 + i % 3],
                   "details": {"Item Weight": "1 pound", "Manufacturer": f"Maker {i % 300}"},
                   "parent_asin": f"B{i:08d}", "bought_together": None}

    return {"reviews": write_reviews(out / f"{CATEGORY}.jsonl.gz", reviews()),
            "meta": write_reviews(out / f"meta_{CATEGORY}.jsonl.gz", metas())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="where the raw files go (default: a temp dir)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    raw = a.out or Path(tempfile.mkdtemp(prefix="mrdib-2023-raw-"))
    if not (raw / f"meta_{CATEGORY}.jsonl.gz").exists():
        t0 = time.perf_counter()
        generate(raw)
        print(f"generated {raw} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="mrdib-2023-wd-"))
    env = {**os.environ, "MRDIB_HOME": str(work), "MRDIB_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "mrdib_cli", "--quiet", "prepare", f"amazon2023:{CATEGORY}",
                        "--raw-dir", str(raw), "--json"], capture_output=True, text=True, env=env, cwd=str(ROOT))
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"prepare failed ({p.returncode}): {p.stderr.strip()[-400:]}")
    card = json.loads(p.stdout)["card"]
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    res = {"wall_s": round(wall, 2), "peak_rss_mib": round(rss), "n_users": card["n_users"],
           "n_items": card["n_items"], "n_interactions": card["n_interactions"],
           "n_raw_reviews": card["n_raw_reviews"], "raw": str(raw)}
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res, indent=2) if a.json else
          f"prepare amazon2023:{CATEGORY}: {res['wall_s']} s wall, {res['peak_rss_mib']} MiB peak RSS; "
          f"{res['n_users']:,} users, {res['n_items']:,} items, {res['n_interactions']:,} interactions "
          f"from {res['n_raw_reviews']:,} reviews")


if __name__ == "__main__":
    main()
