"""How a multi-process job ends when a person or the system stops part of it: Ctrl-C on one machine of two,
a launcher killed outright. Kept apart from the other distributed tests so that the test runner can run the
files at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.distributed.test_machines import _free_port
from tests.synth_data import make_dataset

torch_dist = pytest.importorskip("torch.distributed")
if not torch_dist.is_available() or not torch_dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available in this build", allow_module_level=True)

#: a run that trains until it is stopped
ENDLESS = ("train", "-b", "lightgcn", "-n", "long", "--batch-size", "32", "--device", "cpu", "--threads", "1",
           "--minibatch", "sampled", "--epochs", "100000", "--patience", "100000")


@pytest.fixture
def ws(tmp_path):
    from mrdib_cli.workspace import Workspace

    make_dataset(tmp_path / "home", n_users=120, n_items=60, features=False)
    return Workspace(tmp_path / "home")


def _start(ws, tmp_path: Path, name: str, *extra: str) -> subprocess.Popen:
    """``mrdib ENDLESS EXTRA`` in the background, its output in files (a long run would fill a pipe)."""
    env = {**os.environ, "MRDIB_HOME": str(ws.root), "MRDIB_NO_PROGRESS": "1", "COLUMNS": "200",
           "MRDIB_DIST_TIMEOUT_MIN": "10"}
    return subprocess.Popen([sys.executable, "-m", "mrdib_cli", *ENDLESS, *extra], env=env, cwd=str(ROOT),
                            stdout=open(tmp_path / f"{name}.out", "w"), stderr=open(tmp_path / f"{name}.err", "w"))


def _wait_for_an_epoch(ws, launchers: list[subprocess.Popen]) -> None:
    """Until the run has a finished epoch and its checkpoint (the job is in its training loop, every rank in
    step; the checkpoint is written after the epoch's metrics line, and a test that stopped the job between
    the two would find none)."""
    metrics = ws.run_dir("long") / "metrics.jsonl"
    last = ws.run_dir("long") / "checkpoints" / "last.pt"  # written whole or not at all (renamed into place)
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1 and last.exists()):
        assert all(p.poll() is None for p in launchers), "the job ended before its first epoch"
        assert time.monotonic() < deadline, "no epoch within 240 s"
        time.sleep(0.2)


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the workers follow their launcher on Linux only")
def test_the_workers_stop_when_their_launcher_is_killed(ws, tmp_path):
    """torchrun starts each worker in a session of its own, so a launcher killed outright (kill -9, the
    out-of-memory killer) used to leave its workers training on unseen, still writing the run folder. They now
    stop with it, and the run continues from its last checkpoint with --resume."""
    launcher = _start(ws, tmp_path, "one", "--nproc", "2")
    workers: list[int] = []
    try:
        _wait_for_an_epoch(ws, [launcher])
        workers = _children(launcher.pid)
        assert len(workers) == 2, workers
        launcher.kill()
        launcher.wait(timeout=60)
        deadline = time.monotonic() + 120
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), "the workers went on training without their launcher"
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()
    from mrdib_cli.training import checkpoint as ckpt

    assert ckpt.load(ws.run_dir("long") / "checkpoints" / "last.pt")["epoch"] >= 1


def test_ctrl_c_on_one_machine_ends_both_with_one_line_each(ws, tmp_path):
    """Ctrl-C on one of two machines: that machine says it was interrupted and how to continue (exit 130),
    whether or not it holds rank 0, and the other says it lost the first (exit 1). Before, the interrupted
    rank waited at the end-of-job barrier for a peer that would never come, until torchrun's agent killed it
    30 s later, and the machine ended without a word."""
    meet = ("--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}")
    machines = [_start(ws, tmp_path, f"m{i}", *meet) for i in range(2)]
    try:
        _wait_for_an_epoch(ws, machines)
        machines[0].send_signal(signal.SIGINT)
        codes = [p.wait(timeout=240) for p in machines]
    finally:
        for p in machines:
            if p.poll() is None:
                p.kill()
    interrupted, other = ((tmp_path / f"m{i}.err").read_text() for i in range(2))
    assert codes == [130, 1], f"{interrupted}\n{other}"
    assert "interrupted" in interrupted and "--resume" in interrupted, interrupted
    assert "lost" in other and "--resume" in other, other
    for err in (interrupted, other):
        assert "Traceback" not in err and "frame #" not in err, err
