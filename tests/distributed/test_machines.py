"""Jobs on several machines, simulated on one host: launchers meeting at a local rendezvous endpoint are
machines to the code (one rank each: the ranks share no memory). Kept apart from test_distributed.py so that
the test runner can run both files at once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.distributed.test_distributed import _cli
from tests.forked import start_forked
from tests.synth_data import make_dataset

torch_dist = pytest.importorskip("torch.distributed")
if not torch_dist.is_available() or not torch_dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available in this build", allow_module_level=True)


@pytest.fixture
def ws(tmp_path):
    from mrdib_cli.workspace import Workspace

    make_dataset(tmp_path, n_users=120, n_items=60, features=False)
    return Workspace(tmp_path)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _machines(workdir: Path, *args: str, n: int = 2, timeout_min: str = "30",
              each: tuple[tuple[str, ...], ...] = (), env_each: tuple[dict[str, str], ...] = ()
              ) -> list[tuple[int, str, str]]:
    """``mrdib ARGS --nnodes n`` started n times at once, as on n machines meeting at a local endpoint (machine
    i adds ``each[i]`` to its command line and ``env_each[i]`` to its environment): (exit code, stdout,
    stderr) of each launcher."""
    meet = ("--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}")
    # forks of the pre-warmed server, all started before any is waited for (they must meet)
    launchers = [start_forked(workdir, *args, *(each[i] if each else ()), *meet, MRDIB_DIST_TIMEOUT_MIN=timeout_min,
                              **(env_each[i] if env_each else {}))
                 for i in range(n)]
    return [(r.returncode, r.stdout, r.stderr) for r in (child.wait(300) for child in launchers)]


def test_ranks_on_two_machines_train_as_ranks_on_one(ws):
    """Two launchers meeting at a rendezvous endpoint (two "machines", one rank each: the ranks share no memory,
    so the rows and sums travel through collectives) train the sampled mode to the same bits as two ranks on
    one machine (shared memory), each keeping the moments of its own rows, and print no library warnings."""
    import torch

    common = ("train", "-b", "lightgcn", "--batch-size", "128", "--seed", "7", "--device", "cpu",
              "--minibatch", "sampled", "--threads", "1", "--epochs", "2")
    _cli(ws.root, *common, "-n", "one-machine", "--nproc", "2")
    for code, out, err in _machines(ws.root, *common, "-n", "two-machines"):
        assert code == 0, f"{out}\n{err}"
        assert "Warning" not in err, err
    a, b = (torch.load(ws.run_dir(n) / "checkpoints" / "last.pt", weights_only=False)
            for n in ("one-machine", "two-machines"))
    best_a, best_b = (torch.load(ws.run_dir(n) / "checkpoints" / "best.pt", weights_only=False)
                      for n in ("one-machine", "two-machines"))
    # the tables are sharded across the machines: every saved model must hold them whole all the same
    for one, two in ((a["model"], b["model"]), (a["best"]["model"], b["best"]["model"]),
                     (best_a["model"], best_b["model"])):
        assert one.keys() == two.keys()
        for k in one:
            assert torch.equal(one[k], two[k]), k
    for key, moments in a["optimizer"]["parts"][0]["state"].items():
        assert torch.equal(moments["exp_avg_sq"], b["optimizer"]["parts"][0]["state"][key]["exp_avg_sq"])


def test_an_error_on_every_machine_is_one_line_on_each(ws):
    """A refusal every rank shares (the run folder exists) ends each machine's launcher with the one line and
    the exit code a one-process run gives, no torchrun traceback; a machine alone waits for the others only as
    long as MRDIB_DIST_TIMEOUT_MIN says, then says so in one line."""
    args = ("train", "-b", "lightgcn", "-n", "taken", "--epochs", "1", "--device", "cpu", "--threads", "1")
    _cli(ws.root, *args)
    for code, out, err in _machines(ws.root, *args):
        assert code == 2, f"{out}\n{err}"
        assert err.count("run 'taken' already exists") == 1 and "Traceback" not in err, err
    [(code, out, err)] = _machines(ws.root, *args, n=1, timeout_min="0.05")
    assert code == 1 and "lost each other at 127.0.0.1" in err and "not every machine came" in err, err
    assert "Traceback" not in err


def test_machines_given_different_runs_refuse_before_writing(ws):
    """Each machine resolves its own command line: two that differ (here the epoch count; a run name would
    train one run and leave the other machine's user without theirs) are refused on every machine in one
    line, before any run folder is written, instead of failing in a collective of another size. The same
    command that resolves differently (a seed from the environment) is refused too, naming what differs."""
    args = ("train", "-b", "lightgcn", "-n", "mixed", "--device", "cpu", "--epochs", "2")
    for kw, wanted in ((dict(each=(("--threads", "1", "--patience", "2"), ("--threads", "2", "--patience", "3"))),
                        r"given different commands: rank 0 runs 'mrdib train .*--patience [23]' and rank 1 'mrdib "
                        r"train .*--patience [23]'; run the same command on every machine"),
                       (dict(env_each=({"MRDIB_SEED": "1"}, {"MRDIB_SEED": "2"})),
                        r"started with different runs: train.seed is [12] on rank 0 and [12] on rank 1")):
        for code, out, err in _machines(ws.root, *args, **kw):
            assert code == 2, f"{out}\n{err}"
            assert re.search(wanted, err), err
            assert "Traceback" not in err
            assert "--threads 1" not in err and "--threads 2" not in err  # may differ: not compared
        assert not ws.run_dir("mixed").exists()
