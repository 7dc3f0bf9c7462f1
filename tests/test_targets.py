"""Which dataset and run a command acts on: said on its first line, never a silent fallback.

The scenario of a new user: ``prepare`` of a real dataset fails offline, and the next commands of the README
card must not quietly work on whatever dataset was there before.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TINY = ["prepare", "demo", "--users", "60", "--items", "40", "--interactions", "400", "--image-size", "16"]
OFFLINE = ["prepare", "baby", "--base-url", "http://mirror.invalid"]  # .invalid never resolves (RFC 2606)
FAST = ["--epochs", "1", "--batch-size", "64"]


def _errors(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def _first(err: str) -> str:
    return err.strip().splitlines()[0]


def test_card_on_a_fresh_workdir_offline_refuses_every_next_step(cli, workdir: Path) -> None:
    rc, _, err = cli(*OFFLINE)
    assert rc == 3 and len(_errors(err)) == 1, err
    assert "cannot resolve host 'mirror.invalid'" in err and "no dataset is active" in err
    for cmd in (["extract-features"], ["build-graph"], ["train", "--backbone", "lgmrec"], ["eval", "--k", "10", "20"]):
        rc, _, err = cli(*cmd)
        assert rc == 3 and len(_errors(err)) == 1, (cmd, err)
    assert not (workdir / "runs").exists()


def test_card_after_failed_prepare_names_the_dataset_it_would_use_first(cli, workdir: Path) -> None:
    cli(*TINY, check=True)
    rc, _, err = cli(*OFFLINE)
    assert rc == 3 and "the active dataset is 'demo', set by 'mrdib prepare demo'" in err, err
    assert "the next commands without -d would use it" in err
    assert json.loads((workdir / "state.json").read_text())["active_dataset"] == "demo"
    rc, _, err = cli("train", "--backbone", "lightgcn", *FAST, "--threads", "1", "-n", "r")
    assert rc == 0, err
    assert _first(err).startswith("train: run 'r' on dataset 'demo' (the active dataset, set by 'mrdib prepare "
                                  "demo'"), err
    assert "1 torch thread (--threads)" in _first(err)


def test_dash_d_makes_the_dataset_active_for_the_next_commands(cli, workdir: Path) -> None:
    cli(*TINY, "--name", "a", check=True)
    cli(*TINY, "--name", "b", check=True)
    rc, _, err = cli("build-graph", "-d", "a")
    assert rc == 0 and _first(err) == "build-graph: dataset 'a' (given with -d; now the active dataset)", err
    rc, _, err = cli("build-graph")
    assert rc == 0 and _first(err).startswith("build-graph: dataset 'a' (the active dataset, set by 'mrdib "
                                              "build-graph -d a'"), err


def _interrupt(workdir: Path, run: str) -> None:
    """Leave ``run`` as a kill after its checkpoint would: the checkpoint, no results.json."""
    (workdir / "runs" / run / "results.json").unlink()


def test_eval_takes_the_newest_finished_run_and_resume_needs_exactly_one_candidate(cli, workdir: Path) -> None:
    cli(*TINY, check=True)
    for r in ("r1", "r2", "r3"):
        cli("train", "-b", "lightgcn", *FAST, "--threads", "1", "-n", r, check=True)
    _interrupt(workdir, "r2")
    _interrupt(workdir, "r3")
    rc, out, err = cli("eval", "--k", "5")
    assert rc == 0 and _first(err).startswith("eval: run 'r1' of dataset 'demo' (newest finished run"), err
    rc, _, err = cli("train", "--resume")
    assert rc == 2 and "2 runs are interrupted (r2, r3)" in err and "--run-name" in err, err
    shutil.rmtree(workdir / "runs" / "r3")
    rc, _, err = cli("train", "--resume", "--epochs", "2")
    assert rc == 0, err
    # the stored thread count is kept unless --threads says otherwise
    assert _first(err).startswith("train: resuming run 'r2' on dataset 'demo'"), err
    assert "1 torch thread (the run's stored count" in _first(err)
    rc, _, err = cli("train", "--resume")
    assert rc == 3 and "no interrupted run to resume" in err, err
