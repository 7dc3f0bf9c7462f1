"""Run configuration: files, --set, unknown keys, the early-stopping rule."""

from __future__ import annotations

from dataclasses import FrozenInstanceError

import pytest

from mrdib_cli.errors import UsageError
from mrdib_cli.training.config import load_config_file, parse_value
from mrdib_cli.training.resolve import resolve_run
from mrdib_cli.training.trainer import EarlyStopping


def test_yaml_and_toml_files_merge(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("backbone: lightgcn\ntrain:\n  lr: 0.0005\n  epochs: 7\nhparams:\n  n_layers: 3\n")
    t = tmp_path / "c.toml"
    t.write_text('backbone = "vbpr"\n[train]\nbatch_size = 512\n[plugin]\nname = "mrdib"\nalpha_kl = 0.1\n')
    cfg = resolve_run(file=load_config_file(y))
    assert (cfg.backbone, cfg.train.lr, cfg.train.epochs, cfg.hparams["n_layers"]) == ("lightgcn", 5e-4, 7, 3)
    # a stored config.json under a config file: the file wins where both speak, the rest is kept
    stored = {k: v for k, v in load_config_file(y).items() if k != "hparams"}  # n_layers is not VBPR's
    cfg = resolve_run(stored=stored, file=load_config_file(t), file_source="c.toml")
    assert cfg.backbone == "vbpr" and cfg.train.batch_size == 512 and cfg.plugin == {"name": "mrdib", "alpha_kl": 0.1}
    assert cfg.train.epochs == 7 and cfg.sources["train.epochs"] == "stored config.json"
    assert cfg.sources["train.batch_size"] == "c.toml" and cfg.sources["train.seed"] == "default"


def test_sources_in_order_and_frozen():
    cfg = resolve_run(file={"backbone": "vbpr", "train": {"lr": 1e-2, "epochs": 5}},
                      flags={"train": {"lr": 2e-2}}, plugin={"name": "mrdib", "alpha_kl": 0.1},
                      sets=["train.epochs=9", "plugin.alpha_kl=0.2"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.plugin["alpha_kl"]) == (2e-2, 9, 0.2)
    assert cfg.sources["train.lr"] == "command line" and cfg.sources["train.epochs"] == "--set"
    with pytest.raises(FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.hparams["n_layers"] = 3  # type: ignore[index]


def test_a_backbones_patience_unless_given():
    assert resolve_run(flags={"backbone": "soil"}).train.patience == 10
    assert resolve_run(flags={"backbone": "soil"}).sources["train.patience"] == "soil default"
    assert resolve_run(stored={"backbone": "soil", "train": {"patience": 20}}).train.patience == 20
    assert resolve_run(flags={"backbone": "lightgcn"}).train.patience == 20


def test_unknown_keys_are_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: lightgcn\ntrian: {lr: 1}\n")
    with pytest.raises(UsageError, match="unknown key"):
        resolve_run(file=load_config_file(bad))
    with pytest.raises(UsageError, match="unknown training option 'lrr'"):
        resolve_run(file={"backbone": "lightgcn", "train": {"lrr": 1}})
    with pytest.raises(UsageError, match="not a training option nor a hyper-parameter"):
        resolve_run(flags={"backbone": "lightgcn"}, sets=["n_layer=2"])
    with pytest.raises(UsageError, match="key=value"):
        resolve_run(flags={"backbone": "lightgcn"}, sets=["lr"])
    with pytest.raises(UsageError, match="must be int"):
        resolve_run(flags={"backbone": "lightgcn"}, sets=["epochs=abc"])
    with pytest.raises(UsageError, match="unknown hyper-parameter"):
        resolve_run(flags={"backbone": "lightgcn", "hparams": {"n_layer": 2}})
    with pytest.raises(UsageError, match="no backbone"):
        resolve_run()


def test_plugin_options_are_checked_when_resolved():
    """What the run would refuse at its start, --print-config and dry runs refuse too."""
    def resolve(backbone: str = "vbpr", **options) -> None:
        resolve_run(flags={"backbone": backbone}, plugin={"name": "mrdib", **options})

    resolve(alpha_kl=0.1, bottleneck_dim=None, critic="concat")
    with pytest.raises(UsageError, match="unknown MRdIB option.*beta"):
        resolve(beta=0.5)
    with pytest.raises(UsageError, match="alpha_kl must be a number, got 'abc'"):
        resolve(alpha_kl="abc")
    with pytest.raises(UsageError, match="alpha_kl must be a number, got True"):
        resolve(alpha_kl=True)
    with pytest.raises(UsageError, match="critic_hidden must be an integer, got 1.5"):
        resolve(critic_hidden=1.5)
    for bad, says in ((0, "positive integer"), (-4, "positive integer")):
        with pytest.raises(UsageError, match=f"critic-hidden must be a {says}"):
            resolve(critic_hidden=bad)
    for bad in (float("nan"), float("inf")):  # NaN passes every comparison, so each range check
        with pytest.raises(UsageError, match="alpha_kl must be a finite number"):
            resolve(alpha_kl=bad)
    with pytest.raises(UsageError, match="'lightgcn' has no modality hook points"):
        resolve("lightgcn")
    with pytest.raises(UsageError, match="'bm3' trains without a BPR term: add --no-dual-path"):
        resolve("bm3")
    resolve("bm3", dual_path=False)
    with pytest.raises(UsageError, match="plugin.resolved is what a run derives"):
        resolve(resolved=5)
    stored = {"backbone": "vbpr", "plugin": {"name": "mrdib", "resolved": {"hooks": ["image"]}}}
    assert resolve_run(stored=stored).plugin["resolved"] == {"hooks": ["image"]}  # a resumed run's own
    with pytest.raises(UsageError, match="unknown plug-in 'nope'"):
        resolve_run(flags={"backbone": "vbpr"}, plugin={"name": "nope"})


def test_a_plugin_flag_whose_default_is_none_takes_null():
    from mrdib_cli.training.plugin import claim_plugin_args

    assert claim_plugin_args(["--mrdib", "--bottleneck-dim", "null"])[0] == {"name": "mrdib", "bottleneck_dim": None}
    assert claim_plugin_args(["--mrdib", "--bottleneck-dim", "32"])[0]["bottleneck_dim"] == 32
    with pytest.raises(UsageError, match="--bottleneck-dim expects an integer or null, got 'wide'"):
        claim_plugin_args(["--mrdib", "--bottleneck-dim", "wide"])
    with pytest.raises(UsageError, match="--alpha-kl expects a number, got 'null'"):
        claim_plugin_args(["--mrdib", "--alpha-kl", "null"])


def test_yaml_numbers_written_without_a_dot(tmp_path):
    """PyYAML reads 1e-3 as text (YAML 1.1 wants 1.0e-3); a config file reads it as the number people mean."""
    y = tmp_path / "c.yaml"
    y.write_text("backbone: vbpr\ntrain: {lr: 1e-3}\nplugin: {name: mrdib, alpha_kl: 5E-3}\n"
                 "features: {image: 1e3}\n")
    cfg = resolve_run(file=load_config_file(y))
    assert cfg.train.lr == 1e-3 and cfg.plugin["alpha_kl"] == 5e-3
    assert load_config_file(y)["features"]["image"] == 1000.0 and parse_value("1e-3") == 1e-3


def test_a_resume_on_another_dataset_is_refused_by_name():
    from mrdib_cli.training.trainer import check_same_run

    stored = {**resolve_run(flags={"backbone": "lightgcn"}).to_dict(), "dataset": "demo", "dataset_digest": "d1"}
    check_same_run("r", stored, {**stored})
    with pytest.raises(UsageError, match="started on dataset 'demo', not 'demo-loo'"):
        check_same_run("r", stored, {**stored, "dataset": "demo-loo"})
    with pytest.raises(UsageError, match="train.lr was 0.001, now 0.01"):
        check_same_run("r", stored, {**stored, "train": {**stored["train"], "lr": 0.01}})
    with_plugin = {**stored, "plugin": {"name": "mrdib", "alpha_kl": 0.005}}
    with pytest.raises(UsageError, match=r"\(plugin was none, now mrdib\)"):  # not the section's repr
        check_same_run("r", stored, with_plugin)
    with pytest.raises(UsageError, match=r"\(plugin was mrdib, now none\)"):
        check_same_run("r", with_plugin, stored)


def test_a_refusal_names_where_the_value_came_from():
    def refusal(**sources) -> str:
        with pytest.raises(UsageError) as e:
            resolve_run(**{"flags": {"backbone": "lightgcn"}, **sources})
        return str(e.value)

    assert refusal(flags={"backbone": "lightgcn", "train": {"fanout": [3]}}).startswith("fanout (--fanout)")
    assert refusal(file={"train": {"fanout": [3]}}, file_source="study.yaml").startswith("fanout (from study.yaml)")
    assert refusal(sets=["node_budget=9"]).startswith("node_budget (from --set)")
    # ranges too: each refusal names the one option and its source, not every option checked with it
    sampled = ["minibatch=sampled"]
    assert refusal(sets=[*sampled, "train.fanout=0"]).startswith("fanout (from --set) must be")
    assert refusal(sets=[*sampled, "node_budget=-5"]).startswith("node_budget (from --set) must be")
    assert refusal(flags={"backbone": "lightgcn", "train": {"lr": -1.0}}) == \
        "lr (--lr) must be a finite number > 0, got -1.0"
    assert refusal(file={"train": {"eval_batch_users": 0}}, file_source="c.yaml").startswith(
        "eval_batch_users (from c.yaml) must be")
    assert refusal(sets=["threads=-1"]).startswith("threads (from --set) must be")
    assert refusal(sets=["seed=-1"]).startswith("seed (from --set) must be")  # torch refused it after writing
    assert "metric one of recall" in refusal(sets=["valid_metric=foo@20"])  # not refused after an epoch
    # a fan-out typed on the command line is refused where none is sampled, even the default's value: the user
    # expects it to shape the run; a config file may hold the default (--print-config writes every value)
    assert refusal(flags={"backbone": "lightgcn", "train": {"fanout": [10]}}).startswith("fanout (--fanout) sets")
    assert refusal(sets=["fanout=10"]).startswith("fanout (from --set) sets")
    assert resolve_run(flags={"backbone": "lightgcn"}, file={"train": {"fanout": [10]}}).train.fanout == [10]


def test_set_values_and_sections():
    cfg = resolve_run(flags={"backbone": "lightgcn"},
                      sets=["lr=5e-4", "train.epochs=3", "n_layers=2", "hparams.reg_weight=1e-3", "ks=[5,10]",
                            "valid_metric=recall@10"])
    assert cfg.train.lr == 5e-4 and cfg.train.epochs == 3 and cfg.train.ks == [5, 10]
    assert cfg.hparams["n_layers"] == 2 and cfg.hparams["reg_weight"] == 1e-3
    assert parse_value("1e-3") == 1e-3 and parse_value("true") is True and parse_value("abc") == "abc"
    assert parse_value("") == "" and parse_value(" ") == ""  # the option's own check then says what it wants
    with pytest.raises(UsageError, match="valid_metric"):
        resolve_run(flags={"backbone": "lightgcn"}, sets=["valid_metric=recall@50"])


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
