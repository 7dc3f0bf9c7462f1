"""Process groups and the torchrun launcher: which rank this process is, and how to start N of them.

Nothing here is a home-made launcher or transport: ``--nproc N`` re-invokes the same command line through
:mod:`torch.distributed.run` (the code behind ``torchrun``), and every worker finds its rank in the
environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...). ``torchrun --nproc-per-node N -m
mrdib_cli train ...`` is therefore the same thing, and multi-node runs only add torchrun's
``--nnodes``/``--rdzv-*`` options (docs/scaling.md). Feature extraction, evaluation and training all use
these helpers, so they sit below all three.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from mrdib_cli.errors import MrdibError, UsageError
from mrdib_cli.job import (ALREADY_SAID, ERRORS_ENV, INTERRUPTED, LAUNCHER_ENV, QUIET_ENV,  # noqa: F401
                           is_main, launched, leave_error, local_rank, local_world_size, node_rank, rank,
                           world_size)
from mrdib_cli.local_channel import SHM_DIR, LocalChannel

T = TypeVar("T")


def _timeout() -> timedelta:
    """How long a rank waits for the others (at a collective, or for the machines of a job to meet):
    ``MRDIB_DIST_TIMEOUT_MIN`` minutes, 30 by default."""
    raw = os.environ.get("MRDIB_DIST_TIMEOUT_MIN", "30")
    try:
        minutes = float(raw)
    except ValueError:
        minutes = -1.0
    if not 0 < minutes < 10**6:
        raise UsageError(f"MRDIB_DIST_TIMEOUT_MIN must be a positive number of minutes (got '{raw}')")
    return timedelta(minutes=minutes)


TIMEOUT = _timeout()


# --------------------------------------------------------------------------------------------- environment
def wants_cuda(device: str) -> bool:
    return device != "cpu" and torch.cuda.is_available() and (device in ("auto", "cuda")
                                                             or device.startswith("cuda"))


def worker_device(device: str) -> str:
    """One CUDA device per local rank (``cuda:LOCAL_RANK``) when CUDA is wanted, else ``cpu``."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but no CUDA device is available (use --device cpu or auto)")
    return f"cuda:{local_rank()}" if wants_cuda(device) else "cpu"


def init(device: str = "auto") -> bool:
    """Join the process group torchrun describes (NCCL for CUDA workers, gloo on CPU); idempotent.

    Returns False (and does nothing) outside a multi-process launch.
    """
    if not launched():
        return False
    if dist.is_initialized():
        return True
    cuda = wants_cuda(device)
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    _same_command()
    return True


#: options whose values may differ between the machines of a job (their hardware)
PER_MACHINE_OPTIONS = ("--threads", "--device")


def _same_command() -> None:
    """Refuse, on every rank, a job whose machines were given different commands: each machine runs its
    own, and two that differ would evaluate or train different runs into one job's shards and merges."""
    argv = sys.argv[1:]
    for option in PER_MACHINE_OPTIONS:
        argv = strip_option(argv, option)
    argvs: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(argvs, argv)
    for r, other in enumerate(argvs):
        if other != argvs[0]:
            raise UsageError(f"the machines were given different commands: rank 0 runs 'mrdib {' '.join(argvs[0])}' "
                             f"and rank {r} 'mrdib {' '.join(other)}'; run the same command on every machine "
                             f"({', '.join(PER_MACHINE_OPTIONS)} may differ)")


def shutdown(sync: bool = False) -> None:
    """Leave the process group. With ``sync`` (the normal end of a job) all ranks first meet at a barrier,
    so no rank tears gloo's connections down while another still has work in flight on them: that race
    aborts the late rank at exit ("terminate called without an active exception"). After a failure the
    barrier is skipped (a dead peer would make it wait until the timeout)."""
    if dist.is_initialized():
        try:
            if sync:
                dist.barrier()
        finally:
            if _channel and _channel[0] is not None:
                _channel[0].close()
            _channel.clear()
            dist.destroy_process_group()


def default_threads() -> int:
    """CPU threads per worker: the machine's cores shared by the processes on this node."""
    return worker_share(local_world_size())


