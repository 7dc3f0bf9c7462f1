"""Run configuration: files, --set, unknown keys, the early-stopping rule."""

from __future__ import annotations

import pytest

from mrdib_cli.errors import UsageError
from mrdib_cli.training.config import RunConfig, apply_sets, load_config_file, merge, parse_value
from mrdib_cli.training.trainer import EarlyStopping


def test_yaml_and_toml_files_merge(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("backbone: lightgcn\ntrain:\n  lr: 0.0005\n  epochs: 7\nhparams:\n  n_layers: 3\n")
    t = tmp_path / "c.toml"
    t.write_text('backbone = "vbpr"\n[train]\nbatch_size = 512\n[plugin]\nname = "mrdib"\nalpha = 0.1\n')
    cfg = RunConfig()
    merge(cfg, load_config_file(y), "c.yaml")
    assert (cfg.backbone, cfg.train.lr, cfg.train.epochs, cfg.hparams) == ("lightgcn", 5e-4, 7, {"n_layers": 3})
    merge(cfg, load_config_file(t), "c.toml")
    assert cfg.backbone == "vbpr" and cfg.train.batch_size == 512 and cfg.plugin == {"name": "mrdib", "alpha": 0.1}


def test_unknown_keys_are_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: lightgcn\ntrian: {lr: 1}\n")
    with pytest.raises(UsageError, match="unknown key"):
        merge(RunConfig(), load_config_file(bad), "bad.yaml")
    with pytest.raises(UsageError, match="unknown training option 'lrr'"):
        merge(RunConfig(), {"train": {"lrr": 1}}, "x")
    cfg = RunConfig(backbone="lightgcn")
    with pytest.raises(UsageError, match="not a training option nor a hyper-parameter"):
        apply_sets(cfg, ["n_layer=2"], {"n_layers", "reg_weight"})
    with pytest.raises(UsageError, match="key=value"):
        apply_sets(cfg, ["lr"], set())
    with pytest.raises(UsageError, match="must be int"):
        apply_sets(cfg, ["epochs=abc"], set())


def test_set_values_and_sections():
    cfg = RunConfig(backbone="lightgcn")
    apply_sets(cfg, ["lr=5e-4", "train.epochs=3", "n_layers=2", "hparams.reg_weight=1e-3", "ks=[5,10]",
                     "valid_metric=recall@10"], {"n_layers", "reg_weight"})
    assert cfg.train.lr == 5e-4 and cfg.train.epochs == 3 and cfg.train.ks == [5, 10]
    assert cfg.hparams == {"n_layers": 2, "reg_weight": 1e-3}
    cfg.train.validate()
    assert parse_value("1e-3") == 1e-3 and parse_value("true") is True and parse_value("abc") == "abc"
    cfg.train.valid_metric = "recall@50"
    with pytest.raises(UsageError, match="valid_metric"):
        cfg.train.validate()


def test_early_stopping_is_mmrecs_rule():
    es = EarlyStopping(patience=2)
    assert es.update(1, 0.10004)
    assert not es.update(2, 0.10001)  # equal after rounding to 4 decimals: not an improvement
    assert not es.update(3, 0.0999)
    assert not es.should_stop  # 2 bad epochs == patience: continue
    assert not es.update(4, 0.1)
    assert es.should_stop and es.best_epoch == 1  # stops on the (patience+1)-th bad epoch
    es2 = EarlyStopping(patience=0)
    assert es2.update(1, 0.2) and es2.update(2, 0.20006)
