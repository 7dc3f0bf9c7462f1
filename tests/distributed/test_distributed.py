"""torch.distributed scale-out on CPU (gloo, 2 processes launched through torch.distributed.run).

Each test launches the real CLI with ``--nproc 2`` (so the launcher, the rank-0-only writes and the shard
merges are all exercised) and compares with the single-process result computed in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.conftest import ROOT
from tests.forked import mrdib_forked
from tests.synth_data import make_dataset

torch_dist = pytest.importorskip("torch.distributed")
if not torch_dist.is_available() or not torch_dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available in this build", allow_module_level=True)


def _cli(workdir: Path, *args: str, threads: int | None = None,
         python_module: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "MRDIB_HOME": str(workdir), "MRDIB_NO_PROGRESS": "1", "COLUMNS": "200"}
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if not python_module and (threads or "OMP_NUM_THREADS" not in os.environ):
        # the launcher as a fork of the pre-warmed server (its workers still start fresh interpreters)
        p = mrdib_forked(workdir, *args, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    else:
        cmd = [sys.executable, *args] if python_module else [sys.executable, "-m", "mrdib_cli", *args]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=300)
    assert p.returncode == 0, f"mrdib {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture
def ws(tmp_path):
    from mrdib_cli.workspace import Workspace

    make_dataset(tmp_path, n_users=120, n_items=60, features=False)
    return Workspace(tmp_path)


def test_ddp_training_matches_single_process_and_resumes(ws):
    """Same seed: DDP (2 ranks) tracks the single-process run; only one set of outputs; --resume works."""
    from mrdib_cli.training.resolve import resolve_run
    from mrdib_cli.training.trainer import train

    train(ws, resolve_run(ws, file={"backbone": "lightgcn", "run_name": "single", "hparams": {"reg_weight": 1e-4},
                                    "train": {"epochs": 4, "batch_size": 128, "threads": 1, "seed": 7}}))
    launched = _cli(ws.root, "train", "-b", "lightgcn", "-n", "ddp", "--epochs", "2", "--batch-size", "128",
                    "--seed", "7", "--reg-weight", "1e-4", "--device", "cpu", "--nproc", "2")
    # the first line names the threads each worker then uses, not the launcher's own count
    used = json.loads((ws.run_dir("ddp") / "config.json").read_text())["runtime"]["threads"]
    first = launched.stderr.splitlines()[0]
    assert f"; {used} torch thread" in first and "each of 2 processes' share of the cores" in first, first
    # resume through plain torchrun (the documented multi-node entry point), not --nproc
    p = _cli(ws.root, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "mrdib_cli",
             "train", "--resume", "-n", "ddp", "--epochs", "4", python_module=True)
    assert p.stdout.count("ddp: best epoch") == 1  # rank 0 reports; rank 1 stays quiet
    single, ddp = ws.run_dir("single"), ws.run_dir("ddp")
    m1 = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in m2] == [1, 2, 3, 4]  # one writer: no duplicated lines, resume kept 1-2
    # each epoch names the processes its train_cpu_s sums over (a resume may change --nproc)
    assert [r["processes"] for r in m1] == [1] * 4 and [r["processes"] for r in m2] == [2] * 4
    for a, b in zip(m1, m2):
        assert b["loss"]["bpr"] == pytest.approx(a["loss"]["bpr"], abs=2e-3)
        assert b["loss"]["total"] == pytest.approx(a["loss"]["total"], abs=2e-3)  # not summed twice
        # EmbLoss is a norm of the whole batch: each rank's share adds up to it (a sum of slice norms is ~1.4x)
        assert b["loss"]["reg"] == pytest.approx(a["loss"]["reg"], rel=1e-2)
        for k, v in a["valid"].items():
            assert b["valid"][k] == pytest.approx(v, abs=0.02), (a["epoch"], k)
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (single, ddp))
    assert r2["status"] == "finished" and r2["epochs_run"] == 4
    for k, v in r1["test"].items():
        assert r2["test"][k] == pytest.approx(v, abs=0.02)
    with np.load(single / "embeddings.npz") as a, np.load(ddp / "embeddings.npz") as b:
        assert np.abs(a["item"] - b["item"]).max() < 5e-3
    conf = json.loads((ddp / "config.json").read_text())
    assert conf["distributed"]["world_size"] == 2 and conf["distributed"]["backend"] == "gloo"
    names = sorted(p.name for p in ddp.iterdir())
    assert names == sorted(p.name for p in single.iterdir())  # the same files, one set
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


def test_sharded_eval_equals_single_process(ws):
    """mrdib eval --nproc 2 writes exactly the per-user metrics and top-K rows of a one-process eval, and names
    the run it evaluates once."""
    from mrdib_cli.data.handle import DatasetHandle
    from mrdib_cli.evaluation.engine import evaluate_split

    h = DatasetHandle.open(ws, "tiny")
    rng = np.random.default_rng(3)
    user, item = rng.normal(size=(h.n_users, 16)).astype(np.float32), rng.normal(size=(h.n_items, 16)).astype(
        np.float32)
    d = ws.run_dir("emb")
    d.mkdir(parents=True)
    np.savez(d / "embeddings.npz", user=user, item=item)
    (d / "config.json").write_text(json.dumps({"run_name": "emb", "dataset": "tiny", "backbone": "external",
                                               "dataset_digest": h.digest, "train": {"seed": 0}}))
    ref = evaluate_split(h, user, item, "test", mask="train", ks=(5, 10))
    p = _cli(ws.root, "eval", "--run", "emb", "--split", "test", "--k", "5", "--k", "10", "--nproc", "2")
    assert p.stderr.count("eval: run 'emb'") == 1, p.stderr  # said by the launcher, not again by each worker
    got = pl.read_parquet(d / "per_user-test.k-5-10.parquet")
    assert got.equals(ref.per_user)
    topk = pl.read_parquet(d / "topk-test.k-5-10.parquet")
    assert np.array_equal(topk["items"].to_numpy(), ref.topk)
    assert np.array_equal(topk["user_idx"].to_numpy(), ref.users)
    saved = json.loads((d / "eval-test.k-5-10.json").read_text())
    assert saved["metrics"] == ref.metrics  # the merged macro averages are bit-identical
    assert not any(p.name.startswith(".shards") for p in d.iterdir())


def test_sharded_feature_extraction_equals_single_process(tmp_path):
    """extract-features --nproc 2 (items' shards split over the ranks) gives the identical table."""
    from tests.features.helpers import write_dataset

    words = ["red", "green", "blue", "lamp", "chair", "shoe", "cable", "phone"]
    items = [{"asin": f"A{i}", "title": f"{words[i % 8]} {words[(i * 3) % 8]} item {i}", "brand": "b",
              "description": None if i % 5 == 0 else f"a {words[(i * 5) % 8]} thing"} for i in range(26)]
    write_dataset(tmp_path / "one", "toy", items)
    write_dataset(tmp_path / "two", "toy", items)
    args = ("extract-features", "-m", "text", "--device", "cpu", "--shard-size", "5", "--batch-size", "4")
    # one CPU thread per process in both runs: CPU kernels may sum in another order with another thread
    # count (differences ~1e-7), which is not what this test is about
    import torch

    from mrdib_cli.data.handle import DatasetHandle
    from mrdib_cli.features.extract import RunOptions, TextOptions, extract_text
    from mrdib_cli.workspace import Workspace

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        w1 = Workspace(tmp_path / "one")
        extract_text(w1, DatasetHandle.open(w1, "toy"), TextOptions(),
                     RunOptions(device="cpu", shard_size=5, batch_size=4))
    finally:
        torch.set_num_threads(before)
    _cli(tmp_path / "two", *args, "--nproc", "2")
    f1 = sorted((tmp_path / "one/datasets/toy/features").glob("text-*.parquet"))
    f2 = sorted((tmp_path / "two/datasets/toy/features").glob("text-*.parquet"))
    assert len(f1) == len(f2) == 1
    a, b = pl.read_parquet(f1[0]), pl.read_parquet(f2[0])
    assert a.equals(b)
    assert f1[0].read_bytes() == f2[0].read_bytes()  # provenance included: byte-identical files
    assert not (tmp_path / "two/datasets/toy/features/.shards").exists()


def _norm_share_worker(rank: int, world: int, init: str, out: str) -> None:
    """One rank of test_batch_norm_shares_add_up_to_the_global_norm (module level: spawn pickles it)."""
    import torch
    import torch.distributed as dist

    from mrdib_cli.models._common import batch_norms, batch_split_across_ranks

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        full = torch.arange(1.0, 13.0).reshape(6, 2) / 7.0  # the global batch, 3 rows per rank
        part = full[3 * rank:3 * rank + 3].clone().requires_grad_()
        with batch_split_across_ranks():
            first, second = batch_norms(part, 2 * part)  # one all-reduce for both
        share = first + second
        share.backward()
        value = share.detach().clone()
        dist.all_reduce(value)
        grads = [torch.zeros(3, 2) for _ in range(world)]
        dist.all_gather(grads, part.grad)
        if rank == 0:
            torch.save({"sum": value, "grad": torch.cat(grads)}, out)
    finally:
        dist.destroy_process_group()


def test_batch_norm_shares_add_up_to_the_global_norm(tmp_path) -> None:
    """EmbLoss under DDP: the ranks' shares sum to ||E|| and their gradients are the slices of grad ||E|| (two
    tensors at once: ||E|| + ||2E||)."""
    import torch
    import torch.multiprocessing as mp

    out = tmp_path / "out.pt"
    mp.spawn(_norm_share_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(out)), nprocs=2, join=True)
    got = torch.load(out)
    full = (torch.arange(1.0, 13.0).reshape(6, 2) / 7.0).requires_grad_()
    ref = torch.linalg.norm(full) + torch.linalg.norm(2 * full)
    ref.backward()
    assert float(got["sum"]) == pytest.approx(float(ref.detach()), rel=1e-6)
    assert torch.allclose(got["grad"], full.grad, atol=1e-7)


