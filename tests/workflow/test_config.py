"""Study config validation: unknown keys and wrong types are one-line errors naming the key."""

from __future__ import annotations

import pytest

from mrdib_cli.errors import UsageError
from mrdib_cli.workflow.config import load_study, parse_study

BASE = {"datasets": [{"name": "demo", "source": "demo"}], "backbones": ["lightgcn"]}


def parse(**extra):
    return parse_study({**BASE, **extra}, where="study.yaml")


def test_valid_minimal_config_resolves_defaults():
    s = parse(seeds=[1, 2], mrdib=[False], train={"epochs": 3, "lr": 1})
    assert [b.name for b in s.backbones] == ["lightgcn"]
    assert s.seeds == [1, 2] and s.train_config.epochs == 3
    assert s.train["lr"] == 1.0 and isinstance(s.train["lr"], float)  # ints accepted for floats


@pytest.mark.parametrize("extra, key", [
    ({"epoch": 3}, "'epoch'"),
    ({"train": {"lrr": 0.1}}, "train.lrr"),
    ({"datasets": [{"name": "demo", "source": "demo", "prepare": {"userz": 5}}]}, "datasets[0].prepare.userz"),
    ({"backbones": [{"name": "lightgcn", "hparams": {"n_layerz": 2}}]}, "backbones[0].hparams.n_layerz"),
    ({"features": {"text": {"modle": "x"}}}, "features.text.modle"),
    ({"graph": {"k": 3}}, "graph.k"),
    ({"sweep": {"grid": {"nope": [1, 2]}}}, "sweep.grid.nope"),
])
def test_unknown_keys_are_errors_naming_the_key(extra, key):
    with pytest.raises(UsageError) as e:
        parse(**extra)
    msg = str(e.value)
    assert "unknown key" in msg and key.strip("'") in msg and "\n" not in msg


@pytest.mark.parametrize("extra, key", [
    ({"train": {"lr": "fast"}}, "train.lr"),
    ({"train": {"epochs": 2.5}}, "train.epochs"),
    ({"seeds": ["a"]}, "seeds[0]"),
    ({"mrdib": "yes"}, "mrdib[0]"),
    ({"backbones": [{"name": "lightgcn", "hparams": {"n_layers": "two"}}]}, "backbones[0].hparams.n_layers"),
    ({"datasets": [{"name": "demo", "source": "demo", "prepare": {"users": "many"}}]}, "datasets[0].prepare.users"),
    ({"features": {"image": {"allow_random_weights": "yes"}}}, "features.image.allow_random_weights"),
    ({"mrdib_options": 5}, "mrdib_options"),
])
def test_wrong_types_are_errors_naming_the_key(extra, key):
    with pytest.raises(UsageError) as e:
        parse(**extra)
    assert key in str(e.value) and "study.yaml" in str(e.value) and "\n" not in str(e.value)


def test_unknown_backbone_and_missing_sections():
    with pytest.raises(UsageError, match="backbones\\[0\\].name"):
        parse(backbones=["nosuchnet"])
    with pytest.raises(UsageError, match="datasets is missing"):
        parse_study({"backbones": ["lightgcn"]}, where="s.yaml")


def test_toml_and_yaml_files_load_alike(tmp_path):
    y = tmp_path / "s.yaml"
    y.write_text("datasets: [demo]\nbackbones: [lightgcn]\nseeds: [3]\ntrain: {epochs: 2}\n")
    t = tmp_path / "s.toml"
    t.write_text('datasets = ["demo"]\nbackbones = ["lightgcn"]\nseeds = [3]\n[train]\nepochs = 2\n')
    a, b = load_study(y), load_study(t)
    assert (a.seeds, a.train_config.epochs, a.datasets[0].name) == (b.seeds, b.train_config.epochs, b.datasets[0].name)


def test_cli_bad_key_one_line_exit_2(cli, tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("datasets: [demo]\nbackbones: [lightgcn]\ntrain: {epochs: 2, learning_rate: 0.1}\n")
    rc, out, err = cli("run", str(p), "--dry-run")
    assert rc == 2
    assert "train.learning_rate" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_shipped_examples_are_valid_and_paths_are_relative_to_the_file():
    from pathlib import Path

    ex = Path(__file__).resolve().parents[2] / "examples"
    files = sorted(ex.glob("*.yaml"))
    assert {f.name for f in files} >= {"demo.yaml", "baby-mmrec.yaml", "backbone-vs-mrdib.yaml"}
    for f in files:
        s = load_study(f)
        img = s.features.get("image")
        if img and img.get("model_config"):
            assert Path(img["model_config"]).is_file()
    baby = load_study(ex / "baby-mmrec.yaml")
    assert baby.datasets[0].import_["dir"] == str(ex / "data" / "baby")
    assert load_study(ex / "backbone-vs-mrdib.yaml").mrdib == [False, True]
