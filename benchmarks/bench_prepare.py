"""Benchmark `mrdib prepare` end to end on generated raw files the size of Amazon Baby 2014.

Generates ``reviews_Baby_5.json.gz`` (160,792 review lines shaped like the release: reviewText, summary,
helpful, ...) and ``meta_Baby.json.gz`` (71,317 Python-literal lines with related lists, sales ranks,
categories, descriptions), then times ``python -m mrdib_cli prepare baby --raw-dir ...`` in a fresh
workdir (a cold build, no cache) and reports wall time and the peak RSS of that process.

    python benchmarks/bench_prepare.py [--out DIR] [--repeat 1] [--json]

Target (issue #2): under 20 s on a 2-core machine.
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

from mrdib_cli.data.rawfmt import write_meta, write_reviews  # noqa: E402

N_REVIEWS, N_META, N_USERS, N_ITEMS = 160_792, 71_317, 19_445, 7_050
WORDS = ("baby soft great love easy clean bottle size fits well daughter son recommend quality price "
         "product would bought cute little use perfect car seat stroller works nice months old").split()


def _text(rng: np.random.Generator, mean_words: int) -> str:
    return " ".join(rng.choice(WORDS, max(3, int(rng.exponential(mean_words)))))


def generate(folder: Path, seed: int = 0) -> None:
    """Baby-sized raw files; every user and item already has >= 5 reviews (as in a 5-core file)."""
    rng = np.random.default_rng(seed)
    deg = np.full(N_USERS, 5)
    extra = N_REVIEWS - deg.sum()
    deg += np.bincount(rng.choice(N_USERS, extra, p=_zipf(N_USERS, 0.8, rng)), minlength=N_USERS)
    users = np.repeat(np.arange(N_USERS), deg)
    items = np.concatenate([np.repeat(np.arange(N_ITEMS), 5),
                            rng.choice(N_ITEMS, N_REVIEWS - 5 * N_ITEMS, p=_zipf(N_ITEMS, 0.9, rng))])
    rng.shuffle(items)
    order = np.argsort(items, kind="stable")  # the release is grouped by product
    asins = [f"B{k:09d}" for k in rng.permutation(N_META)]
    times = rng.integers(1_000_000_000, 1_406_000_000, N_REVIEWS)
    write_reviews(folder / "reviews_Baby_5.json.gz", (
        {"reviewerID": f"A{users[k]:013d}", "asin": asins[items[k]], "reviewerName": "Jane",
         "helpful": [int(rng.integers(0, 3)), 3], "reviewText": _text(rng, 80), "overall": float(rng.integers(1, 6)),
         "summary": _text(rng, 4), "unixReviewTime": int(times[k]), "reviewTime": "01 1, 2013"} for k in order))
    write_meta(folder / "meta_Baby.json.gz", (
        {"asin": asins[i], "title": _text(rng, 8), "price": round(float(rng.uniform(2, 80)), 2),
         "imUrl": f"http://ecx.images-amazon.com/images/I/{asins[i]}.jpg",
         "related": {"also_bought": [asins[j] for j in rng.integers(0, N_META, int(rng.integers(0, 60)))],
                     "bought_together": [asins[int(rng.integers(0, N_META))]]},
         "salesRank": {"Baby": int(rng.integers(1, 10**6))}, "brand": "Acme",
         "categories": [["Baby", "Feeding", "Bottle-Feeding"], ["Baby", "Gear"]],
         "description": _text(rng, 50)} for i in range(N_META)))


def _zipf(n: int, a: float, rng: np.random.Generator) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** a
    w = w[rng.permutation(n)]
    return w / w.sum()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mrdib-bench-prepare")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print one JSON line with the figures (last line)")
    args = ap.parse_args()
    raw = args.out / "raw"
    gen_s = None
    if not (raw / "meta_Baby.json.gz").exists():
        raw.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        generate(raw)
        gen_s = time.perf_counter() - t
        print(f"generated raw files in {time.perf_counter() - t:.1f}s: "
              + ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in sorted(raw.glob("*.gz"))))
    walls = []
    for r in range(args.repeat):
        wd = args.out / f"wd{r}"
        shutil.rmtree(wd, ignore_errors=True)
        env = {**os.environ, "MRDIB_NO_PROGRESS": "1"}
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "mrdib_cli", "--workdir", str(wd), "prepare", "baby",
                            "--raw-dir", str(raw)], cwd=ROOT, env=env, capture_output=True, text=True)
        walls.append(time.perf_counter() - t)
        if p.returncode != 0:
            sys.exit(f"prepare failed:\n{p.stderr}")
        print(p.stderr.strip())
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"prepare baby (Baby-sized raw: {N_REVIEWS:,} reviews + {N_META:,} meta lines): "
          f"wall {min(walls):.1f}s (best of {len(walls)}), peak RSS {peak:.0f} MiB, {os.cpu_count()} CPUs")
    if args.json:
        print(json.dumps({"reviews": N_REVIEWS, "meta_lines": N_META, "wall_s": round(min(walls), 2),
                          "walls_s": [round(w, 2) for w in walls], "peak_rss_mib": round(peak),
                          "generate_s": None if gen_s is None else round(gen_s, 1),
                          "raw_mib": round(sum(p.stat().st_size for p in raw.glob("*.gz")) / 2**20, 1)}))


if __name__ == "__main__":
    main()
