"""The training engine: run folder contract, bit-reproducibility, resume, Ctrl-C, NaN, plug-ins."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from mrdib_cli.errors import DataError, UsageError
from mrdib_cli.training import checkpoint as ckpt
from mrdib_cli.training.resolve import resolve_run
from mrdib_cli.training.plugin import Plugin, create_plugin, register_plugin
from mrdib_cli.training.trainer import Trainer, train
from mrdib_cli.workspace import Workspace
from tests.synth_data import make_dataset


@pytest.fixture
def ws(tmp_path):
    make_dataset(tmp_path, n_users=60, n_items=40)
    return Workspace(tmp_path)


def _cfg(name, backbone="lightgcn", epochs=6, patience=20, plugin=None, train=None, **hp):
    return resolve_run(file={"backbone": backbone, "dataset": "tiny", "run_name": name, "hparams": hp,
                             "plugin": plugin, "train": {"epochs": epochs, "patience": patience, "batch_size": 64,
                                                         "threads": 1, **(train or {})}})


def _emb(ws, name):
    with np.load(ws.run_dir(name) / "embeddings.npz", allow_pickle=False) as z:
        return z["user"], z["item"]


def _metrics(ws, name):
    return [json.loads(ln) for ln in (ws.run_dir(name) / "metrics.jsonl").read_text().splitlines()]


def test_run_folder_contract(ws):
    res = train(ws, _cfg("a", epochs=4))
    d = ws.run_dir("a")
    conf = json.loads((d / "config.json").read_text())
    for key in ("run_name", "dataset", "dataset_dir", "dataset_digest", "backbone", "hparams", "train",
                "plugin", "features", "runtime", "version", "code", "created"):
        assert key in conf
    assert conf["code"]["mrdib"] == conf["version"] and conf["code"]["torch"] == torch.__version__
    assert conf["runtime"]["device"] == "cpu" and conf["runtime"]["threads"] >= 1
    assert conf["hparams"] == {"embedding_size": 64, "n_layers": 1, "reg_weight": 1e-2}
    u, i = _emb(ws, "a")
    assert u.shape == (60, 64) and i.shape == (40, 64) and u.dtype == np.float32
    lines = _metrics(ws, "a")
    assert [ln["epoch"] for ln in lines] == [1, 2, 3, 4]
    assert set(lines[0]["loss"]) >= {"bpr", "reg"} and "recall@20" in lines[0]["valid"]
    results = json.loads((d / "results.json").read_text())
    assert results["status"] == "finished" and results["best_epoch"] == res.best_epoch
    assert results["valid"] == lines[res.best_epoch - 1]["valid"]
    # test is reported for the best-validation embeddings, and computed from them
    from mrdib_cli.evaluation.engine import evaluate_split
    from mrdib_cli.data.handle import DatasetHandle

    again = evaluate_split(DatasetHandle(conf["dataset_dir"]), u, i, "test", mask="train", ks=(10, 20))
    assert again.metrics["recall@20"] == pytest.approx(results["test"]["recall@20"])
    last = ckpt.load(d / "checkpoints" / "last.pt")  # weights_only=True inside
    assert last["epoch"] == 4 and "optimizer" in last and "sampler" in last
    assert ckpt.load(d / "checkpoints" / "best.pt")["epoch"] == res.best_epoch
    assert "feat_image" not in last["model"]  # frozen features are not duplicated in checkpoints


@pytest.mark.parametrize("backbone", ["lightgcn", "lgmrec"])
def test_same_seed_is_bit_identical(ws, backbone):
    train(ws, _cfg("s1", backbone, epochs=2))
    train(ws, _cfg("s2", backbone, epochs=2))
    for a, b in zip(_emb(ws, "s1"), _emb(ws, "s2")):
        assert np.array_equal(a, b)
    assert [m["loss"] for m in _metrics(ws, "s1")] == [m["loss"] for m in _metrics(ws, "s2")]
    cfg = _cfg("s3", backbone, epochs=2, train={"seed": 1})
    train(ws, cfg)
    assert not np.array_equal(_emb(ws, "s1")[0], _emb(ws, "s3")[0])


def test_same_seed_is_bit_identical_on_two_threads(tmp_path):
    """With two threads the backward of a row gather (emb[idx]) sums rows in a thread-dependent order unless
    deterministic kernels are on; the trainer turns them on for CPU runs. Big enough batches to be split."""
    make_dataset(tmp_path, n_users=400, n_items=300, per_user=20)
    w = Workspace(tmp_path)
    for name in ("t1", "t2"):
        cfg = _cfg(name, "lgmrec", epochs=2, train={"threads": 2, "batch_size": 4096})
        train(w, cfg)
        assert json.loads((w.run_dir(name) / "config.json").read_text())["runtime"]["deterministic"] is True
    for a, b in zip(_emb(w, "t1"), _emb(w, "t2")):
        assert np.array_equal(a, b)


def test_cpu_configuration_makes_an_accumulating_gather_deterministic():
    from mrdib_cli.training.trainer import configure_cpu

    configure_cpu(2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 64, generator=g, requires_grad=True)
    idx, w = torch.randint(500, (20000,), generator=g), torch.randn(20000, 64, generator=g)
    grads = []
    for _ in range(6):
        x.grad = None
        (x[idx] * w).sum().backward()
        grads.append(x.grad.clone())
    assert all(torch.equal(grads[0], q) for q in grads[1:])


def test_interrupt_then_resume_equals_uninterrupted(ws):
    full = train(ws, _cfg("full", "lgmrec", epochs=7))

    def boom(rec):
        if rec.epoch == 3:
            raise KeyboardInterrupt  # Ctrl-C right after epoch 3's checkpoint

    stopped = Trainer(ws, _cfg("part", "lgmrec", epochs=7), on_epoch=boom).fit()
    assert stopped.status == "stopped" and stopped.epochs_run == 3
    assert json.loads((ws.run_dir("part") / "results.json").read_text())["status"] == "stopped"
    resumed = Trainer(ws, _cfg("part", "lgmrec", epochs=7), resume=True).fit()
    assert resumed.status == "finished" and resumed.epochs_run == 7
    assert resumed.valid == full.valid and resumed.test == full.test and resumed.best_epoch == full.best_epoch
    for a, b in zip(_emb(ws, "full"), _emb(ws, "part")):
        assert np.array_equal(a, b)
    assert [m["loss"] for m in _metrics(ws, "full")] == [m["loss"] for m in _metrics(ws, "part")]


def test_a_stop_before_the_first_epoch_claims_no_checkpoint(ws, monkeypatch):
    """Ctrl-C during the first epoch: nothing was saved, and the message says so (it used to say "interrupted
    after epoch 0; the checkpoint is saved")."""
    trainer = Trainer(ws, _cfg("early"))

    def stopped_in_epoch_1() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_train_epoch", stopped_in_epoch_1)
    result = trainer.fit()
    assert result.status == "stopped" and result.epochs_run == 0
    assert "before the first epoch ended, so there is no checkpoint" in result.message
    assert not (ws.run_dir("early") / "checkpoints" / "last.pt").exists()
    assert ws.interrupted_runs() == ["early"]  # what a plain 'train --resume' picks


def test_resume_refuses_changed_config_and_existing_runs_need_force(ws):
    train(ws, _cfg("r2", epochs=2))
    before = (ws.run_dir("r2") / "config.json").read_bytes()
    with pytest.raises(UsageError, match=r"trained 2 epochs already, more than epochs \(from config file\) 1"):
        Trainer(ws, _cfg("r2", epochs=1), resume=True)  # its results would claim a cap of 1
    assert (ws.run_dir("r2") / "config.json").read_bytes() == before
    train(ws, _cfg("r", epochs=1))
    with pytest.raises(UsageError, match="already exists"):
        Trainer(ws, _cfg("r", epochs=1))
    with pytest.raises(UsageError, match=r"different configuration \(hparams.n_layers was 1, now 2\)"):
        Trainer(ws, _cfg("r", epochs=2, n_layers=2), resume=True)  # what differs, not only that something does
    with pytest.raises(UsageError, match="no checkpoint"):
        Trainer(ws, _cfg("never", epochs=1), resume=True)
    assert Trainer(ws, _cfg("r", epochs=1), overwrite=True).fit().status == "finished"


class _Poison(Plugin):
    """A test plug-in: adds a learnable term, and returns NaN from its ``nan_at``-th call on."""

    def __init__(self, opts):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))
        self.nan_at, self.calls = int(opts.get("nan_at", 10**9)), 0

    def attach(self, backbone):
        self.backbone = [backbone]

    def loss(self, batch, emb):
        self.calls += 1
        self.logs = {"w": float(self.w.detach())}
        v = (self.w ** 2) * emb.user[batch.users].pow(2).mean()
        return {"poison": v * (float("nan") if self.calls >= self.nan_at else 1.0)}


