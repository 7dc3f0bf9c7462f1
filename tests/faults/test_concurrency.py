"""Two processes on the same workdir, same step, same dataset: one waits, neither corrupts the other."""

from __future__ import annotations

import time
from pathlib import Path

from tests.faults.helpers import (DEMO_ARGS, IMAGE_ARGS, IMAGE_TABLE, TRAIN, assert_same_dataset, leftovers, ok,
                                  one_line_error, outcome, start_forked)


def _wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _hold(target: str, seconds: float = 3.0) -> dict:
    """A fault that parks the first process inside the step (it holds the step's lock meanwhile)."""
    return {"target": target, "action": f"sleep:{seconds}"}


def test_two_identical_prepares(workdir: Path, tmp_path: Path, reference_demo) -> None:
    marker = tmp_path / "a-inside"
    a = start_forked(workdir, *DEMO_ARGS, fault=_hold("mrdib_cli.data.dataset_io._write_parquet"),
                     MRDIB_TEST_FAULT_MARKER=str(marker))
    _wait_for(marker)
    b = start_forked(workdir, *DEMO_ARGS)
    ra, rb = ok(a.wait()), ok(b.wait())
    assert "cached" in rb.stderr.lower() and "cached" not in ra.stderr.lower(), (ra.stderr, rb.stderr)
    assert_same_dataset(workdir / "datasets" / "demo", workdir, reference_demo[1], reference_demo[0])
    assert leftovers(workdir) == []


def test_two_prepares_with_different_parameters(workdir: Path, tmp_path: Path, reference_seed7) -> None:
    """The second waits for the first, then replaces its result whole: the folder is one complete build."""
    marker = tmp_path / "a-inside"
    a = start_forked(workdir, *DEMO_ARGS, fault=_hold("mrdib_cli.data.dataset_io._write_parquet"),
                     MRDIB_TEST_FAULT_MARKER=str(marker))
    _wait_for(marker)
    b = start_forked(workdir, *DEMO_ARGS, "--seed", "7")
    ok(a.wait())
    ok(b.wait())
    assert_same_dataset(workdir / "datasets" / "demo", workdir, reference_seed7[1], reference_seed7[0])
    assert leftovers(workdir) == []


def test_two_identical_extractions(demo_wd: Path, tmp_path: Path, reference_image_table: bytes) -> None:
    marker = tmp_path / "a-inside"
    a = start_forked(demo_wd, *IMAGE_ARGS, fault=_hold("mrdib_cli.features.extract._save_shard"),
                     MRDIB_TEST_FAULT_MARKER=str(marker))
    _wait_for(marker)
    b = start_forked(demo_wd, *IMAGE_ARGS)
    ra, rb = ok(a.wait()), ok(b.wait())
    assert (demo_wd / IMAGE_TABLE).read_bytes() == reference_image_table
    assert "cached" in rb.stderr.lower() or "up to date" in rb.stderr.lower(), (ra.stderr, rb.stderr)
    assert leftovers(demo_wd) == []


def test_two_trainings_of_one_run(demo_wd: Path, tmp_path: Path, reference_run: dict) -> None:
    """A second 'train --resume' of a run that is training now fails at once; the first is unaffected."""
    marker = tmp_path / "a-inside"
    a = start_forked(demo_wd, *TRAIN, fault={"target": "mrdib_cli.training.sampler.BPRSampler.epoch", "nth": 2,
                                             "action": "sleep:3"}, MRDIB_TEST_FAULT_MARKER=str(marker))
    _wait_for(marker)
    for extra in (["--resume"], ["--force"]):
        one_line_error(start_forked(demo_wd, *TRAIN, *extra).wait(), "being written", code=1)
    ok(a.wait())
    assert outcome(demo_wd / "runs" / "r") == reference_run
