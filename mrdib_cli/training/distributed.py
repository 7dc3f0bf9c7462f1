"""Scale-out on PyTorch's own ``torch.distributed``: process groups, the torchrun launcher, DDP training.

Nothing here is a home-made launcher or transport: ``mrdib train --nproc N`` re-invokes the same command
line through :mod:`torch.distributed.run` (the code behind ``torchrun``), and every worker finds its rank
in the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...). ``torchrun
--nproc-per-node N -m mrdib_cli train ...`` is therefore the same thing, and multi-node runs only add
torchrun's ``--nnodes``/``--rdzv-*`` options (docs/scaling.md).

Training (:class:`DistributedTrainer`) is data-parallel over the BPR batches:

* every rank holds the full model and replicates the full-graph propagation (graph convolutions need all
  nodes; only the batch loss and the backward through it are split);
* every rank runs the *same* run-seeded sampler, so each global batch (permutation and negatives) is the
  one a single-process run draws; rank ``r`` keeps the ``r``-th contiguous slice of it. Negatives are thus
  reproducible and independent of the number of processes, and ``--resume`` may even change ``--nproc``;
* each rank's loss is weighted by ``world * n_r / n`` so that DDP's gradient *average* equals the gradient
  of the global batch mean: the update is the single-process one up to float reduction order and the
  terms that do not split over a batch (MMRec's ``EmbLoss`` is a sum of non-squared norms / batch size;
  in-batch contrastive terms see only the rank's slice);
* validation and the final test are sharded over users (:mod:`mrdib_cli.evaluation.sharded`) and merged on
  every rank, so early stopping decides identically everywhere;
* only rank 0 writes the run folder (config, metrics.jsonl, checkpoints, embeddings, results).

NCCL is used when the workers train on CUDA devices (one per local rank), gloo on CPU.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mrdib_cli.errors import UsageError
from mrdib_cli.models._common import batch_split_across_ranks
from mrdib_cli.models.base import Batch
from mrdib_cli.training.plugin import forward_terms
from mrdib_cli.training.trainer import TrainingDiverged, Trainer, TrainResult

T = TypeVar("T")

TIMEOUT = timedelta(minutes=int(os.environ.get("MRDIB_DIST_TIMEOUT_MIN", "30")))


# --------------------------------------------------------------------------------------------- environment
def world_size() -> int:
    """Processes in the job: torchrun's WORLD_SIZE (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size())) or 1)


def launched() -> bool:
    """True inside a worker started by torchrun (or ``--nproc``) with more than one process."""
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


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
    return True


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
            dist.destroy_process_group()


