"""The fair-baseline sweeps in examples/sweeps/ run exactly each backbone's declared MMRec grid."""

from __future__ import annotations

import pytest

from mrdib_cli.models.base import available
from mrdib_cli.workflow.config import load_study
from mrdib_cli.workflow.sweep import grid_points
from tests.conftest import ROOT


@pytest.mark.parametrize("name", sorted(available()))
def test_each_backbone_has_a_sweep_over_its_grid(name: str) -> None:
    cls = available()[name]
    assert cls.mmrec_grid, f"{name} declares no grid"
    study = load_study(ROOT / "examples" / "sweeps" / f"mmrec-{name}.yaml")
    assert [b.name for b in study.backbones] == [name] and study.mrdib == [False]
    # same keys (as the sweep names them), same values, same order
    named = {k if k.startswith("train.") else f"hparams.{k}": v for k, v in cls.mmrec_grid.items()}
    assert study.sweep["grid"] == named and list(study.sweep["grid"]) == list(named)
    assert study.sweep["metric"] == "recall@20"
    n = 1
    for values in cls.mmrec_grid.values():
        n *= len(values)
    assert len(grid_points(study.sweep["grid"])) == n
    # every grid key is a hyper-parameter the backbone declares (or the learning rate)
    assert set(cls.mmrec_grid) <= set(cls.defaults) | {"train.lr"}
