"""In-process checks of the sharding arithmetic (no process group needed)."""

from __future__ import annotations

import os
import sys

import numpy as np
import polars as pl
import pytest

from mrdib_cli.launch import slice_bounds, strip_option
from tests.synth_data import make_dataset


def test_slice_bounds_cover_each_batch_once():
    for n in (1, 2, 5, 2048, 2049):
        for w in (1, 2, 3, 8):
            parts = [slice_bounds(n, r, w) for r in range(w)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            sizes = [hi - lo for lo, hi in parts]
            assert max(sizes) - min(sizes) <= 1


def test_strip_option_removes_only_nproc():
    argv = ["--workdir", "w", "train", "--nproc", "2", "-b", "lightgcn", "--nproc=3", "--n-layers", "2"]
    assert strip_option(argv, "--nproc") == ["--workdir", "w", "train", "-b", "lightgcn", "--n-layers", "2"]


def test_three_shards_merge_to_the_single_process_result(tmp_path):
    from mrdib_cli.data.handle import DatasetHandle
    from mrdib_cli.evaluation.engine import evaluate_split
    from mrdib_cli.evaluation.sharded import evaluate_shard, merge, to_rows
    from mrdib_cli.workspace import Workspace

    make_dataset(tmp_path, n_users=70, n_items=40, features=False)
    h = DatasetHandle.open(Workspace(tmp_path), "tiny")
    rng = np.random.default_rng(0)
    u, i = rng.normal(size=(h.n_users, 8)), rng.normal(size=(h.n_items, 8))
    ref = evaluate_split(h, u, i, "valid", mask="train", ks=(5, 10))
    parts = [evaluate_shard(h, u, i, "valid", "train", s, 3, ks=(5, 10)) for s in range(3)]
    assert sorted(np.concatenate([p.users for p in parts]).tolist()) == ref.users.tolist()
    got = merge([to_rows(p) for p in parts], parts[0].protocol)
    assert got.per_user.equals(ref.per_user)
    assert np.array_equal(got.topk, ref.topk) and np.array_equal(got.scores, ref.scores)
    assert got.metrics == ref.metrics
    assert got.protocol.fingerprint() == ref.protocol.fingerprint()
    assert isinstance(got.per_user, pl.DataFrame)


def test_a_worker_ends_with_os_exit_keeping_its_exit_code(monkeypatch) -> None:
    """In a multi-process job the entry point ends each worker with os._exit (skipping the interpreter teardown
    that can abort a finished gloo worker) and keeps the exit code the command chose; outside a job it
    returns or raises SystemExit as before."""
    import pytest

    from mrdib_cli.cli import app as app_mod
    from mrdib_cli import launch as distributed

    exits: list[int] = []

    class _Exited(Exception):
        pass

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise _Exited

    monkeypatch.setattr(app_mod.os, "_exit", fake_exit)
    for world, outcome, want in (("2", None, 0), ("2", 3, 3), ("1", None, None), ("1", 3, 3)):
        monkeypatch.setenv("WORLD_SIZE", world)

        def run(argv, outcome=outcome):
            if outcome is not None:
                raise SystemExit(outcome)

        monkeypatch.setattr(app_mod, "_run", run)
        exits.clear()
        if world == "2":
            with pytest.raises(_Exited):
                app_mod.main([])
            assert exits == [want] and distributed.launched()
        elif outcome is None:
            assert app_mod.main([]) is None and not exits
        else:
            with pytest.raises(SystemExit) as e:
                app_mod.main([])
            assert e.value.code == want and not exits


def test_each_rank_gets_its_share_of_the_step_node_budget():
    """The node budget is the step's, like the batch: with N ranks each slice gets budget / N (rounded up),
    so that N ranks together read about the nodes one process reads; no budget stays no budget. The step
    knows its rank count (LGMRec's uniform samples are split the same way)."""
    from types import SimpleNamespace

    import torch

    from mrdib_cli.training.distributed import DistributedTrainer

    def share(budget: int, world: int, minibatch: str = "sampled"):
        t = object.__new__(DistributedTrainer)  # the method reads only the configuration and the world size
        t.cfg, t.world = SimpleNamespace(train=SimpleNamespace(minibatch=minibatch, fanout=[10], node_budget=budget)), world
        mb = t._minibatch(torch.Generator())
        return None if mb is None else (mb.node_budget, mb.ranks)

    assert share(8192, 2) == (4096, 2) and share(8192, 3) == (2731, 3) and share(8192, 1) == (8192, 1)
    assert share(0, 4) == (0, 4) and share(1, 4) == (1, 4)
    assert share(8192, 2, "full") is None


def test_ctrl_c_on_the_launcher_is_an_interrupt(monkeypatch):
    """torchrun's agent turns a Ctrl-C into its own SignalException; the launcher hands it on as the interrupt a
    one-process run gets (the CLI prints "interrupted" and exits 130), and another signal as a one-line error."""
    import signal

    import torch.distributed.run as run_mod
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from mrdib_cli import launch
    from mrdib_cli.errors import MrdibError

    def stopped(sig):
        def run(args):
            raise SignalException(f"Process 1 got signal: {int(sig)}", sig)
        return run

    monkeypatch.setattr(run_mod, "run", stopped(signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        launch.launch(2, ["train"])
    monkeypatch.setattr(run_mod, "run", stopped(signal.SIGTERM))
    with pytest.raises(MrdibError) as e:
        launch.launch(2, ["train"])
    assert e.value.exit_code == 128 + signal.SIGTERM and "SIGTERM" in str(e.value)


def test_a_worker_killed_by_a_signal_is_named(monkeypatch, tmp_path):
    """A worker killed outright (SIGKILL: out of memory, a scheduler) writes no error of its own; the launcher
    names it in one line with exit code 128 + signal instead of ending the job without a word."""
    import signal

    import torch.distributed.run as run_mod
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from mrdib_cli import launch
    from mrdib_cli.errors import MrdibError

    def run(args):
        raise ChildFailedError("mrdib_cli", {1: ProcessFailure(1, 4242, -int(signal.SIGKILL), str(tmp_path / "none"))})

    monkeypatch.setattr(run_mod, "run", run)
    with pytest.raises(MrdibError) as e:
        launch.launch(2, ["train"])
    assert e.value.exit_code == 128 + signal.SIGKILL
    assert "rank 1 was killed by SIGKILL" in str(e.value) and "--resume" in str(e.value)


def test_the_agent_logs_nothing_the_workers_already_said(monkeypatch):
    """torchrun's agent modules set their own log level, so silencing only the parent logger left lines such as
    "Received 2 death signal, shutting down workers" on every Ctrl-C."""
    import logging

    import torch.distributed.elastic.agent.server.api  # noqa: F401 - the module that printed the line
    import torch.distributed.run as run_mod

    from mrdib_cli import launch

    monkeypatch.setattr(run_mod, "run", lambda args: None)
    launch.launch(2, ["train"])
    assert logging.getLogger("torch.distributed.elastic.agent.server.api").getEffectiveLevel() == logging.CRITICAL


def test_a_job_on_several_machines_is_asked_for_completely():
    """--nnodes needs the endpoint where the machines meet and the endpoint needs --nnodes: each half alone is
    refused in one line, before anything starts."""
    from mrdib_cli.errors import UsageError
    from mrdib_cli.launch import wants_launch

    assert wants_launch(None, 1, None) is False and wants_launch(1, 1, None) is False
    assert wants_launch(2, 1, None) is True and wants_launch(None, 2, "node01:29400") is True
    with pytest.raises(UsageError, match="--nnodes needs --rdzv-endpoint"):
        wants_launch(2, 2, None)
    with pytest.raises(UsageError, match="add --nnodes"):
        wants_launch(2, 1, "node01:29400")
    assert wants_launch(None, 2, "[::1]:29400") is True
    for bad in ("node01", "node01:port", ":29400", "node01:0", "node01:70000", "node01:029400",
                "node01:\u0662\u0669\u0664\u0660\u0660"):  # a leading zero; digits that are not ASCII
        with pytest.raises(UsageError, match="HOST:PORT"):
            wants_launch(1, 2, bad)


def test_the_launcher_hands_torchrun_the_rendezvous_and_not_its_own_options(monkeypatch):
    """Several machines: c10d rendezvous at the endpoint, the job's timeout for the meeting; the workers' command
    line keeps no launch option (a worker must not launch again)."""
    import torch.distributed.run as run_mod

    from mrdib_cli import launch

    seen = []
    monkeypatch.setattr(run_mod, "run", seen.append)
    monkeypatch.setattr(launch, "_wait_for_endpoint", lambda endpoint: None)
    argv = ["train", "-b", "lightgcn", "--nproc", "4", "--nnodes=2", "--rdzv-endpoint", "node01:29400", "--resume"]
    assert launch.launch(4, argv, nnodes=2, endpoint="node01:29400") == 0
    args = seen[0]
    assert (args.nnodes, args.nproc_per_node, args.rdzv_backend) == ("2", "4", "c10d")
    assert args.rdzv_endpoint == "node01:29400"
    assert not args.standalone and args.rdzv_conf == "join_timeout=1800,read_timeout=1800"
    assert args.training_script_args == ["train", "-b", "lightgcn", "--resume"]
    assert launch.launch(2, ["train", "--nproc", "2"]) == 0
    assert seen[1].standalone and seen[1].training_script_args == ["train"]


def test_a_machine_waits_for_the_endpoint_and_gives_up_in_one_line(monkeypatch):
    """Another machine's endpoint: the launcher waits until something answers there (the first machine may start
    later), and after the timeout refuses in one line instead of torch's retries with a stack trace each."""
    import socket
    from datetime import timedelta

    from mrdib_cli import launch
    from mrdib_cli.errors import MrdibError

    monkeypatch.setattr(launch, "_is_this_machine", lambda host: False)
    monkeypatch.setattr(launch, "TIMEOUT", timedelta(seconds=1.5))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing answers there
    with pytest.raises(MrdibError, match=f"no launcher answered at 127.0.0.1:{port} within"):
        launch._wait_for_endpoint(f"127.0.0.1:{port}")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        launch._wait_for_endpoint(f"127.0.0.1:{server.getsockname()[1]}")  # answers: returns at once


def test_the_job_timeout_must_be_a_number_of_minutes(monkeypatch):
    from mrdib_cli import launch
    from mrdib_cli.errors import UsageError

    monkeypatch.setenv("MRDIB_DIST_TIMEOUT_MIN", "0.5")
    assert launch._timeout().total_seconds() == 30
    for bad in ("abc", "0", "-3"):
        monkeypatch.setenv("MRDIB_DIST_TIMEOUT_MIN", bad)
        with pytest.raises(UsageError, match="MRDIB_DIST_TIMEOUT_MIN must be a positive number of minutes"):
            launch._timeout()


def test_a_launcher_stopped_before_its_workers_start_says_so_and_cleans_up(monkeypatch, tmp_path):
    """SIGTERM while the launcher waits for the other machines (torchrun has no handler yet): one line and exit
    code 143 as during training, and neither the error folder nor torchrun's log folder is left behind; a
    timeout under a second still gives torchrun whole seconds."""
    import os
    import signal
    import time
    from datetime import timedelta

    import torch.distributed.run as run_mod

    from mrdib_cli import launch
    from mrdib_cli.errors import MrdibError

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(launch.tempfile, "tempdir", None)
    monkeypatch.setattr(launch, "TIMEOUT", timedelta(seconds=0.2))
    monkeypatch.setattr(launch, "_wait_for_endpoint", lambda endpoint: None)
    seen = []

    def rendezvous(args):
        seen.append(args)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    monkeypatch.setattr(run_mod, "run", rendezvous)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(MrdibError, match="stopped by signal SIGTERM") as e:
        launch.launch(1, ["train"], nnodes=2, endpoint="node01:29400")
    assert e.value.exit_code == 143
    assert seen[0].rdzv_conf == "join_timeout=1,read_timeout=1"
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_lost_rank_is_named_as_such(monkeypatch):
    """In a worker, the errors collectives raise when another rank is gone (gloo's socket errors) become one
    line that says so and points at --resume; the same words outside a job are not touched."""
    from mrdib_cli import launch

    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:17321: "
                        "Connection reset by peer")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not launch.lost_peer(gloo)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launch.lost_peer(gloo)
    assert launch.lost_peer(RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:129] Timed out waiting 30000ms"))
    assert not launch.lost_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert "--resume" in launch.LOST_PEER_MESSAGE


def test_a_machine_without_rank_0_says_what_its_ctrl_c_did(monkeypatch, tmp_path):
    """Ctrl-C on a machine whose workers do not include rank 0: that worker leaves a note, and the launcher,
    stopped by the same Ctrl-C, prints it (exit 130) instead of ending without a word."""
    import signal

    import torch.distributed.run as run_mod
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from mrdib_cli import launch
    from mrdib_cli.errors import MrdibError

    def run(args):
        with open(os.path.join(os.environ[launch.ERRORS_ENV], "1"), "w") as f:
            f.write("interrupted; the job stops on every machine")
        raise SignalException("got signal: 2", signal.SIGINT)

    monkeypatch.setattr(run_mod, "run", run)
    monkeypatch.setattr(launch, "_wait_for_endpoint", lambda endpoint: None)
    with pytest.raises(MrdibError, match="^interrupted; the job stops") as e:
        launch.launch(1, ["train"], nnodes=2, endpoint="127.0.0.1:29400")
    assert e.value.exit_code == 130


def test_only_a_launcher_across_machines_quiets_torchs_cpp_warnings(monkeypatch):
    """torch reads its C++ log level once, at import: a launcher of --nnodes lowers it before (the rendezvous
    store's stack traces when another machine goes away), unless the user chose one; the workers get the
    user's environment back, and learn the launcher's pid (to stop with it)."""
    import torch.distributed.run as run_mod

    from mrdib_cli import job, launch

    for var in ("TORCH_CPP_LOG_LEVEL", job.QUIET_ENV):
        monkeypatch.delenv(var, raising=False)
    job.quiet_store_warnings(["train", "--nproc", "2"])
    job.quiet_store_warnings(["train", "--nnodes", "1"])  # one machine: nothing to quiet
    assert "TORCH_CPP_LOG_LEVEL" not in os.environ
    job.quiet_store_warnings(["train", "--nnodes=2", "--rdzv-endpoint", "h:1"])
    assert os.environ["TORCH_CPP_LOG_LEVEL"] == "ERROR"
    seen = []
    monkeypatch.setattr(run_mod, "run", lambda args: seen.append(dict(os.environ)))
    monkeypatch.setattr(launch, "_wait_for_endpoint", lambda endpoint: None)
    launch.launch(1, ["train"], nnodes=2, endpoint="h:1")
    assert "TORCH_CPP_LOG_LEVEL" not in seen[0] and seen[0][job.LAUNCHER_ENV] == str(os.getpid())
    assert "TORCH_CPP_LOG_LEVEL" not in os.environ and job.LAUNCHER_ENV not in os.environ
    monkeypatch.setenv("TORCH_CPP_LOG_LEVEL", "INFO")  # the user's own level stays, also for the workers
    job.quiet_store_warnings(["train", "--nnodes", "2"])
    launch.launch(1, ["train"], nnodes=2, endpoint="h:1")
    assert seen[1]["TORCH_CPP_LOG_LEVEL"] == "INFO" == os.environ["TORCH_CPP_LOG_LEVEL"]


def test_the_launcher_gives_back_the_signal_handlers_torchrun_installed(monkeypatch):
    """torchrun's agent replaces the handlers of SIGINT, SIGTERM, SIGHUP and SIGQUIT once its workers start
    and leaves them installed; a Ctrl-C after the job then raised the agent's SignalException during the
    launcher's exit (a traceback, exit 0 or 1). The launcher restores the handlers it found."""
    import signal

    import torch.distributed.run as run_mod

    from mrdib_cli import launch

    before = {sig: signal.getsignal(sig) for sig in launch._AGENT_SIGNALS}

    def run(args):  # what the agent does when it starts the workers
        for sig in launch._AGENT_SIGNALS:
            signal.signal(sig, lambda signum, frame: None)

    monkeypatch.setattr(run_mod, "run", run)
    assert launch.launch(2, ["train"]) == 0
    assert {sig: signal.getsignal(sig) for sig in launch._AGENT_SIGNALS} == before


def test_a_launcher_removes_the_folders_of_launchers_killed_before_they_could(monkeypatch, tmp_path):
    """A launcher killed with SIGKILL cannot remove its error and log folders; their names carry its process id,
    and the next launcher removes those whose process is gone, never a living launcher's or other files."""
    import subprocess

    import torch.distributed.run as run_mod

    from mrdib_cli import launch

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(launch.tempfile, "tempdir", None)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    orphans = [tmp_path / f"mrdib-launch-{kind}-{dead}-abc123" for kind in ("errors", "agent")]
    kept = [tmp_path / f"mrdib-launch-errors-{os.getpid()}-xyz789", tmp_path / "mrdib-launch-notes",
            tmp_path / "someone-elses"]
    for path in (*orphans, *kept):
        path.mkdir()
    (orphans[0] / "1").write_text("a worker's note")
    seen = []
    monkeypatch.setattr(run_mod, "run", lambda args: seen.append(sorted(p.name for p in tmp_path.iterdir())))
    assert launch.launch(2, ["train"]) == 0
    assert sorted(tmp_path.iterdir()) == sorted(kept)
    # while it ran, its own two folders were there, named with its process id
    own = {kind for kind in ("errors", "agent") for name in set(seen[0]) - {p.name for p in kept}
           if name.startswith(f"mrdib-launch-{kind}-{os.getpid()}-")}
    assert own == {"errors", "agent"}, seen[0]