def worker_share(nproc: int | None) -> int:
    """The threads each of ``nproc`` processes on this machine gets unless ``--threads`` says otherwise."""
    return max(1, (os.cpu_count() or 1) // max(1, nproc or 1))


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


_channel: list[LocalChannel | None] = []


def local_channel() -> LocalChannel | None:
    """The job's shared-memory channel (:mod:`mrdib_cli.local_channel`) when every rank runs on this machine's
    CPU (gloo), else None. Built at the first call, which is a collective: every rank calls it at the same point."""
    if not _channel:
        one_node = int(os.environ.get("LOCAL_WORLD_SIZE", "0")) == dist.get_world_size()
        usable = one_node and dist.get_backend() == "gloo" and SHM_DIR.is_dir() and hasattr(os, "mkfifo")
        _channel.append(LocalChannel(dist.get_rank(), dist.get_world_size(), TIMEOUT.total_seconds())
                        if usable else None)
    return _channel[0]


def step_barrier() -> None:
    """A barrier inside a training step: the shared-memory channel's when there is one (a fraction of gloo's CPU)."""
    channel = local_channel()
    if channel is not None:
        channel.barrier()
    else:
        dist.barrier()


#: below this many elements a sum over the ranks goes through an all-gather: gloo's all-reduce of a few floats
#: cost 0.56-0.81 ms of CPU per rank on a 2-core machine, its all-gather 0.28-0.29 ms (equal near 64k floats)
SMALL_SUM = 16384


def sum_across_ranks(t: torch.Tensor) -> None:
    """In-place sum of ``t`` over the ranks, the same bits on every rank.

    Ranks on one machine's CPU sum through the shared-memory channel (:func:`local_channel`). Otherwise, why
    not always ``all_reduce``: the sampled mode sums a few small tensors at every step, and for small
    payloads gloo's all-reduce costs about twice the CPU of an all-gather followed by a local sum (in rank
    order, so every rank gets the same bits)."""
    channel = local_channel()
    if channel is not None and channel.fits(t):
        channel.sum_(t)
        return
    if t.numel() > SMALL_SUM:
        dist.all_reduce(t)
        return
    out = t.new_empty(dist.get_world_size() * t.numel())
    # torch 2.14 renamed all_gather_into_tensor (the old name prints a FutureWarning)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, t.contiguous().view(-1))
    t.copy_(out.view(-1, *t.shape).sum(0))


def rank0_first(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only; every rank gets its (picklable) result, or its error as a UsageError.

    Without this a refusal on rank 0 (existing run folder, changed configuration) would leave the other
    ranks waiting at the next collective until the timeout.
    """
    if not dist.is_initialized():
        return fn()
    shared: list[Any] = [None, None]  # [failure (message, exit code), result]
    error: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            shared[1] = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
            error = e
            shared[0] = (str(e).splitlines()[0] if str(e) else type(e).__name__, int(getattr(e, "exit_code", 1)))
    dist.broadcast_object_list(shared, src=0)
    if error is not None:
        raise error
    if shared[0] is not None:
        raise UsageError(shared[0][0], exit_code=shared[0][1])
    return shared[1]


# --------------------------------------------------------------------------------------------- launcher
def strip_option(argv: Sequence[str], name: str) -> list[str]:
    """``argv`` without ``--name N`` / ``--name=N`` (the workers must not launch again)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == name:
            skip = True
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return out


#: what a stopped job keeps (training writes a checkpoint after every epoch)
CONTINUE_HINT = "a training run continues from its last checkpoint with --resume"
#: the signals whose handlers torchrun's agent replaces
_AGENT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
                       if hasattr(signal, name))


def _stop_by_signal(sig: int, frame: Any) -> None:
    """SIGTERM before torchrun handles signals itself: the same exception its agent raises later."""
    from torch.distributed.elastic.multiprocessing.api import SignalException

    raise SignalException(f"got signal: {sig}", signal.Signals(sig))


_LOST_PEER = re.compile(r"gloo/transport|connection (reset|closed) by peer|broken pipe|remote server shut ?down",
                        re.IGNORECASE)


def lost_peer(e: BaseException) -> bool:
    """Whether a worker's error is the loss of another rank (its process or machine stopped, the network
    failed): what the collectives raise then names a socket or a C++ file, not the cause."""
    if not launched():
        return False
    return type(e).__name__ in ("DistNetworkError", "DistStoreError") or bool(_LOST_PEER.search(str(e)))


#: what a worker says when another rank was lost (see :func:`lost_peer`)
LOST_PEER_MESSAGE = ("lost contact with another rank of the job (its process or machine stopped, or the network "
                     f"failed), so this rank stopped too; {CONTINUE_HINT}")


def _is_this_machine(host: str) -> bool:
    """Whether torchrun will serve the rendezvous store on this machine for ``host``: the same test torch's
    c10d rendezvous makes, so that a machine never waits for a store that it should serve itself (without
    that test, it skips the wait)."""
    try:
        from torch.distributed.elastic.rendezvous.utils import _matches_machine_hostname
    except ImportError:
        return True
    try:
        return bool(_matches_machine_hostname(host))
    except OSError:
        return True


def _wait_for_endpoint(endpoint: str) -> None:
    """Wait until the rendezvous endpoint of another machine accepts connections, then hand over to torchrun,
    or refuse in one line after the timeout. Without it torch retries on its own and prints a C++ stack trace
    at every try."""
    import socket
    import time

    host, _, port = endpoint.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [IPv6]:port
    if _is_this_machine(host):
        return
    deadline = time.monotonic() + TIMEOUT.total_seconds()
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise MrdibError(f"no launcher answered at {endpoint} within {TIMEOUT.total_seconds() / 60:g} min "
                                 f"({e.strerror or e}); start the same command on the machine named there, or "
                                 "give an --rdzv-endpoint every machine reaches", exit_code=1) from None
            time.sleep(1.0)


#: the launcher's temporary folders: mrdib-launch-{errors,agent}-PID-XXXXXXXX
_FOLDER_PREFIX = "mrdib-launch-"


def _remove_orphaned_folders() -> None:
    """Remove the temporary folders of launchers that ended without removing them (killed with SIGKILL): their
    names carry the launcher's process id, and a folder whose process is gone belongs to nobody."""
    for path in Path(tempfile.gettempdir()).glob(f"{_FOLDER_PREFIX}*-*-*"):
        pid = path.name[len(_FOLDER_PREFIX):].split("-")[1]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            if path.stat().st_uid == os.getuid():
                shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _worker_errors(folder: str) -> str | None:
    """The workers' errors as one line: the message once when every failed rank gave the same one."""
    notes = {}
    for name in sorted(os.listdir(folder), key=int):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            notes[int(name)] = f.read()
    said = ALREADY_SAID in notes.values()  # rank 0 told the user how its run stopped: "interrupted" adds nothing
    notes = {r: m for r, m in notes.items() if m != ALREADY_SAID and not (said and m == INTERRUPTED)}
    if not notes:
        return ALREADY_SAID if said else None
    if set(notes.values()) - {LOST_PEER_MESSAGE}:  # the ranks that lost contact lost it with the one that failed
        notes = {r: m for r, m in notes.items() if m != LOST_PEER_MESSAGE}
    if len(set(notes.values())) == 1:
        return next(iter(notes.values()))
    return "; ".join(f"rank {r}: {m}" for r, m in notes.items())


def wants_launch(nproc: int | None, nnodes: int, endpoint: str | None) -> bool:
    """Whether this command line starts a job of several processes (``--nproc``, ``--nnodes``), refusing an
    incomplete multi-machine request in one line."""
    if nnodes > 1 and not endpoint:
        raise UsageError("--nnodes needs --rdzv-endpoint HOST:PORT, an address every machine reaches "
                         "(e.g. the first machine's), given the same on every machine")
    if endpoint and nnodes < 2:
        raise UsageError("--rdzv-endpoint is where the machines of a --nnodes job meet; add --nnodes N (N > 1)")
    host, _, port = (endpoint or "").rpartition(":")
    if endpoint and not (host and re.fullmatch(r"[1-9][0-9]{0,4}", port) and int(port) < 65536):
        raise UsageError(f"--rdzv-endpoint must be HOST:PORT with a port from 1 to 65535 (got '{endpoint}')")
    return not launched() and ((nproc or 1) > 1 or nnodes > 1)


def launch(nproc: int | None, argv: Sequence[str] | None = None, nnodes: int = 1,
           endpoint: str | None = None) -> int:
    """Re-run this command line in ``nproc`` workers on this machine through torch.distributed.run (torchrun).

    One machine: standalone rendezvous (a free port is picked). Several (``nnodes`` > 1): the same command
    runs on every machine, and their launchers meet at ``endpoint`` (torchrun's c10d rendezvous). Returns 0
    on success; when workers fail with one-line errors, raises them as one :class:`MrdibError` with the first
    failed worker's exit code; when a worker was killed by a signal, one line that names it (exit code 128 +
    signal); otherwise returns the failed worker's code (the worker printed its own report).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import get_args_parser, run

    argv = list(sys.argv[1:] if argv is None else argv)
    for option in ("--nproc", "--nnodes", "--rdzv-endpoint"):
        argv = strip_option(argv, option)
    nproc = int(nproc or 1)
    wait_s = max(1, round(TIMEOUT.total_seconds()))  # torchrun takes whole seconds
    meet = ["--standalone"] if nnodes < 2 else [
        f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", "--rdzv-id=mrdib",
        f"--rdzv-conf=join_timeout={wait_s},read_timeout={wait_s}"]
    args = get_args_parser().parse_args([*meet, f"--nproc-per-node={nproc}", "--module", "mrdib_cli"])
    args.training_script_args = argv  # set after parsing: torchrun's parser would take '--run' as its own
    import logging

    # the workers hand their one-line errors to this process (leave_error); the agent's warnings and tracebacks
    # would only repeat them; its modules' loggers carry their own level, so each is set, not only the parent
    for name in ["torch.distributed.elastic", *logging.Logger.manager.loggerDict]:
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    env_threads = os.environ.get("OMP_NUM_THREADS")
    _remove_orphaned_folders()
    folder = tempfile.mkdtemp(prefix=f"{_FOLDER_PREFIX}errors-{os.getpid()}-")
    # torchrun's own log folder, which it would leave behind in /tmp
    args.log_dir = tempfile.mkdtemp(prefix=f"{_FOLDER_PREFIX}agent-{os.getpid()}-")
    os.environ[ERRORS_ENV] = folder
    os.environ[LAUNCHER_ENV] = str(os.getpid())
    # torchrun installs its own handlers once the workers start and leaves them installed: a Ctrl-C after the
    # job (on a machine whose workers ended first) raised its SignalException during this process's exit
    handlers = {sig: signal.getsignal(sig) for sig in _AGENT_SIGNALS}
    # before the workers start, torchrun has no handler of its own: a SIGTERM would end this process without
    # a word and leave the folder above
    signal.signal(signal.SIGTERM, _stop_by_signal)
    try:
        if env_threads is None:  # torchrun would warn and force 1; give each worker its share instead
            os.environ["OMP_NUM_THREADS"] = str(worker_share(nproc))
        if os.environ.pop(QUIET_ENV, None):  # the workers get the user's C++ log level (job.quiet_store_warnings)
            os.environ.pop("TORCH_CPP_LOG_LEVEL", None)
        if nnodes > 1:
            _wait_for_endpoint(str(endpoint))
        run(args)
    except RendezvousError:  # the machines did not all come in time, or the endpoint's launcher went away
        raise MrdibError(f"the {nnodes} machines of the job lost each other at {endpoint}: not every machine came "
                         f"within {TIMEOUT.total_seconds() / 60:g} min (MRDIB_DIST_TIMEOUT_MIN), or the launcher "
                         "there stopped; run the same command on every machine (a training run continues from "
                         "its last checkpoint with --resume)", exit_code=1) from None
    except SignalException as e:  # the agent's own stop: Ctrl-C is an interrupt like a one-process run's
        if e.sigval == signal.SIGINT:
            note = _worker_errors(folder)  # what a machine without rank 0 has to say (cli/train.py)
            if note == ALREADY_SAID:
                return 130
            if note is not None:
                raise MrdibError(note, exit_code=130) from None
            raise KeyboardInterrupt from None
        raise MrdibError(f"stopped by signal {signal.Signals(e.sigval).name}; {CONTINUE_HINT}",
                         exit_code=128 + int(e.sigval)) from None
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values() if f.exitcode]
        code = int(codes[0]) if codes and codes[0] > 0 else 1
        message = _worker_errors(folder)
        if message == ALREADY_SAID:
            return code
        if message is not None:
            raise MrdibError(message, exit_code=code) from None
        # a worker killed by a signal printed nothing: name it, or the job ends without a word. The agent stops
        # the other workers with SIGTERM, so another signal, where there is one, is the cause
        killed = [(f.exitcode == -signal.SIGTERM, f.timestamp, r, f) for r, f in e.failures.items() if f.exitcode < 0]
        if killed:
            _, _, r, f = min(killed)
            raise MrdibError(f"rank {r} was killed by {signal.Signals(-f.exitcode).name} and the other ranks were "
                             f"stopped; {CONTINUE_HINT}",
                             exit_code=128 - f.exitcode) from None
        return code
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        os.environ.pop(ERRORS_ENV, None)
        os.environ.pop(LAUNCHER_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(args.log_dir, ignore_errors=True)
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
    return 0


# --------------------------------------------------------------------------------------------- training


def slice_bounds(n: int, r: int, world: int) -> tuple[int, int]:
    """Rank ``r``'s contiguous share of ``n`` rows (sizes differ by at most one, as np.array_split)."""
    base, extra = divmod(n, world)
    lo = r * base + min(r, extra)
    return lo, lo + base + (1 if r < extra else 0)
