"""Which stored runs count as seeds of one setting: later training options at their defaults do not split
them (a run trained before the option existed and one trained at its default are the same setting)."""

from __future__ import annotations

from pathlib import Path

from mrdib_cli.evaluation.runs import Run


def _run(name: str, **train) -> Run:
    cfg = {"backbone": "lightgcn", "dataset": "demo", "hparams": {"n_layers": 1}, "plugin": None,
           "train": {"lr": 0.001, "seed": 1, "threads": 1, **train}, "run_name": name}
    return Run(name, Path("/nowhere") / name, cfg, None)


def test_a_later_option_at_its_default_does_not_split_a_setting():
    before = _run("old")  # written before minibatch, fanout and node_budget existed
    now = _run("new", minibatch="full", fanout=[10], node_budget=0, seed=2)
    assert before.config_key() == now.config_key()


def test_a_later_option_set_away_from_its_default_is_another_setting():
    base = _run("a", minibatch="sampled")
    assert base.config_key() != _run("b", minibatch="sampled", node_budget=16).config_key()
    assert base.config_key() != _run("c", minibatch="sampled", fanout=[10, 5]).config_key()
    assert base.config_key() == _run("d", minibatch="sampled", fanout=[10], node_budget=0).config_key()