def default_threads() -> int:
    """CPU threads per worker: the machine's cores shared by the processes on this node."""
    return max(1, (os.cpu_count() or 1) // max(1, local_world_size()))


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


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


def launch(nproc: int, argv: Sequence[str] | None = None) -> int:
    """Re-run this command line in ``nproc`` local workers through torch.distributed.run (torchrun).

    Standalone rendezvous on this machine (a free port is picked); for several machines run torchrun
    directly (docs/scaling.md). Returns the exit code of the first failed worker, 0 on success; the workers
    print their own one-line errors.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    argv = strip_option(list(sys.argv[1:] if argv is None else argv), "--nproc")
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={int(nproc)}",
                                         "--module", "mrdib_cli"])
    args.training_script_args = argv  # set after parsing: torchrun's parser would take '--run' as its own
    import logging

    # the workers print their own one-line errors; the agent's warnings/tracebacks would only repeat them
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    env_threads = os.environ.get("OMP_NUM_THREADS")
    try:
        if env_threads is None:  # torchrun would warn and force 1; give each worker its share instead
            os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
        run(args)
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values() if f.exitcode]
        return int(codes[0]) if codes and codes[0] > 0 else 1
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
    return 0


# --------------------------------------------------------------------------------------------- training
class _Step(nn.Module):
    """The DDP-wrapped unit: full propagation plus the (backbone + plug-in) loss of one batch slice.

    DDP synchronises gradients of whatever ``forward`` touches, so the forward must contain the whole
    differentiable step. The embeddings are kept on the module (not returned) for ``after_step``.
    """

    def __init__(self, backbone: nn.Module, plugin: nn.Module | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.plugin = plugin
        self.last_emb: Any = None

    def forward(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None,
                contributes: bool = True) -> dict[str, Any]:
        with batch_split_across_ranks(contributes):  # batch-level norms over the global batch, not the slice
            emb, terms = forward_terms(self.backbone, self.plugin, Batch(users, pos, neg))
        self.last_emb = emb
        return terms


class _NoLock(contextlib.ExitStack):
    """The run-lock stack of ranks other than 0: the job's lock is rank 0's, a second one would refuse."""

    def enter_context(self, cm: Any) -> Any:  # type: ignore[override]
        return None


def slice_bounds(n: int, r: int, world: int) -> tuple[int, int]:
    """Rank ``r``'s contiguous share of ``n`` rows (sizes differ by at most one, as np.array_split)."""
    base, extra = divmod(n, world)
    lo = r * base + min(r, extra)
    return lo, lo + base + (1 if r < extra else 0)


class DistributedTrainer(Trainer):
    """:class:`Trainer` for one rank of a torchrun job (see the module docstring for the scheme)."""

    def __init__(self, ws: Any, cfg: Any, **kwargs: Any) -> None:
        from dataclasses import replace

        tc = cfg.train
        init(tc.device)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        # this rank's own copy: its device, and its share of the cores when none were given
        cfg = replace(cfg, train=replace(tc, device=worker_device(tc.device), threads=tc.threads or default_threads()))
        if self.rank != 0:  # one voice: progress, epoch lines and notices come from rank 0
            kwargs = {**kwargs, "on_epoch": None, "on_info": None, "on_warn": None, "progress": None}
        self._collective = True
        if not cfg.run_name:  # the default name has a timestamp: take rank 0's, not one per rank
            from mrdib_cli.data.handle import DatasetHandle
            from mrdib_cli.models.base import get_backbone
            from mrdib_cli.training.trainer import default_run_name

            from mrdib_cli.training.resolve import with_run_name

            cfg = with_run_name(cfg, rank0_first(lambda: default_run_name(get_backbone(cfg.backbone).name,
                                                                          DatasetHandle.open(ws, cfg.dataset).name)))
        super().__init__(ws, cfg, **kwargs)
        with warnings.catch_warnings():  # torch 2.14 renames broadcast_buffers; the old flag still skips init sync
            warnings.simplefilter("ignore", FutureWarning)
            self.ddp = nn.parallel.DistributedDataParallel(
                _Step(self.backbone, self.plugin),
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,  # buffers (graphs, frozen features) are built identically per rank
                # plug-ins (e.g. MRdIB's critics) own parameters that the batch loss does not touch
                find_unused_parameters=self.plugin is not None)

    # ------------------------------------------------------------------ run folder: rank 0 writes
    def _setup(self, ws: Any, cfg: Any, **kwargs: Any) -> None:
        if self.rank != 0:  # rank 0 holds the run's lock for the whole job
            self._lock = _NoLock()
        super()._setup(ws, cfg, **kwargs)

    def _prepare_run_dir(self, resume: bool, overwrite: bool) -> Any:
        out = rank0_first(lambda: super(DistributedTrainer, self)._prepare_run_dir(resume, overwrite))
        barrier()
        return out

    def _write_config(self) -> None:
        rank0_first(lambda: super(DistributedTrainer, self)._write_config())

    def _config_dict(self) -> dict[str, Any]:
        conf = super()._config_dict()
        conf["distributed"] = {"world_size": self.world, "backend": dist.get_backend(),
                               "scheme": "DDP over slices of each global batch; sampler seeded by the run seed"}
        return conf

    def _atomic_text(self, path: Any, text: str) -> None:  # type: ignore[override]
        if self.rank == 0:
            Trainer._atomic_text(path, text)

    def _append_metrics(self, rec: Any) -> None:
        if self.rank == 0:
            super()._append_metrics(rec)

    def _save_best(self, user: np.ndarray, item: np.ndarray) -> None:
        if self.rank == 0:
            super()._save_best(user, item)

    def _save_last(self) -> None:
        if self.rank == 0:
            super()._save_last()

    # ------------------------------------------------------------------ one epoch
    def _train_epoch(self) -> dict[str, float]:
        self.backbone.train()
        if self.plugin:
            self.plugin.train()
        gen = torch.Generator().manual_seed(int(self.sampler.rng.integers(2**62)))
        if hasattr(self, "_apply_lr_schedule"):
            self._apply_lr_schedule()
        self.backbone.pre_epoch(self.epoch, gen)
        names: list[str] = []
        sums: dict[str, torch.Tensor] = {}
        n_steps = 0
        task = self.progress(len(self.sampler)) if self.progress else None
        for batch in self.sampler.epoch():  # the global batch: identical on every rank
            n = len(batch.users)
            lo, hi = slice_bounds(n, self.rank, self.world)
            weight = self.world * (hi - lo) / n
            if hi == lo:  # a tail batch smaller than the world: take part with a zero-weight row
                lo, hi = 0, 1
            part = Batch(batch.users[lo:hi], batch.pos[lo:hi],
                         None if batch.neg is None else batch.neg[lo:hi]).to(self.device)
            terms = self.ddp(part.users, part.pos, part.neg, weight > 0)
            loss = sum(terms.values()) * weight
            check = loss.detach().clone()
            dist.all_reduce(check)  # the global batch loss; non-finite on one rank = on all ranks
            if not torch.isfinite(check):
                raise TrainingDiverged.at(self.epoch, terms, where=f"rank {self.rank}: ")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            share = weight / self.world  # n_r / n: rank shares of a term add up to its global-batch mean
            if self.plugin:
                self.plugin.after_step(part, self.ddp.module.last_emb)
                for k, v in self.plugin.logs.items():
                    self._acc(sums, names, k, float(v) * share)
            for k, v in terms.items():
                self._acc(sums, names, k, float(v.detach()) * share)
            # this rank's share of the global batch loss, like every term (``check`` is already the sum over
            # ranks, and _reduce_logs sums again)
            self._acc(sums, names, "total", float(loss.detach()) / self.world)
            n_steps += 1
            self.ddp.module.last_emb = None
            if task:
                task()
        return self._reduce_logs(sums, names, n_steps)

    @staticmethod
    def _acc(sums: dict[str, Any], names: list[str], k: str, v: float) -> None:
        if k not in sums:
            names.append(k)
            sums[k] = 0.0
        sums[k] += v

    def _reduce_logs(self, sums: dict[str, Any], names: list[str], n_steps: int) -> dict[str, float]:
        """Epoch means of the loss terms over the global batches (one all-reduce per epoch)."""
        vec = torch.tensor([sums[k] for k in names], dtype=torch.float64)
        dev = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        vec = vec.to(dev)
        dist.all_reduce(vec)
        out = (vec.cpu() / max(n_steps, 1)).tolist()
        return dict(zip(names, out))

    # ------------------------------------------------------------------ evaluation: sharded over users
    def _evaluate(self, u: np.ndarray, i: np.ndarray, split: str):
        if not self._collective:  # after Ctrl-C the ranks are out of step: rank 0 evaluates alone
            return super()._evaluate(u, i, split)
        from mrdib_cli.evaluation.sharded import evaluate_split_distributed

        tc = self.cfg.train
        mask = "train" if split == "valid" else tc.test_mask
        return evaluate_split_distributed(self.handle, u, i, split, mask=mask, ks=tuple(tc.ks),
                                          batch_users=tc.eval_batch_users)

    def _finish(self, status: str, message: str) -> TrainResult:
        self._collective = status != "stopped"
        if self.rank == 0:
            return super()._finish(status, message)
        if self.best_emb is not None and self._collective:
            self._evaluate(*self.best_emb, "test")  # this rank's share of the collective test evaluation
        return TrainResult(self.run_name, self.run_dir, status, self.stopper.best_epoch, self.epoch,
                           self.best_valid, {}, message, self.history)
