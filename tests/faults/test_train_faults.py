"""Training faults: SIGKILL then --resume equals an uninterrupted run; bad checkpoints and configs; NaN; OOM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.faults.helpers import (TRAIN, assert_intact, killed, leftovers, mrdib, ok, one_line_error, outcome,
                                  snapshot)

KILL_POINTS = {
    # after the first best.pt/embeddings, before the first last.pt: nothing to resume from yet
    "before-first-checkpoint": {"target": "mrdib_cli.training.checkpoint.save", "match": "best.pt",
                                "when": "after", "action": "kill"},
    "after-epoch-2": {"target": "mrdib_cli.training.checkpoint.save", "match": "last.pt", "nth": 2,
                      "when": "after", "action": "kill"},
    "mid-epoch-3": {"target": "mrdib_cli.training.sampler.BPRSampler.epoch", "nth": 3, "action": "kill"},
    "writing-last-checkpoint-3": {"target": "torch.save", "match": "last.pt", "nth": 3, "action": "kill"},
    "during-test-evaluation": {"target": "mrdib_cli.evaluation.engine.EvalResult.save", "action": "kill"},
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_then_resume_equals_uninterrupted(demo_wd: Path, reference_run: dict, point: str) -> None:
    killed(mrdib(demo_wd, *TRAIN, fault=KILL_POINTS[point]))
    ok(mrdib(demo_wd, *TRAIN, "--resume"))
    assert outcome(demo_wd / "runs" / "r") == reference_run
    ok(mrdib(demo_wd, "cache", "gc", "--min-age", "0"))
    assert leftovers(demo_wd) == []


def test_torn_metrics_line_is_recomputed(demo_wd: Path, reference_run: dict) -> None:
    """A kill in the middle of appending to metrics.jsonl leaves half a line; resume drops and redoes it."""
    killed(mrdib(demo_wd, *TRAIN, fault=KILL_POINTS["after-epoch-2"]))
    m = demo_wd / "runs" / "r" / "metrics.jsonl"
    m.write_text(m.read_text() + '{"epoch": 3, "loss": {"bpr": 0.6')
    ok(mrdib(demo_wd, *TRAIN, "--resume"))
    assert outcome(demo_wd / "runs" / "r") == reference_run


def test_nan_loss_stops_and_keeps_last_good_checkpoint(demo_wd: Path, reference_run: dict) -> None:
    """NaN in epoch 3: one-line error, last.pt still says epoch 2; a resume without the fault ends as usual."""
    p = mrdib(demo_wd, *TRAIN, fault={"target": "mrdib_cli.models.lightgcn.LightGCN.loss", "nth": 3,
                                      "action": "nan"})
    one_line_error(p, "non-finite", "checkpoint", code=1)
    import torch

    st = torch.load(demo_wd / "runs/r/checkpoints/last.pt", weights_only=True)
    assert st["epoch"] == 2
    assert json.loads((demo_wd / "runs/r/results.json").read_text())["status"] == "failed"
    ok(mrdib(demo_wd, *TRAIN, "--resume"))
    assert outcome(demo_wd / "runs" / "r") == reference_run


def test_gpu_oom_gives_advice_and_keeps_checkpoint(demo_wd: Path, reference_run: dict) -> None:
    p = mrdib(demo_wd, *TRAIN, fault={"target": "mrdib_cli.models.lightgcn.LightGCN.propagate", "nth": 3,
                                      "action": "oom"})
    one_line_error(p, "out of GPU memory", "--batch-size", "--device cpu", "--resume", code=1)
    before = snapshot(demo_wd / "runs" / "r" / "checkpoints")
    assert before, "the epoch-1 checkpoint is kept"
    ok(mrdib(demo_wd, *TRAIN, "--resume"))
    assert outcome(demo_wd / "runs" / "r") == reference_run


def test_truncated_checkpoint(demo_wd: Path) -> None:
    killed(mrdib(demo_wd, *TRAIN, fault=KILL_POINTS["after-epoch-2"]))
    last = demo_wd / "runs/r/checkpoints/last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    before = snapshot(demo_wd / "runs" / "r")
    one_line_error(mrdib(demo_wd, *TRAIN, "--resume"), "checkpoint", code=1)
    assert_intact(before, demo_wd / "runs" / "r")


def test_checkpoint_of_another_backbone(demo_wd: Path) -> None:
    from tests.faults.helpers import IMAGE_ARGS

    ok(mrdib(demo_wd, *IMAGE_ARGS))
    ok(mrdib(demo_wd, "train", "-b", "vbpr", "--epochs", "1", "--threads", "1", "--run-name", "other"))
    killed(mrdib(demo_wd, *TRAIN, fault=KILL_POINTS["after-epoch-2"]))
    shutil.copy(demo_wd / "runs/other/checkpoints/last.pt", demo_wd / "runs/r/checkpoints/last.pt")
    before = snapshot(demo_wd / "runs" / "r")
    one_line_error(mrdib(demo_wd, *TRAIN, "--resume"), "another run", code=1)
    assert_intact(before, demo_wd / "runs" / "r")


def test_checkpoint_of_another_dataset_with_the_same_shape(demo_wd: Path) -> None:
    """A resplit has the same users and items: the state dict would load silently without the identity check."""
    ok(mrdib(demo_wd, "resplit", "--scheme", "loo", "--name", "loo"))
    ok(mrdib(demo_wd, *TRAIN[:-1], "other", "-d", "loo", "--epochs", "1"))
    killed(mrdib(demo_wd, *TRAIN, "-d", "demo", fault=KILL_POINTS["after-epoch-2"]))
    shutil.copy(demo_wd / "runs/other/checkpoints/last.pt", demo_wd / "runs/r/checkpoints/last.pt")
    one_line_error(mrdib(demo_wd, *TRAIN, "-d", "demo", "--resume"), "another run", code=1)


def test_resume_with_other_options_is_refused(demo_wd: Path) -> None:
    killed(mrdib(demo_wd, *TRAIN, fault=KILL_POINTS["after-epoch-2"]))
    before = snapshot(demo_wd / "runs" / "r")
    one_line_error(mrdib(demo_wd, *TRAIN, "--resume", "--lr", "0.01"), "different configuration", code=2)
    # --print-config shows what the run would do: here, the same refusal
    one_line_error(mrdib(demo_wd, *TRAIN, "--resume", "--lr", "0.01", "--print-config"),
                   "different configuration (train.lr was 0.001, now 0.01)", code=2)
    one_line_error(mrdib(demo_wd, *TRAIN, "--print-config"), "already exists; use --resume", code=2)
    # a job of several processes refuses in its launcher, before a banner or a worker
    launched = mrdib(demo_wd, *TRAIN, "--resume", "--lr", "0.01", "--nproc", "2", "--device", "cpu")
    one_line_error(launched, "different configuration (train.lr was 0.001, now 0.01)", code=2)
    assert "resuming run" not in launched.stderr, launched.stderr
    one_line_error(mrdib(demo_wd, *TRAIN, "--nproc", "2", "--device", "cpu"), "already exists; use --resume", code=2)
    one_line_error(mrdib(demo_wd, *TRAIN, "--resume", "-b", "vbpr"), "started with backbone lightgcn, not vbpr",
                   code=2)
    state = (demo_wd / "state.json").read_bytes() if (demo_wd / "state.json").exists() else None
    one_line_error(mrdib(demo_wd, *TRAIN, "--resume", "-d", "baby"), "started on dataset 'demo', not 'baby'", code=2)
    # refused before the banner, which would have made 'baby' the active dataset
    assert ((demo_wd / "state.json").read_bytes() if (demo_wd / "state.json").exists() else None) == state
    assert_intact(before, demo_wd / "runs" / "r")


@pytest.mark.parametrize("content,needle", [
    ("train:\n  epochs: 2\n  learnig_rate: 0.1\n", "learnig_rate"),
    ("trian:\n  epochs: 2\n", "trian"),
    ("train:\n  epochs: ten\n", "epochs"),
    ("train:\n  lr: [1, 2]\n", "lr"),
    ("train: [1, 2\n", "cannot parse"),
    # values of the right syntax but the wrong kind are usage errors too (they used to exit 1 or be accepted)
    ("train: [1, 2]\n", "train"),
    ("hparams: 3\n", "hparams"),
    ("train:\n  ks: [ten]\n", "ks"),
    ("train:\n  epochs: true\n", "epochs"),
    ("hparams:\n  n_layers: -3\n", "n_layers"),
    ("hparams:\n  n_layers: true\n", "n_layers"),
])
def test_bad_config_file(demo_wd: Path, tmp_path: Path, content: str, needle: str) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(content)
    one_line_error(mrdib(demo_wd, "train", "-b", "lightgcn", "--config", str(cfg)), needle, code=2)
    assert not (demo_wd / "runs").exists() or not list((demo_wd / "runs").iterdir())


@pytest.mark.parametrize("setting,needle", [("train.nope=1", "nope"), ("train.epochs=abc", "epochs"),
                                            ("hparams.n_layerz=2", "n_layerz"), ("wat.x=1", "wat")])
def test_bad_set_override(demo_wd: Path, setting: str, needle: str) -> None:
    one_line_error(mrdib(demo_wd, "train", "-b", "lightgcn", "--set", setting), needle, code=2)
