"""The workdir's cache: list artefacts (``mrdib cache ls``) and remove orphans and temp files (``gc``).

An *artefact* is a file or folder a step produced: raw downloads, dataset tables, feature tables, graphs,
runs. Manifests say what each was built from. ``gc`` removes only what no step can use any more: temp
files and staging folders of interrupted writes (older than ``min_age`` so that a running step is never
disturbed), partial downloads, dataset folders that never got a card, generated demo folders no dataset
refers to, manifests whose outputs are gone, and lock files nobody holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrdib_cli.errors import UsageError
from mrdib_cli.workspace import TMP_PREFIX, Workspace, read_json, restore_old_copy


@dataclass
class Artefact:
    kind: str
    name: str
    path: Path
    size: int
    built_from: str
    when: float


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _short(d: str) -> str:
    return d.split(":", 1)[-1][:10] if isinstance(d, str) else str(d)


def _manifest_rows(ds: Path) -> tuple[list[Artefact], set[str]]:
    rows, covered = [], set()
    for m in sorted((ds / "manifests").glob("*.json")):
        try:
            man = read_json(m)
        except (json.JSONDecodeError, OSError):
            continue
        outs = [ds / rel for rel in man.get("outputs", {})]
        covered.update(man.get("outputs", {}))
        params = ", ".join(f"{k}={v}" for k, v in sorted(man.get("params", {}).items())
                           if k not in ("source_dir",))[:60]
        inputs = ", ".join(f"{k}@{_short(v)}" for k, v in sorted(man.get("inputs", {}).items()))[:60]
        rows.append(Artefact(man.get("step", m.stem), ds.name, ds, sum(_size(o) for o in outs if o.exists()),
                             f"{inputs}; {params}", m.stat().st_mtime))
    return rows, covered


def list_artefacts(ws: Workspace) -> list[Artefact]:
    """Every artefact with its size, what it was built from, and when."""
    rows: list[Artefact] = []
    if ws.raw_dir.exists():
        for p in sorted(ws.raw_dir.rglob("*.gz")):
            if not p.name.startswith(TMP_PREFIX) and not p.name.endswith(".part"):
                rows.append(Artefact("raw", p.name, p, p.stat().st_size,
                                     "demo generator" if "demo" in p.parts else "download", p.stat().st_mtime))
        for p in sorted((ws.raw_dir / "demo").glob("*/images")) if (ws.raw_dir / "demo").exists() else []:
            rows.append(Artefact("raw", "demo images", p, _size(p), "demo generator", p.stat().st_mtime))
    for ds in sorted(ws.datasets_dir.glob("*")) if ws.datasets_dir.exists() else []:
        if ds.name.startswith(TMP_PREFIX) or not ds.is_dir():
            continue
        man_rows, covered = _manifest_rows(ds)
        rows.extend(man_rows)
        for sub, kind in (("features", "features"), ("graphs", "graph")):
            for p in sorted((ds / sub).glob("*")) if (ds / sub).exists() else []:
                if p.name.startswith(".") or f"{sub}/{p.name}" in covered:
                    continue
                rows.append(Artefact(kind, f"{ds.name}/{p.name}", p, _size(p), _table_source(p), p.stat().st_mtime))
    for run in sorted(ws.runs_dir.glob("*")) if ws.runs_dir.exists() else []:
        if (run / "config.json").exists():
            with contextlib.suppress(Exception):
                cfg = read_json(run / "config.json")
                rows.append(Artefact("run", run.name, run, _size(run),
                                     f"dataset={cfg.get('dataset')}, backbone={cfg.get('backbone')}",
                                     (run / "config.json").stat().st_mtime))
    return rows


def _table_source(p: Path) -> str:
    if p.suffix == ".parquet":
        with contextlib.suppress(Exception):
            from mrdib_cli.data.feature_store import read_meta

            m = read_meta(p)
            return f"{m.get('model')} ({m.get('source', '')})"[:80]
    return ""


# ------------------------------------------------------------------------------------------- gc
def _unheld_lock(p: Path) -> bool:
    try:
        with open(p, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return True
    except (BlockingIOError, OSError):
        return False


def _restore_old_copies(ws: Workspace) -> None:
    """Move back previous dataset copies whose replacement was interrupted before it was moved in."""
    if not ws.datasets_dir.exists():
        return
    for side in ws.datasets_dir.glob(f"{TMP_PREFIX}*.old.*"):
        name = side.name[len(TMP_PREFIX):].rsplit(".old.", 1)[0]
        with contextlib.suppress(UsageError):  # not a dataset name: not one of ours
            restore_old_copy(ws.dataset_dir(name), ws.lock("dataset", name))


def find_garbage(ws: Workspace, *, min_age: float = 600.0, keep_partial: bool = False) -> list[tuple[Path, str]]:
    """(path, reason) of everything ``gc`` would remove."""
    root = ws.root
    if not root.exists():
        return []
    now = time.time()
    old = lambda p: now - p.stat().st_mtime >= min_age  # noqa: E731
    out: list[tuple[Path, str]] = []
    _restore_old_copies(ws)  # the only copy of a dataset is never garbage
    for p in root.rglob(f"{TMP_PREFIX}*"):
        if old(p) and not any(q.name.startswith(TMP_PREFIX) for q in p.parents if q != root):
            out.append((p, "temp file of an interrupted write"))
    if not keep_partial and ws.raw_dir.exists():
        out += [(p, "partial download") for p in ws.raw_dir.rglob("*.part") if old(p)]
    referenced = set()
    for ds in ws.datasets_dir.glob("*") if ws.datasets_dir.exists() else []:
        if ds.name.startswith(TMP_PREFIX) or not ds.is_dir():
            continue
        if not (ds / "dataset.json").exists():
            if old(ds):
                out.append((ds, "dataset folder without dataset.json (never finished)"))
            continue
        with contextlib.suppress(Exception):
            src = read_json(ds / "dataset.json").get("source", {})
            while isinstance(src, dict):
                if src.get("raw_dir"):
                    referenced.add(Path(src["raw_dir"]).resolve())
                src = src.get("from_source")
        for m in (ds / "manifests").glob("*.json"):
            with contextlib.suppress(Exception):
                outs = read_json(m).get("outputs", {})
                if outs and not any((ds / rel).exists() for rel in outs):
                    out.append((m, "manifest whose outputs are gone"))
        out += [(lk, "unused lock file") for lk in (ds / "manifests").glob(".*.lock") if _unheld_lock(lk)]
    demo = ws.raw_dir / "demo"
    out += [(lk, "unused lock file") for lk in demo.glob(".*.lock") if _unheld_lock(lk)] if demo.exists() else []
    for g in demo.glob("*") if demo.exists() else []:
        if g.is_dir() and not g.name.startswith(TMP_PREFIX) and g.resolve() not in referenced and old(g):
            out.append((g, "generated demo files no dataset uses"))
    locks = root / ".locks"
    out += [(lk, "unused lock file") for lk in locks.glob("*.lock") if _unheld_lock(lk)] if locks.exists() else []
    return out


def gc(ws: Workspace, *, dry_run: bool = False, min_age: float = 600.0,
       keep_partial: bool = False) -> tuple[list[tuple[Path, str]], int]:
    """Remove garbage; returns what was (or would be) removed and the bytes freed."""
    garbage = find_garbage(ws, min_age=min_age, keep_partial=keep_partial)
    freed = 0
    for p, _ in garbage:
        if not p.exists():
            continue
        freed += _size(p)
        if dry_run:
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return garbage, freed


def describe(a: Artefact) -> dict[str, Any]:
    return {"kind": a.kind, "name": a.name, "path": str(a.path), "size": a.size, "built_from": a.built_from,
            "when": time.strftime("%Y-%m-%d %H:%M", time.localtime(a.when))}
