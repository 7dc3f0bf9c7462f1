"""SIGKILL during ``mrdib prepare`` at chosen points: a rerun completes and equals an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.helpers import (CORE, DEMO_ARGS, assert_intact, assert_same_dataset, killed, leftovers, mrdib, ok,
                                   snapshot)

# kill points inside prepare, in the order the step reaches them
POINTS = {
    "demo-generation": {"target": "mrdib_cli.data.demo.draw_item", "nth": 20, "action": "kill"},
    "after-parse": {"target": "mrdib_cli.data.prepare.kcore", "action": "kill"},
    "staging-write": {"target": "mrdib_cli.data.dataset_io._write_parquet", "nth": 2, "action": "kill"},
    "before-manifest": {"target": "mrdib_cli.workspace.atomic_write_json", "match": "prepare.json",
                        "action": "kill"},
}


@pytest.mark.parametrize("point", list(POINTS))
def test_fresh_prepare_killed_then_rerun_equals_uninterrupted(workdir: Path, reference_demo, point: str) -> None:
    killed(mrdib(workdir, *DEMO_ARGS, fault=POINTS[point]))
    ok(mrdib(workdir, *DEMO_ARGS))
    ref_wd, ref_ds = reference_demo
    assert_same_dataset(workdir / "datasets" / "demo", workdir, ref_ds, ref_wd)
    # what the killed run left behind is either reused or garbage that gc removes
    ok(mrdib(workdir, "cache", "gc", "--min-age", "0"))
    assert leftovers(workdir) == []
    # and the dataset is still complete and cached afterwards
    assert "cached" in ok(mrdib(workdir, *DEMO_ARGS)).stderr.lower()


REPLACE_POINTS = {
    "staging-write": {"target": "mrdib_cli.data.dataset_io._write_parquet", "nth": 3, "action": "kill"},
    # between the renames of the core files into the existing folder
    "mid-publish": {"target": "os.replace", "match": "users.parquet", "when": "after", "action": "kill"},
    "before-manifest": {"target": "mrdib_cli.workspace.atomic_write_json", "match": "prepare.json",
                        "action": "kill"},
}


@pytest.mark.parametrize("point", list(REPLACE_POINTS))
def test_reprepare_killed_keeps_previous_dataset_or_refuses_it(workdir: Path, reference_demo, reference_seed7,
                                                                 point: str) -> None:
    """A rebuild with other parameters killed midway never leaves a mixed dataset that readers accept."""
    ok(mrdib(workdir, *DEMO_ARGS))
    ds = workdir / "datasets" / "demo"
    before = snapshot(ds)
    killed(mrdib(workdir, *DEMO_ARGS, "--seed", "7", fault=REPLACE_POINTS[point]))
    if point == "staging-write":
        assert_intact(before, ds)
    # readers either see one whole build (the previous one or the complete new one) or refuse; never a mix
    p = mrdib(workdir, "resplit", "--scheme", "loo", "--name", "probe")
    if p.returncode == 0:
        if snapshot(ds).get("interactions.parquet") == before["interactions.parquet"]:
            assert_intact(before, ds, only=CORE)
        else:  # the new build was published completely; only its manifest is missing
            assert_same_dataset(ds, workdir, reference_seed7[1], reference_seed7[0])
    else:
        assert "interrupted" in p.stderr and "Traceback" not in p.stderr, p.stderr
    # rerunning the original command restores exactly the uninterrupted result
    ok(mrdib(workdir, *DEMO_ARGS))
    ref_wd, ref_ds = reference_demo
    assert_same_dataset(ds, workdir, ref_ds, ref_wd)
    ok(mrdib(workdir, "cache", "gc", "--min-age", "0"))
    assert leftovers(workdir) == []


def test_forced_rebuild_killed_before_first_rename_is_not_stuck(workdir: Path, reference_demo) -> None:
    """Killed after marking the folder but before any rename: the next plain prepare rebuilds, not 'cached'."""
    ok(mrdib(workdir, *DEMO_ARGS))
    killed(mrdib(workdir, *DEMO_ARGS, "--force", fault={"target": "os.replace", "match": "interactions.parquet",
                                                        "action": "kill"}))
    p = ok(mrdib(workdir, *DEMO_ARGS))
    assert "cached" not in p.stderr.lower()
    ref_wd, ref_ds = reference_demo
    assert_same_dataset(workdir / "datasets" / "demo", workdir, ref_ds, ref_wd)
    ok(mrdib(workdir, "cache", "gc", "--min-age", "0"))
    assert leftovers(workdir) == []