register_plugin("poison-test", _Poison)


def test_plugin_terms_are_trained_logged_and_checkpointed(ws):
    cfg = _cfg("p", epochs=2, plugin={"name": "poison-test"})
    train(ws, cfg)
    m = _metrics(ws, "p")
    assert "poison" in m[0]["loss"] and "w" in m[0]["loss"]
    state = ckpt.load(ws.run_dir("p") / "checkpoints" / "last.pt")["plugin"]
    assert float(state["w"]) < 0.5  # the plug-in parameter was in the optimiser
    assert json.loads((ws.run_dir("p") / "config.json").read_text())["plugin"] == {"name": "poison-test"}
    with pytest.raises(UsageError, match="unknown plug-in"):
        create_plugin("nope")


class _Worried(_Poison):
    """A test plug-in whose health reports the same problem every epoch, and a new one from epoch 3 on."""

    def health(self):
        self.epochs = getattr(self, "epochs", 0) + 1
        problems = {"drift": f"drifting (check {self.epochs})"}
        if self.epochs >= 3:
            problems["clamp"] = "clamped"
        return {"checks": float(self.epochs)}, problems


register_plugin("worried-test", _Worried)


def test_plugin_health_is_logged_per_epoch_and_each_problem_warned_once(ws):
    cfg = _cfg("h", epochs=4, plugin={"name": "worried-test"})
    warnings: list[str] = []
    Trainer(ws, cfg, on_warn=warnings.append).fit()
    assert [r["health"] for r in _metrics(ws, "h")] == [{"checks": float(e)} for e in (1, 2, 3, 4)]
    assert warnings == ["epoch 1: drifting (check 1)", "epoch 3: clamped"]
    kept = json.loads((ws.run_dir("h") / "results.json").read_text())["warnings"]
    assert kept == [{"epoch": 1, "kind": "drift", "message": "drifting (check 1)"},
                    {"epoch": 3, "kind": "clamp", "message": "clamped"}]  # for 'mrdib doctor'
    train(ws, _cfg("plain", epochs=1))
    assert "health" not in _metrics(ws, "plain")[0]  # nothing to report: the key is left out
    assert "warnings" not in json.loads((ws.run_dir("plain") / "results.json").read_text())


