"""SIGKILL and write failures during ``mrdib extract-features``: resumed results are byte-identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults.helpers import (IMAGE_ARGS, IMAGE_TABLE, assert_intact, killed, leftovers, mrdib, ok,
                                  one_line_error, snapshot)

POINTS = {
    "after-shard-2": {"target": "mrdib_cli.features.extract._save_shard", "nth": 2, "when": "after",
                      "action": "kill"},
    "while-writing-table": {"target": "pyarrow.parquet.write_table", "action": "kill"},
    "before-table-rename": {"target": "os.replace", "match": "image-tiny-vit-test-random.parquet",
                            "action": "kill"},
    "before-manifest": {"target": "mrdib_cli.workspace.atomic_write_json", "match": "features-image",
                        "action": "kill"},
}


@pytest.mark.parametrize("point", list(POINTS))
def test_extract_killed_then_rerun_is_byte_identical(demo_wd: Path, reference_image_table: bytes,
                                                     point: str) -> None:
    killed(mrdib(demo_wd, *IMAGE_ARGS, fault=POINTS[point]))
    ok(mrdib(demo_wd, *IMAGE_ARGS))
    assert (demo_wd / IMAGE_TABLE).read_bytes() == reference_image_table
    if point == "after-shard-2":  # the two finished shards were reused: only the other two were computed
        man = json.loads((demo_wd / "datasets/demo/manifests/features-image-tiny-vit-test-random.json").read_text())
        assert man["extra"]["timing"]["shards_computed"] == 2
    ok(mrdib(demo_wd, "cache", "gc", "--min-age", "0"))
    assert leftovers(demo_wd) == []


def test_reextract_killed_keeps_previous_table(demo_wd: Path, reference_image_table: bytes) -> None:
    """A re-extraction with other settings killed at the rename leaves the previous table and its cache."""
    ok(mrdib(demo_wd, *IMAGE_ARGS))
    before = snapshot(demo_wd / "datasets" / "demo")
    killed(mrdib(demo_wd, *IMAGE_ARGS, "--no-normalize",
                 fault={"target": "os.replace", "match": "image-tiny-vit-test-random.parquet", "action": "kill"}))
    assert_intact(before, demo_wd / "datasets" / "demo", only=(IMAGE_TABLE.split("demo/", 1)[1],))
    p = ok(mrdib(demo_wd, *IMAGE_ARGS))
    assert "cached" in p.stderr.lower() or "up to date" in p.stderr.lower(), p.stderr
    assert (demo_wd / IMAGE_TABLE).read_bytes() == reference_image_table


@pytest.mark.parametrize("action", ["enospc", "eacces"])
def test_failing_writer_gives_one_line_and_keeps_previous_table(demo_wd: Path, reference_image_table: bytes,
                                                                 action: str) -> None:
    """Disk full / permission denied while writing the table: one line, old table intact, no temp files."""
    ok(mrdib(demo_wd, *IMAGE_ARGS))
    before = snapshot(demo_wd / "datasets" / "demo")
    p = mrdib(demo_wd, *IMAGE_ARGS, "--no-normalize",
              fault={"target": "pyarrow.parquet.write_table", "action": action})
    one_line_error(p, "space" if action == "enospc" else "permission", "--workdir", code=1)
    assert_intact(before, demo_wd / "datasets" / "demo")
    assert [x for x in leftovers(demo_wd) if ".shards" not in x] == []
    ok(mrdib(demo_wd, *IMAGE_ARGS, "--no-normalize"))
    assert leftovers(demo_wd) == []