def test_sampled_mode_ranks_split_the_work_and_track_one_process(ws):
    """--minibatch sampled on 2 ranks (each samples its own slice; sparse gradients averaged by hand): with a
    fan-out covering every neighbour it follows the one-process sampled run, also across a resume (each rank
    holds the lazy Adam moments of its own rows; the checkpoint gathers them), and records the ranks' CPU time."""
    common = ("-b", "lightgcn", "--batch-size", "128", "--seed", "7", "--reg-weight", "1e-4",
              "--device", "cpu", "--minibatch", "sampled", "--fanout", "1000", "--threads", "1")
    _cli(ws.root, "train", "-n", "one", "--epochs", "2", *common)
    first = _cli(ws.root, "train", "-n", "two", "--epochs", "1", *common, "--nproc", "2")
    assert "train: run 'two' on dataset" in first.stderr  # the run a user named, also in a job of several
    _cli(ws.root, "train", "-n", "two", "--resume", "--epochs", "2", "--nproc", "2")  # moments gathered, re-split
    m1, m2 = ([json.loads(x) for x in (ws.run_dir(n) / "metrics.jsonl").read_text().splitlines()]
              for n in ("one", "two"))
    assert [r["epoch"] for r in m1] == [r["epoch"] for r in m2] == [1, 2]
    for a, b in zip(m1, m2):
        assert b["loss"]["bpr"] == pytest.approx(a["loss"]["bpr"], abs=2e-3)
        assert b["loss"]["reg"] == pytest.approx(a["loss"]["reg"], rel=1e-2)
        for k, v in a["valid"].items():
            assert b["valid"][k] == pytest.approx(v, abs=0.02), (a["epoch"], k)
        assert a["time"]["train_cpu_s"] > 0 and b["time"]["train_cpu_s"] > 0
    # the checkpoint holds every row's moments, gathered from both ranks' blocks
    import torch

    st = torch.load(ws.run_dir("two") / "checkpoints" / "last.pt", weights_only=False)
    moments = st["optimizer"]["parts"][0]["state"]
    n_rows = {len(t) for t in st["model"].values() if t.dim() == 2}
    for m in moments.values():
        rows = len(m["exp_avg"])
        assert rows in n_rows
        assert m["exp_avg_sq"][:rows // 2].abs().sum() > 0 and m["exp_avg_sq"][rows // 2:].abs().sum() > 0


def test_two_rank_resume_equals_an_uninterrupted_run_with_dropout(tmp_path):
    """Each rank's RNG state is checkpointed: LGMRec's dropout draws a different amount on each rank's slice, so
    resuming every rank from rank 0's state put the second rank on another stream (the runs then differed)."""
    from mrdib_cli.workspace import Workspace

    make_dataset(tmp_path, n_users=120, n_items=60)
    ws = Workspace(tmp_path)
    common = ("-b", "lgmrec", "--seed", "3", "--device", "cpu", "--threads", "1", "--minibatch", "sampled",
              "--nproc", "2", "--batch-size", "128")
    _cli(ws.root, "train", "-n", "whole", "--epochs", "3", *common)
    _cli(ws.root, "train", "-n", "cut", "--epochs", "2", *common)
    _cli(ws.root, "train", "-n", "cut", "--resume", "--epochs", "3", "--nproc", "2")
    whole, cut = ([json.loads(x) for x in (ws.run_dir(n) / "metrics.jsonl").read_text().splitlines()]
                  for n in ("whole", "cut"))
    assert [r["epoch"] for r in cut] == [1, 2, 3]
    for a, b in zip(whole, cut):
        assert a["loss"] == b["loss"] and a["valid"] == b["valid"], a["epoch"]


def test_an_error_every_rank_hits_is_printed_once_with_its_exit_code(ws):
    """--nproc 2: each worker hands its one-line error to the launcher, which prints it once (not once per
    rank) and exits with the worker's code; nothing is left in the temporary folder."""
    args = ("train", "-b", "lightgcn", "-n", "taken", "--epochs", "1", "--device", "cpu", "--threads", "1")
    _cli(ws.root, *args)
    env = {**os.environ, "MRDIB_HOME": str(ws.root), "MRDIB_NO_PROGRESS": "1", "COLUMNS": "200"}
    p = subprocess.run([sys.executable, "-m", "mrdib_cli", *args, "--nproc", "2"], capture_output=True, text=True,
                       env=env, cwd=str(ROOT), timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("run 'taken' already exists") == 1, p.stderr
    assert "Traceback" not in p.stderr


def test_workers_with_different_errors_are_each_named(tmp_path):
    from mrdib_cli.launch import _worker_errors

    assert _worker_errors(str(tmp_path)) is None
    (tmp_path / "1").write_text("disk full")
    (tmp_path / "0").write_text("bad shard")
    assert _worker_errors(str(tmp_path)) == "rank 0: bad shard; rank 1: disk full"
    (tmp_path / "0").write_text("disk full")
    assert _worker_errors(str(tmp_path)) == "disk full"
    from mrdib_cli.launch import LOST_PEER_MESSAGE

    (tmp_path / "1").write_text(LOST_PEER_MESSAGE)  # a rank that lost the failed one: the cause is named
    assert _worker_errors(str(tmp_path)) == "disk full"
    (tmp_path / "0").write_text(LOST_PEER_MESSAGE)
    assert _worker_errors(str(tmp_path)) == LOST_PEER_MESSAGE


def test_a_batch_sum_term_keeps_its_weight_on_two_ranks(tmp_path):
    """LGMRec's contrastive term sums over the batch: two ranks must log it (and train on it) at one process's
    size, not half of it (each rank's share was weighted like a mean's, so N ranks trained on cl_weight / N)."""
    from mrdib_cli.workspace import Workspace

    make_dataset(tmp_path, n_users=120, n_items=60)
    ws = Workspace(tmp_path)
    common = ("-b", "lgmrec", "--seed", "5", "--device", "cpu", "--threads", "1", "--epochs", "1",
              "--batch-size", "128", "--cl-weight", "0.01")
    _cli(ws.root, "train", "-n", "one", *common)
    _cli(ws.root, "train", "-n", "two", *common, "--nproc", "2")
    one, two = (json.loads((ws.run_dir(n) / "metrics.jsonl").read_text().splitlines()[0])["loss"]
                for n in ("one", "two"))
    assert two["hcl"] == pytest.approx(one["hcl"], rel=0.05)
    assert two["bpr"] == pytest.approx(one["bpr"], rel=0.05)


def test_a_write_failure_in_a_worker_is_one_line_with_exit_1(ws):
    """A worker's disk error (here a file-size limit; the ranks' shared memory meets it first) is handed to
    the launcher like any other error: one line and exit 1, as one process gives. It used to be printed by the
    worker, and the launcher then added a line about the rank it stopped, with that rank's SIGTERM code."""
    import resource

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    env = {**os.environ, "MRDIB_HOME": str(ws.root), "MRDIB_NO_PROGRESS": "1", "COLUMNS": "200"}
    p = subprocess.run([sys.executable, "-m", "mrdib_cli", "train", "-b", "lightgcn", "-n", "big", "--epochs", "1",
                        "--device", "cpu", "--threads", "1", "--nproc", "2"], capture_output=True, text=True,
                       env=env, cwd=str(ROOT), timeout=300, preexec_fn=small_files)
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 1 and len(errors) == 1 and "(EFBIG)" in errors[0], p.stderr
    assert "Traceback" not in p.stderr
