"""`mrdib cache ls` / `mrdib cache gc`: artefacts listed with provenance; only garbage is removed."""

from __future__ import annotations

import json
from pathlib import Path

from mrdib_cli.data.cache import find_garbage, gc, list_artefacts
from mrdib_cli.data.prepare import PrepareOptions, prepare
from mrdib_cli.workspace import Workspace
from rawfixtures import make_raw


def test_ls_and_gc(tmp_path: Path, cli) -> None:
    ws = Workspace(tmp_path / "w")
    raw = tmp_path / "raw"
    make_raw(raw)
    prepare(ws, "baby", PrepareOptions(), raw_dir=raw)
    demo = {"n_users": 30, "n_items": 20, "n_interactions": 200}
    prepare(ws, "demo", PrepareOptions(), demo=demo)
    prepare(ws, "demo", PrepareOptions(), demo={**demo, "n_interactions": 210})  # first demo folder orphaned
    kinds = {(a.kind, a.name) for a in list_artefacts(ws)}
    assert ("prepare", "baby") in kinds and ("prepare", "demo") in kinds and ("raw", "demo images") in kinds
    # garbage: a temp file, a partial download, a dataset folder that never got a card
    (ws.dataset_dir("baby") / ".tmp-interactions.parquet.x").write_bytes(b"half")
    (ws.raw_dir / "amazon2014").mkdir(parents=True)
    (ws.raw_dir / "amazon2014" / "reviews_Baby_5.json.gz.part").write_bytes(b"part")
    (ws.datasets_dir / "broken").mkdir()
    assert all("lock" in w for _, w in find_garbage(ws, min_age=3600))
    removed, _ = gc(ws, dry_run=True, min_age=0)
    why = {p.relative_to(ws.root).as_posix(): w for p, w in removed}
    assert why["datasets/baby/.tmp-interactions.parquet.x"].startswith("temp file")
    assert why["raw/amazon2014/reviews_Baby_5.json.gz.part"] == "partial download"
    assert why["datasets/broken"].startswith("dataset folder without")
    demo_dirs = [k for k, w in why.items() if w.startswith("generated demo")]
    assert len(demo_dirs) == 1
    used = json.loads((ws.dataset_dir("demo") / "dataset.json").read_text())["source"]["raw_dir"]
    assert not used.endswith(demo_dirs[0])
    assert (ws.root / demo_dirs[0]).exists()  # dry run removed nothing
    rc, out, err = cli("--workdir", str(ws.root), "cache", "gc", "--min-age", "0", check=True)
    assert "partial download" in out
    assert not (ws.root / demo_dirs[0]).exists() and not (ws.datasets_dir / "broken").exists()
    assert Path(used).exists() and (ws.dataset_dir("baby") / "interactions.parquet").exists()
    rc, out, err = cli("--workdir", str(ws.root), "cache", "ls", check=True)
    assert "prepare" in out and "baby" in out
    rc, out, err = cli("--workdir", str(ws.root), "cache", "gc", "--min-age", "0", check=True)
    assert "0 entries" in err
