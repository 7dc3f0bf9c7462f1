"""``mrdib prepare``: raw Amazon 2014 files -> deduplicated, k-core filtered, split dataset in Parquet.

Steps: obtain the two raw files (download with resume, or ``--raw-dir``), parse reviews (JSON lines),
drop exact duplicate (user, item, time) reviews, iterate the k-core, re-index, split per user, attach
item metadata (Python-literal lines) and write the dataset folder with its card. The whole build is one
cached step keyed on the raw files' digests and the parameters, so a second run does no work.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mrdib_cli.defaults import SEED
from mrdib_cli.data import amazon, amazon2023
from mrdib_cli.data.dataset_io import (CORE_FILES, discard_if_unpublished, interactions_frame, items_frame,
                                       make_card, publish_dataset, users_frame)
from mrdib_cli.data.handle import PUBLISHING
from mrdib_cli.data.kcore import dedup_mask, factorize, kcore
from mrdib_cli.data.sources import DEMO, KNOWN_DIGESTS, AmazonCategory, download, lookup
from mrdib_cli.data.split import LABELS, assign_split
from mrdib_cli.errors import DataError, MissingInputError, UsageError
from mrdib_cli.workspace import StepResult, Workspace, cached_step, file_digest, read_json

Log = Callable[[str], None]


@dataclass
class PrepareOptions:
    """Parameters of ``prepare`` that change the result (stored in the manifest and the card)."""

    k_core: int = 5
    seed: int = SEED
    split: str = "mmrec"
    max_malformed: float = 0.01

    def validate(self) -> None:
        if self.k_core < 1:
            raise UsageError("--k-core must be >= 1")
        if self.seed < 0:  # numpy's generators take only non-negative seeds
            raise UsageError(f"--seed must be >= 0, got {self.seed}")
        if self.split not in ("mmrec", "temporal"):
            raise UsageError(f"--split must be 'mmrec' or 'temporal', got '{self.split}'")
        if not 0.0 <= self.max_malformed <= 1.0:
            raise UsageError("--max-malformed is a fraction between 0 and 1 (e.g. 0.01 for 1%)")


# ------------------------------------------------------------------------------------------- raw files
Category = AmazonCategory | amazon2023.Category2023
# how each release's raw files are parsed; both give the same columns, so everything after parsing is shared
PARSERS = {"amazon2014": (amazon.parse_reviews, amazon.parse_meta),
           "amazon2023": (amazon2023.parse_reviews, amazon2023.parse_meta)}


def _in_dir(raw_dir: Path, fname: str) -> Path | None:
    """``fname`` in ``raw_dir``, or its uncompressed twin (the 2023 release is also shared as plain .jsonl)."""
    for cand in (fname, fname[:-3] if fname.endswith(".gz") else None):
        if cand and (raw_dir / cand).is_file():
            return raw_dir / cand
    return None


def locate_raw(cat: Category, raw_dir: Path) -> dict[str, Path]:
    """The two files of ``cat`` in a user-given folder; never touches the network."""
    raw_dir = Path(raw_dir)
    found = {k: _in_dir(raw_dir, f) for k, f in (("reviews", cat.reviews_file), ("meta", cat.meta_file))}
    missing = [f for f, p in zip(cat.files, found.values()) if p is None]
    if missing:
        raise MissingInputError(f"--raw-dir {raw_dir} is missing {', '.join(missing)} (needs "
                                f"{cat.reviews_file} and {cat.meta_file})")
    return found  # type: ignore[return-value]


def fetch_raw(ws: Workspace, cat: Category, url: str | None = None,
              on_file: Callable[[str], Callable[[int, int | None], None] | None] | None = None,
              log: Log = lambda s: None) -> dict[str, Path]:
    """Download the two files into ``<workdir>/raw/<release>`` unless already complete there."""
    dest_dir = ws.raw_dir / cat.release
    paths = {}
    for key, fname in (("reviews", cat.reviews_file), ("meta", cat.meta_file)):
        dest = dest_dir / fname
        if not dest.is_file():
            hint = (f"the server is unreachable; download {cat.reviews_file} and {cat.meta_file} elsewhere and "
                    f"run 'mrdib prepare {cat.name} --raw-dir DIR', or set --base-url to a mirror")
            download(cat.url_for(fname, url), dest, expected_sha256=KNOWN_DIGESTS.get(fname),
                     on_progress=on_file(fname) if on_file else None, raw_dir_hint=hint, on_retry=log)
        paths[key] = dest
    return paths


# ------------------------------------------------------------------------------------------- build
def build_dataset(ds_dir: Path, name: str, reviews: Path, meta: Path, opts: PrepareOptions,
                  source: dict[str, Any], log: Log = lambda s: None, release: str = "amazon2014",
                  **card_extra: Any) -> dict[str, Any]:
    """Parse, deduplicate, k-core, split and write; returns the dataset card."""
    parse_reviews, parse_meta = PARSERS[release]
    t0 = time.perf_counter()
    df, rrep = parse_reviews(reviews)
    rrep.check(opts.max_malformed)
    log(f"parsed {df.height:,} reviews ({rrep.n_bad} malformed lines) in {time.perf_counter() - t0:.1f}s")
    if df.height == 0:
        raise DataError(f"{reviews}: no valid reviews")
    u_codes, u_vals = factorize(df["reviewer_id"].to_numpy())
    i_codes, i_vals = factorize(df["asin"].to_numpy())
    ts = df["timestamp"].to_numpy()
    first = dedup_mask(u_codes, i_codes, ts)
    n_dups = int((~first).sum())
    rows = np.flatnonzero(first)
    kc = kcore(u_codes[rows], i_codes[rows], opts.k_core)
    if len(kc.keep) == 0:
        raise DataError(f"no interactions left after the {opts.k_core}-core of {len(rows):,} reviews; "
                        "lower --k-core")
    rows = rows[kc.keep]
    code = assign_split(kc.user_idx, ts[rows], opts.split, opts.seed)
    n_users, n_items = len(kc.user_codes), len(kc.item_codes)
    order = np.argsort(kc.user_idx, kind="stable")
    inter = interactions_frame(kc.user_idx[order], kc.item_idx[order], LABELS[code[order]],
                               df["rating"].to_numpy()[rows][order], ts[rows][order])
    asins = i_vals[kc.item_codes]
    t1 = time.perf_counter()
    meta_map, mrep = parse_meta(meta, wanted=asins.tolist())
    mrep.check(opts.max_malformed)
    log(f"parsed metadata of {len(meta_map):,} items ({mrep.n_bad} malformed lines) in "
        f"{time.perf_counter() - t1:.1f}s")
    items = items_frame(n_items, asin=asins.tolist(), **amazon.items_from_meta(asins, meta_map))
    users = users_frame(n_users, u_vals[kc.user_codes].tolist())
    card = make_card(
        name, inter, n_users, n_items, split={"scheme": opts.split, "seed": opts.seed, "rule": _rule(opts.split)},
        k_core=opts.k_core, source=source,
        n_raw_reviews=int(df.height + rrep.n_bad), n_malformed_reviews=rrep.n_bad, n_malformed_meta=mrep.n_bad,
        malformed={"reviews": rrep.to_dict(), "meta": mrep.to_dict()},
        n_duplicates_dropped=n_dups, k_core_passes=kc.passes,
        n_items_without_meta=int(n_items - sum(a in meta_map for a in asins.tolist())),
        params=asdict(opts), **card_extra)
    publish_dataset(ds_dir, inter, items, users, card)
    return card


def _rule(scheme: str) -> str:
    held = "n<10: n-2 train, 1 valid, 1 test; n>=10: floor(0.2n) held out, floor(half) valid, rest test"
    return (f"seeded per-user shuffle; {held}" if scheme == "mmrec"
            else f"per-user latest interactions held out; {held}")


# ------------------------------------------------------------------------------------------- driver
def prepare(ws: Workspace, dataset: str, opts: PrepareOptions, *, name: str | None = None,
            raw_dir: Path | None = None, url: str | None = None, force: bool = False,
            demo: dict[str, Any] | None = None, log: Log = lambda s: None,
            on_file: Callable[[str], Any] | None = None) -> tuple[StepResult, dict[str, Any]]:
    """Prepare ``dataset`` (an Amazon 2014 category or ``demo``) as ``name`` and make it active."""
    opts.validate()
    extra: dict[str, Any] = {}
    if dataset.strip().lower() == DEMO:
        from mrdib_cli.data.demo import DemoConfig, generate_raw

        cfg = DemoConfig(**(demo or {}))
        cat = AmazonCategory(DEMO, "Demo")
        gen_dir = ws.raw_dir / "demo" / cfg.slug()
        generate_raw(cfg, gen_dir, log=log)
        paths = locate_raw(cat, gen_dir)
        source = {"kind": "synthetic demo", "generator": cfg.to_dict(), "raw_dir": str(gen_dir)}
        extra = {"image_dir": str((gen_dir / "images").resolve()), "demo": cfg.to_dict()}
    else:
        cat = amazon2023.lookup(dataset) if amazon2023.is_2023(dataset) else lookup(dataset)
        if raw_dir is not None:
            paths = locate_raw(cat, raw_dir)
            source = {"kind": cat.release, "category": cat.category, "raw_dir": str(Path(raw_dir).resolve())}
        else:
            paths = fetch_raw(ws, cat, url, on_file, log)
            source = {"kind": cat.release, "category": cat.category, "urls": [cat.url_for(f, url) for f in cat.files]}
        if cat.release == "amazon2023":
            extra = {"timestamp_unit": "ms"}
    name = name or cat.default_name
    ds_dir = ws.dataset_dir(name)
    inputs = {k: file_digest(p) for k, p in paths.items()}
    source = {**source, "files": {k: p.name for k, p in paths.items()}, "digests": inputs}
    params = {"dataset": cat.name, **asdict(opts)}

    def run() -> dict[str, Any]:
        card = build_dataset(ds_dir, name, paths["reviews"], paths["meta"], opts, source, log,
                             release=getattr(cat, "release", "amazon2014"), **extra)
        return {"n_interactions": card["n_interactions"]}

    # a build killed while swapping files in leaves a marker: never trust that folder's manifest
    force = force or (ds_dir / PUBLISHING).exists()
    with discard_if_unpublished(ds_dir):
        res = cached_step("prepare", ds_dir, inputs, params, run, outputs=list(CORE_FILES), force=force,
                          lock_path=ws.lock("dataset", name))
    ws.set_active_dataset(name, by=f"mrdib prepare {dataset.strip().lower()}")
    return res, read_json(ds_dir / "dataset.json")
