"""Disk full and unwritable workdirs (a failing writer; tests run as root, so chmod cannot stop writes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.helpers import DEMO_ARGS, assert_intact, leftovers, mrdib, ok, one_line_error, snapshot


@pytest.mark.parametrize("action", ["enospc", "eacces"])
def test_prepare_failing_writer_keeps_dataset_and_leaves_no_temp(demo_wd: Path, action: str) -> None:
    ds = demo_wd / "datasets" / "demo"
    before = snapshot(ds)
    p = mrdib(demo_wd, *DEMO_ARGS, "--seed", "5",
              fault={"target": "mrdib_cli.data.dataset_io._write_parquet", "nth": 2, "action": action})
    one_line_error(p, "--workdir", code=1)
    assert_intact(before, ds)
    assert leftovers(demo_wd) == []  # the staging folder was removed on the way out


def test_state_file_write_fails_after_build(demo_wd: Path) -> None:
    """The dataset is published, then writing state.json fails: the dataset is whole, the rerun is cached."""
    p = mrdib(demo_wd, *DEMO_ARGS, "--name", "other",
              fault={"target": "mrdib_cli.workspace.atomic_write_json", "match": "state.json", "action": "enospc"})
    one_line_error(p, "space", code=1)
    assert leftovers(demo_wd) == []
    again = ok(mrdib(demo_wd, *DEMO_ARGS, "--name", "other"))
    assert "cached" in again.stderr.lower()


def test_workdir_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "not-a-dir"
    f.write_text("x")
    p = mrdib(f / "wd", *DEMO_ARGS)
    one_line_error(p, "directory", code=1)
    assert f.read_text() == "x"
