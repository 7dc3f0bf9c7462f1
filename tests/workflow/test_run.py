"""``mrdib run``: the whole tiny study runs, a second run does no work, dry runs say what is cached."""

from __future__ import annotations

import copy
import json

import pytest

from mrdib_cli.workflow.config import parse_study
from mrdib_cli.workflow.pipeline import run_pipeline
from tests.workflow.conftest import TINY


def test_first_run_does_every_step(tiny_ws):
    ws, study, first = tiny_ws
    kinds = [s.kind for s in first.steps]
    assert kinds == ["prepare", "graph", "train", "train", "report"]
    assert all(s.state == "ran" for s in first.steps)
    for r in first.runs:
        res = json.loads((ws.run_dir(r) / "results.json").read_text())
        assert res["status"] == "finished" and res["test"]["recall@20"] > 0
    assert {json.loads((ws.run_dir(r) / "config.json").read_text())["train"]["seed"] for r in first.runs} == {1, 2}


def test_second_run_does_no_work(tiny_ws):
    ws, study, first = tiny_ws
    mtimes = {r: (ws.run_dir(r) / "results.json").stat().st_mtime_ns for r in first.runs}
    report_mtime = (first.report / "report.md").stat().st_mtime_ns
    again = run_pipeline(ws, study)
    assert [s.state for s in again.steps] == ["cached"] * len(again.steps), again.steps
    assert again.n_ran == 0
    assert mtimes == {r: (ws.run_dir(r) / "results.json").stat().st_mtime_ns for r in first.runs}
    assert (first.report / "report.md").stat().st_mtime_ns == report_mtime


def test_dry_run_lists_cached_and_changed_steps(tiny_ws):
    ws, study, first = tiny_ws
    dry = run_pipeline(ws, study, dry_run=True)
    assert all(s.state == "cached" for s in dry.steps), dry.steps
    changed = copy.deepcopy(TINY)
    changed["train"]["lr"] = 0.01
    dry2 = run_pipeline(ws, parse_study(changed, where="t.yaml"), dry_run=True)
    states = {s.kind: s.state for s in dry2.steps}
    assert states["prepare"] == "cached" and states["graph"] == "cached"
    assert [s.state for s in dry2.steps if s.kind == "train"] == ["will run", "will run"]
    assert "parameter 'train' changed" in next(s for s in dry2.steps if s.kind == "train").reason
    # nothing was trained by the dry run
    assert run_pipeline(ws, study, dry_run=True).steps == dry.steps


def test_dry_run_on_empty_workdir_marks_dependent_steps_pending(tmp_path):
    from mrdib_cli.workspace import Workspace

    res = run_pipeline(Workspace(tmp_path / "empty"), parse_study(copy.deepcopy(TINY), where="t.yaml"), dry_run=True)
    assert [s.state for s in res.steps] == ["will run", "pending", "pending", "pending", "will run"]
    assert not (tmp_path / "empty" / "datasets").exists()


def test_a_run_no_setting_can_train_is_refused_before_any_step(tmp_path):
    from mrdib_cli.errors import UsageError
    from mrdib_cli.workspace import Workspace

    conf = copy.deepcopy(TINY)
    conf["train"].update(minibatch="sampled", fanout=[10, 5])  # LightGCN with n_layers 1 samples one hop
    with pytest.raises(UsageError, match=r"fanout \(from .*t.yaml\) gives 2 values"):
        run_pipeline(Workspace(tmp_path / "wd"), parse_study(conf, where="t.yaml", path=tmp_path / "t.yaml"))
    assert not (tmp_path / "wd" / "datasets").exists()  # not prepared first, then refused
    from mrdib_cli.workflow.sweep import sweep_specs

    swept = {**copy.deepcopy(TINY), "backbones": ["vbpr"], "mrdib": True,
             "sweep": {"grid": {"mrdib_options.alpha_kl": [0.01, "abc"]}}}
    study = parse_study(swept, where="t.yaml", path=tmp_path / "t.yaml")
    with pytest.raises(UsageError, match=r"t.yaml, run 't-vbpr-mrdib-.*abc.*': MRdIB option alpha_kl must be a number"):
        run_pipeline(Workspace(tmp_path / "wd"), study, specs=sweep_specs(study), dry_run=True)
    unused = {**copy.deepcopy(TINY), "mrdib_options": {"alpha_kl": 0.1}}  # mrdib: false, the default
    with pytest.raises(UsageError, match="no run uses MRdIB"):
        run_pipeline(Workspace(tmp_path / "wd"), parse_study(unused, where="t.yaml"), dry_run=True)