def test_a_resumed_run_does_not_repeat_warnings_it_already_gave(ws):
    cfg = _cfg("hr", epochs=2, plugin={"name": "worried-test"})
    first: list[str] = []
    Trainer(ws, cfg, on_warn=first.append).fit()
    assert first == ["epoch 1: drifting (check 1)"]
    cfg = _cfg("hr", epochs=5, plugin={"name": "worried-test"})
    later: list[str] = []
    Trainer(ws, cfg, resume=True, on_warn=later.append).fit()
    # the fresh plug-in counts its checks from 1 again (epochs 3-5): the drift, warned about before the resume,
    # is not repeated; the clamp, new at its third check, is
    assert later == ["epoch 5: clamped"]
    kinds = [w["kind"] for w in json.loads((ws.run_dir("hr") / "results.json").read_text())["warnings"]]
    assert kinds == ["drift", "clamp"]


def test_mrdib_health_figures_reach_metrics(ws):
    cfg = _cfg("ib", backbone="vbpr", epochs=2, plugin={"name": "mrdib"})
    train(ws, cfg)
    for rec in _metrics(ws, "ib"):
        assert set(rec["health"]) == {f"{k}_{m}" for k in ("nats", "clamped", "spread", "offset")
                                      for m in ("image", "text")}
        assert rec["health"]["nats_image"] > 0 and rec["health"]["clamped_text"] == 0.0


