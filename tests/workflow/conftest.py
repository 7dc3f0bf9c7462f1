"""A tiny study (demo dataset, LightGCN, no encoders) run once per session, for run/report/doctor tests."""

from __future__ import annotations

import pytest

TINY = {
    "name": "t",
    "datasets": [{"name": "tiny", "source": "demo",
                  "prepare": {"users": 120, "items": 60, "interactions": 1500, "image_size": 16}}],
    "backbones": [{"name": "lightgcn", "hparams": {"n_layers": 1}}],
    "seeds": [1, 2],
    "train": {"epochs": 2, "batch_size": 512, "device": "cpu", "threads": 1},
    "report": {"out": "rep"},
}


@pytest.fixture(scope="session")
def tiny_ws(tmp_path_factory):
    """(Workspace, Study, first PipelineResult) of the tiny study."""
    from mrdib_cli.workflow.config import parse_study
    from mrdib_cli.workflow.pipeline import run_pipeline
    from mrdib_cli.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("wf") / "wd")
    study = parse_study(dict(TINY), where="tiny.yaml")
    first = run_pipeline(ws, study)
    return ws, study, first