def test_a_device_this_machine_lacks_is_refused_before_any_step(tmp_path, monkeypatch):
    """``train: {device: cuda}`` on a machine without CUDA: refused before the dataset is prepared (a dry run,
    which may be previewing a study meant for another machine, still lists it)."""
    import torch

    from mrdib_cli.errors import UsageError
    from mrdib_cli.workspace import Workspace

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    conf = copy.deepcopy(TINY)
    conf["train"]["device"] = "cuda"
    study = parse_study(conf, where="t.yaml", path=tmp_path / "t.yaml")
    assert run_pipeline(Workspace(tmp_path / "wd"), study, dry_run=True).steps
    with pytest.raises(UsageError, match=r"t.yaml, run '.*': train.device is 'cuda' but this machine has no CUDA"):
        run_pipeline(Workspace(tmp_path / "wd"), study)
    assert not (tmp_path / "wd" / "datasets").exists()


def test_cli_dry_run_json(cli, tmp_path):
    import yaml

    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(TINY))
    rc, out, err = cli("run", str(p), "--dry-run", "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["dry_run"] is True and [s["kind"] for s in d["steps"]][0] == "prepare"
    assert len(d["runs"]) == 2


def test_interrupted_run_is_resumed_not_restarted(tiny_ws, tmp_path):
    import shutil

    from mrdib_cli.workspace import Workspace

    ws0, study, first = tiny_ws
    ws = Workspace(tmp_path / "copy")
    shutil.copytree(ws0.root, ws.root)
    run = first.runs[0]
    res_path = ws.run_dir(run) / "results.json"
    before = json.loads(res_path.read_text())
    # as after Ctrl-C: results say "stopped" and the step has no manifest yet
    res_path.write_text(json.dumps({**before, "status": "stopped"}))
    (ws.runs_dir / ".manifests" / f"train-{run}.json").unlink()
    logs: list[str] = []
    again = run_pipeline(ws, study, log=logs.append)
    assert [s.state for s in again.steps if s.kind == "train"] == ["ran", "cached"]
    assert any("resumed run" in m for m in logs), logs
    after = json.loads(res_path.read_text())
    assert after["status"] == "finished" and after["test"] == before["test"]


def test_mrdib_on_off_runs_and_report(tiny_ws, tmp_path):
    """mrdib: [false, true] trains each backbone without and with the plug-in; the report plots its terms."""
    import shutil

    import numpy as np
    from mrdib_cli.errors import UsageError
    from mrdib_cli.data.feature_store import table_path, write_feature_table
    from mrdib_cli.workspace import Workspace

    ws0, _, _ = tiny_ws
    ws = Workspace(tmp_path / "copy")
    shutil.copytree(ws0.root / "datasets", ws.root / "datasets")
    rng = np.random.default_rng(0)
    d = ws.dataset_dir("tiny")
    for m in ("image", "text"):  # stand-ins for extracted features (the encoders are tested elsewhere)
        write_feature_table(table_path(d, m, "rand"), rng.normal(size=(60, 8)).astype(np.float32),
                            np.array(["ok"] * 60), {"modality": m, "model": "rand"})
    conf = copy.deepcopy(TINY)
    conf.update(backbones=["vbpr"], seeds=[1], mrdib=[False, True], mrdib_options={"alpha_kl": 0.01})
    conf["train"]["epochs"] = 1
    with pytest.raises(UsageError, match="mrdib_options"):
        run_pipeline(ws, parse_study({**conf, "mrdib_options": {"alpha_kll": 1}}, where="t.yaml"))
    res = run_pipeline(ws, parse_study(conf, where="t.yaml"))
    assert res.runs == ["t-tiny-vbpr-s1", "t-tiny-vbpr-mrdib-s1"]
    plugins = [json.loads((ws.run_dir(r) / "config.json").read_text())["plugin"] for r in res.runs]
    assert plugins[0] is None and plugins[1]["name"] == "mrdib" and plugins[1]["alpha_kl"] == 0.01
    assert (res.report / "mrdib-terms-tiny.png").stat().st_size > 5000
    assert "vbpr+mrdib" in (res.report / "report.md").read_text()


def test_a_study_cached_before_a_later_training_option_stays_cached(tiny_ws):
    """A training option added later (minibatch, fanout, node_budget) stays out of a cached step's identity
    while at its default: the manifests written before it existed lack it, and must still match (otherwise
    an upgrade retrains every finished study). Set to another value, it changes the identity."""
    from mrdib_cli.defaults import LATER_TRAIN_DEFAULTS as LATER_TRAIN_KEYS

    ws, study, first = tiny_ws
    for run in first.runs:
        stored = json.loads((ws.runs_dir / ".manifests" / f"train-{run}.json").read_text())
        assert not set(LATER_TRAIN_KEYS) & set(stored["params"]["train"]), stored["params"]["train"]
    assert all(s.state == "cached" for s in run_pipeline(ws, study, dry_run=True).steps)
    changed = copy.deepcopy(TINY)
    changed["train"].update(minibatch="sampled", node_budget=16)
    dry = run_pipeline(ws, parse_study(changed, where="t.yaml"), dry_run=True)
    assert [s.state for s in dry.steps if s.kind == "train"] == ["will run", "will run"]