def test_nan_loss_stops_and_keeps_last_good_checkpoint(ws):
    cfg = _cfg("nan", epochs=5, plugin={"name": "poison-test", "nan_at": 10})  # 6 batches per epoch: NaN in epoch 2
    res = train(ws, cfg)
    assert res.status == "failed" and "non-finite" in res.message
    assert "(epoch 1) is kept" in res.message and "--force" in res.message  # a resume would diverge again
    d = ws.run_dir("nan")
    last = ckpt.load(d / "checkpoints" / "last.pt")
    assert last["epoch"] == res.epochs_run >= 1
    assert json.loads((d / "results.json").read_text())["status"] == "failed"
    first = train(ws, _cfg("nan0", epochs=5, plugin={"name": "poison-test", "nan_at": 2}))  # in epoch 1
    assert first.status == "failed" and "before its first checkpoint" in first.message
    assert not (ws.run_dir("nan0") / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize("backbone", ["vbpr", "lgmrec"])
def test_test_metrics_are_those_of_the_best_epoch_embeddings(ws, backbone):
    """Regression: VBPR hands out its user table itself; on CPU the kept 'best' embeddings were a view of the
    live parameter, so the final test silently mixed the last epoch's users with the best epoch's items."""
    from mrdib_cli.data.handle import DatasetHandle
    from mrdib_cli.evaluation.engine import evaluate_split

    res = train(ws, _cfg("b", backbone, epochs=12, patience=1, reg_weight=1e-3) if backbone == "vbpr"
                else _cfg("b", backbone, epochs=12, patience=1))
    results = json.loads((ws.run_dir("b") / "results.json").read_text())
    assert results["epochs_run"] > res.best_epoch  # training went on after the best epoch
    u, i = _emb(ws, "b")
    conf = json.loads((ws.run_dir("b") / "config.json").read_text())
    again = evaluate_split(DatasetHandle(conf["dataset_dir"]), u, i, "test", mask="train", ks=(10, 20))
    assert again.metrics == pytest.approx(results["test"])


def test_cpu_runtime_flushes_denormals() -> None:
    """Denormal floats make CPU arithmetic ~100x slower per element (LGMRec's step lost 25% to them); the
    trainer's CPU set-up flushes them to zero and says so in config.json."""
    import torch

    from mrdib_cli.training.trainer import configure_cpu

    try:
        torch.set_flush_denormal(False)  # (an earlier trainer in this process may have switched it on)
        tiny = torch.tensor([1e-39], dtype=torch.float32)
        assert float(tiny * 1.0) != 0.0  # a denormal survives by default
        rt = configure_cpu(1)
        if not rt["flush_denormal"]:
            pytest.skip("this CPU cannot flush denormals (no SSE3)")
        assert rt["threads"] == 1 and float(tiny * 1.0) == 0.0
    finally:
        torch.set_num_threads(max(1, os.cpu_count() or 1))


def test_a_later_option_back_at_its_default_is_shown_as_that_default():
    """An option at its default is left out of a run's identity; the refusal shows the default, not None."""
    from mrdib_cli.training.trainer import _what_changed

    was = {"train": {"minibatch": "sampled", "fanout": [10, 5]}}
    now = {"train": {"minibatch": "sampled"}}
    assert _what_changed(was, now) == "train.fanout was [10, 5], now [10]"


def test_a_file_copied_in_from_another_run_is_refused(ws):
    """embeddings.npz and best.pt carry the run's identity (its options, seed and data): one copied in from
    another run, or a config.json edited after training, is refused where it is read, not scored under the
    wrong name."""
    import shutil

    from mrdib_cli.evaluation.runs import Run
    from mrdib_cli.mrdib.diagnostics import load_run

    train(ws, _cfg("a", epochs=1))
    train(ws, _cfg("b", epochs=1, train={"seed": 5}))
    Run.open(ws, "a").embeddings  # noqa: B018 - its own files read
    load_run(ws, "a")
    for rel in ("embeddings.npz", "checkpoints/best.pt"):
        shutil.copy(ws.run_dir("a") / rel, ws.run_dir("a") / (rel + ".own"))
        shutil.copy(ws.run_dir("b") / rel, ws.run_dir("a") / rel)
    with pytest.raises(DataError, match="embeddings.npz was written by another run than 'a'"):
        Run.open(ws, "a").embeddings  # noqa: B018
    with pytest.raises(DataError, match="best.pt was written by another run than 'a'"):
        load_run(ws, "a")
    shutil.copy(ws.run_dir("a") / "checkpoints/best.pt.own", ws.run_dir("a") / "checkpoints/best.pt")
    from mrdib_cli.mrdib.diagnostics import diagnose_run

    with pytest.raises(DataError, match="embeddings.npz was written by another run than 'a'"):
        diagnose_run(load_run(ws, "a"), mi_steps=5)  # its fused ranking reads embeddings.npz
    for rel in ("embeddings.npz", "checkpoints/best.pt"):
        shutil.move(ws.run_dir("a") / (rel + ".own"), ws.run_dir("a") / rel)
    conf = json.loads((ws.run_dir("a") / "config.json").read_text())
    conf["hparams"]["n_layers"] = 3  # edited after training: the files no longer match it
    (ws.run_dir("a") / "config.json").write_text(json.dumps(conf))
    with pytest.raises(DataError, match="written by another run"):
        Run.open(ws, "a").embeddings  # noqa: B018


def test_a_torn_or_deleted_metrics_file_is_rewritten_from_the_checkpoint(ws):
    """The checkpoint keeps the history: a resume after metrics.jsonl was torn or deleted rewrites it whole
    (it used to continue silently with the lines that were left, and report showed fewer epochs)."""
    train(ws, _cfg("whole", epochs=3))
    train(ws, _cfg("torn", epochs=2))
    path = ws.run_dir("torn") / "metrics.jsonl"
    path.write_text(path.read_text()[:40])  # the first line cut short
    said = []
    Trainer(ws, _cfg("torn", epochs=3), resume=True, on_info=said.append).fit()
    assert any("held 0 of the 2 epochs the checkpoint covers" in s for s in said), said
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(_metrics(ws, "torn")) == strip(_metrics(ws, "whole"))
    path.unlink()
    Trainer(ws, _cfg("torn", epochs=3), resume=True).fit()
    assert strip(_metrics(ws, "torn")) == strip(_metrics(ws, "whole"))
