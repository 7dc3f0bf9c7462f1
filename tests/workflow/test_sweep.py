"""``mrdib sweep``: selection strictly on validation; --select-on test only for parity, labelled."""

from __future__ import annotations

import copy
import json

import polars as pl
import pytest

from mrdib_cli.errors import UsageError
from mrdib_cli.workflow.config import parse_study
from mrdib_cli.workflow.sweep import PARITY_LABEL, collect, run_sweep, select, sweep_specs, write_outputs
from mrdib_cli.workspace import Workspace
from tests.workflow.conftest import TINY

# point -> seed -> (valid recall@20, test recall@20): A is best on validation, B is best on test
CASE = {0.001: {1: (0.30, 0.20), 2: (0.32, 0.22)},
        0.01: {1: (0.25, 0.40), 2: (0.27, 0.38)},
        0.1: {1: (0.10, 0.10), 2: (0.12, 0.11)}}


def _study(**sweep):
    d = copy.deepcopy(TINY)
    d["sweep"] = {"grid": {"train.lr": list(CASE)}, **sweep}
    return parse_study(d, where="sweep.yaml")


def _fake_results(ws: Workspace, study):
    """Run folders with results.json as the trainer writes them, holding the constructed metrics."""
    specs = sweep_specs(study)
    for rs in specs:
        v, t = CASE[rs.overrides["train.lr"]][rs.seed]
        d = ws.run_dir(rs.run_name)
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({
            "status": "finished", "best_epoch": 1,
            "valid": {"recall@20": v, "ndcg@20": v / 2}, "test": {"recall@20": t, "ndcg@20": t / 2}}))
    return specs


def test_selection_uses_validation_even_when_test_disagrees(tmp_path):
    ws = Workspace(tmp_path / "wd")
    study = _study()
    specs = _fake_results(ws, study)
    assert len(specs) == 6  # 3 points x 2 seeds
    table = collect(ws, specs)
    s = select(table, "recall@20", "valid")
    (w,) = s["winners"]
    assert w["params"] == {"train.lr": "0.001"} and w["selected_on"] == "valid"
    assert w["selection_score"] == pytest.approx(0.31)  # mean over the two seeds
    assert w["test"]["recall@20"] == pytest.approx(0.21)  # the winner's test metric, not the best test
    assert sorted(w["seeds"]) == [1, 2]
    assert "VALIDATION" in s["label"]


def test_select_on_test_picks_the_test_best_and_says_so(tmp_path):
    ws = Workspace(tmp_path / "wd")
    study = _study()
    table = collect(ws, _fake_results(ws, study))
    s = select(table, "recall@20", "test")
    assert s["winners"][0]["params"] == {"train.lr": "0.01"}
    assert s["label"] == PARITY_LABEL and "TEST" in s["label"]
    write_outputs(tmp_path / "out", table, s)
    df = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert set(df["selected_on"]) == {"test"} and df.height == 6
    assert (tmp_path / "out" / "results.csv").read_text().splitlines()[0].count("selected_on") == 1


def test_selection_errors(tmp_path):
    ws = Workspace(tmp_path / "wd")
    table = collect(ws, _fake_results(ws, _study()))
    with pytest.raises(UsageError, match="select-on"):
        select(table, "recall@20", "train")
    with pytest.raises(UsageError, match="map@5"):
        select(table, "map@5", "valid")


def test_end_to_end_sweep_on_tiny_demo(tiny_ws):
    ws, _, _ = tiny_ws
    d = copy.deepcopy(TINY)
    d["seeds"] = [1]
    d["train"]["epochs"] = 1
    d["sweep"] = {"grid": {"train.lr": [0.001, 0.05]}}
    study = parse_study(d, where="s.yaml")
    res = run_sweep(ws, study)
    assert res.table.height == 2 and set(res.table["status"]) == {"finished"}
    (w,) = res.summary["winners"]
    valid = res.table["valid_recall@20"].to_list()
    assert w["selection_score"] == pytest.approx(max(valid))
    (winner_run,) = w["runs"]
    saved = json.loads((ws.run_dir(winner_run) / "results.json").read_text())
    assert w["test"]["recall@20"] == pytest.approx(saved["test"]["recall@20"])
    summary = json.loads((res.dir / "summary.json").read_text())
    assert summary["selected_on"] == "valid" and summary["winner_runs"] == [winner_run]
    assert isinstance(w["params"]["train.lr"], float)
    # cached: a second sweep trains nothing
    again = run_sweep(ws, study)
    assert all(s.state == "cached" for s in again.steps if s.kind == "train")


def test_sweep_cli_names_values_cap_warning_and_test_for_the_winner_only(cli, workdir, tmp_path):
    import yaml

    d = copy.deepcopy(TINY)
    d.update(name="sw", seeds=[1], sweep={"grid": {"n_layers": [1, 2]}})
    d["train"].update(epochs=1, patience=20)  # one epoch and no early stop: every run ends at the cap
    d.pop("report")
    cfg = tmp_path / "sw.yaml"
    cfg.write_text(yaml.safe_dump(d))
    rc, out, err = cli("sweep", str(cfg), "--dry-run")
    assert rc == 0, err
    assert "n_layers=1" in out and "n_layers=2" in out
    rc, out, err = cli("sweep", str(cfg))
    assert rc == 0, err
    assert "sweep: run 1 of 2 done (1 left)" in err and "sweep: run 2 of 2 done (0 left)" in err
    names = ["sw-lightgcn-nl1-s1", "sw-lightgcn-nl2-s1"]
    warning = " ".join(err.split())
    assert "2 of 2 runs stopped at the epoch cap" in warning and all(n in warning for n in names), err
    rows = [ln for ln in out.splitlines() if ln.startswith("│") and "lightgcn" in ln]
    assert len(rows) == 2
    (winner,) = [r for r in rows if "selected" in r]
    (other,) = [r for r in rows if "selected" not in r]
    assert " - " in other and " - " not in winner  # test is shown for the winner only
    summary = json.loads((workdir / "sweeps" / "sw-sweep" / "summary.json").read_text())
    assert summary["runs"] == names and summary["epoch_cap_runs"] == names
