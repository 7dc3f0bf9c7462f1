"""``mrdib run`` and ``mrdib train`` resolve a run through one door: same settings, same config.json."""

from __future__ import annotations

import json

import pytest

from mrdib_cli.cli.app import main
from mrdib_cli.workflow.config import BackboneSpec, DatasetSpec, Study
from mrdib_cli.workflow.pipeline import RunSpec, run_config, train_step
from mrdib_cli.workspace import Workspace
from tests.pinned.pin_results import BACKBONES
from tests.synth_data import make_dataset

TRAIN = {"epochs": 1, "batch_size": 128, "threads": 1, "device": "cpu"}
DIFFERENT = ("run_name", "created")  # the only keys allowed to differ


def _train_cli(workdir, *args: str) -> None:
    try:
        main(["--workdir", str(workdir), "train", *args])
    except SystemExit as e:
        assert not e.code, f"mrdib train {' '.join(args)} exited with {e.code}"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    wd = tmp_path_factory.mktemp("same") / "wd"
    make_dataset(wd, n_users=50, n_items=30)
    return Workspace(wd)


@pytest.mark.parametrize("backbone,mrdib", [(b, False) for b in BACKBONES] + [("vbpr", True)])
def test_run_and_train_resolve_the_same_config(ws, backbone, mrdib):
    study = Study(path=None, name="same", datasets=[DatasetSpec("tiny")], backbones=[BackboneSpec(backbone)],
                  seeds=[5], mrdib_options={"alpha_kl": 0.02} if mrdib else {}, train=dict(TRAIN))
    rs = RunSpec("tiny", study.backbones[0], 5, mrdib, f"run-{backbone}-{mrdib}")
    train_step(ws, rs, run_config(study, rs), execute=True, log=lambda s: None)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TRAIN.items()]
    _train_cli(ws.root, "-b", backbone, "-d", "tiny", "--seed", "5", *flags, "-n", f"train-{backbone}-{mrdib}",
               *(["--mrdib", "--alpha-kl", "0.02"] if mrdib else []))
    by_run = json.loads((ws.run_dir(rs.run_name) / "config.json").read_text())
    by_train = json.loads((ws.run_dir(f"train-{backbone}-{mrdib}") / "config.json").read_text())
    assert {k: v for k, v in by_run.items() if k not in DIFFERENT} == \
        {k: v for k, v in by_train.items() if k not in DIFFERENT}
    if backbone == "soil":  # its own early-stopping patience, whichever command started it
        assert by_run["train"]["patience"] == by_train["train"]["patience"] == 10
