"""Data-parallel training on PyTorch's own ``torch.distributed`` (DDP); ranks and the launcher are in
:mod:`mrdib_cli.launch`.

Training (:class:`DistributedTrainer`) is data-parallel over the BPR batches:

* every rank holds the full model and replicates the full-graph propagation (graph convolutions need all
  nodes; only the batch loss and the backward through it are split);
* every rank runs the *same* run-seeded sampler, so each global batch (permutation and negatives) is the
  one a single-process run draws; rank ``r`` keeps the ``r``-th contiguous slice of it. Negatives are thus
  reproducible and independent of the number of processes, and ``--resume`` may even change ``--nproc``;
* each rank's loss is weighted by ``world * n_r / n`` so that DDP's gradient *average* equals the gradient
  of the global batch mean (a term that sums over the batch, ``Backbone.batch_sum_terms``, by ``world``: the
  average is then the global sum): the update is the single-process one up to float reduction order and the
  terms that do not split over a batch (MMRec's ``EmbLoss`` is a sum of non-squared norms / batch size;
  in-batch contrastive terms see only the rank's slice);
* validation and the final test are sharded over users (:mod:`mrdib_cli.evaluation.sharded`) and merged on
  every rank, so early stopping decides identically everywhere;
* only rank 0 writes the run folder (config, metrics.jsonl, checkpoints, embeddings, results).

NCCL is used when the workers train on CUDA devices (one per local rank), gloo on CPU.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mrdib_cli.errors import UsageError
from mrdib_cli.launch import barrier, default_threads, init, rank0_first, slice_bounds, worker_device
from mrdib_cli.models._common import batch_split_across_ranks
from mrdib_cli.models.base import Batch, MiniBatch
from mrdib_cli.training import checkpoint as ckpt
from mrdib_cli.training.plugin import forward_terms
from mrdib_cli.training.row_exchange import RowExchange, gather_block, make_exchange, owned_block
from mrdib_cli.training.trainer import TrainingDiverged, Trainer, TrainResult
from mrdib_cli.workspace import first_difference, value_at

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
                contributes: bool = True, minibatch: Any = None) -> dict[str, Any]:
        with batch_split_across_ranks(contributes):  # batch-level norms over the global batch, not the slice
            emb, terms = forward_terms(self.backbone, self.plugin, Batch(users, pos, neg), minibatch)
        self.last_emb = emb
        return terms


class _NoLock(contextlib.ExitStack):
    """The run-lock stack of ranks other than 0: the job's lock is rank 0's, a second one would refuse."""

    def enter_context(self, cm: Any) -> Any:  # type: ignore[override]
        return None


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
        self._same_everywhere(cfg, kwargs)
        super().__init__(ws, cfg, **kwargs)
        with warnings.catch_warnings():  # torch 2.14 renames broadcast_buffers; the old flag still skips init sync
            warnings.simplefilter("ignore", FutureWarning)
            self.step = step = _Step(self.backbone, self.plugin)
            # sampled mode: the tables' gradients are sparse, which DDP would send dense; the row exchange
            # (mrdib_cli.training.row_exchange) averages them (every rank built the same initial parameters)
            self.ddp = step if cfg.train.minibatch == "sampled" else nn.parallel.DistributedDataParallel(
                step,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,  # buffers (graphs, frozen features) are built identically per rank
                # plug-ins (e.g. MRdIB's critics) own parameters that the batch loss does not touch
                find_unused_parameters=self.plugin is not None)

    def _same_everywhere(self, cfg: Any, kwargs: dict[str, Any]) -> None:
        """Refuse, on every rank, a job whose machines were given different runs: each machine resolves its
        own command line, and two of them that differ (another run name, backbone, epoch count) would train
        another run silently or stop in a collective of another size. The device and the thread count may
        differ per machine."""
        conf = cfg.to_dict()
        conf["train"] = {k: v for k, v in conf["train"].items() if k not in ("device", "threads")}
        conf["resume"], conf["force"] = bool(kwargs.get("resume")), bool(kwargs.get("overwrite"))
        confs: list[Any] = [None] * self.world
        dist.all_gather_object(confs, conf)
        for r, other in enumerate(confs):
            if other != confs[0]:
                key = first_difference(confs[0], other)
                raise UsageError(f"the ranks were started with different runs: {key} is {value_at(confs[0], key)} "
                                 f"on rank 0 and {value_at(other, key)} on rank {r}; run the same command on every "
                                 "machine")

    # ------------------------------------------------------------------ run folder: rank 0 writes (RunFolder)
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

    # ------------------------------------------------------------------ one epoch
    def _minibatch(self, generator: torch.Generator) -> MiniBatch | None:
        """The sampled mode's settings for this rank's slice. The node budget and the samples drawn once per
        step are the step's, like the batch: each rank gets its share (rounded up), so that N ranks read about
        the nodes one process reads."""
        mb = super()._minibatch(generator)
        if mb is None:
            return mb
        mb = replace(mb, ranks=self.world)
        return replace(mb, node_budget=mb.share(mb.node_budget))

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
        # sampled mode: each rank samples the neighbourhoods of its own slice only (its own stream)
        minibatch = self._minibatch(torch.Generator().manual_seed(int(gen.initial_seed()) + self.rank))
        rows = self._rows() if minibatch is not None else None  # before the first forward: it may read through it
        if rows is not None:
            rows.release()  # the last epoch's evaluation and checkpoint read whole tables; steps read the blocks
        for batch in self.sampler.epoch():  # the global batch: identical on every rank
            n = len(batch.users)
            lo, hi = slice_bounds(n, self.rank, self.world)
            weight = self.world * (hi - lo) / n
            if hi == lo:  # a tail batch smaller than the world: take part with a zero-weight row
                lo, hi = 0, 1
            part = Batch(batch.users[lo:hi], batch.pos[lo:hi],
                         None if batch.neg is None else batch.neg[lo:hi]).to(self.device)
            if rows is not None:
                rows.begin_step()
            terms = self.ddp(part.users, part.pos, part.neg, weight > 0, minibatch)
            loss = self._rank_loss(terms, weight)
            if minibatch is None:
                check = loss.detach().clone()
                dist.all_reduce(check)  # the global batch loss; non-finite on one rank = on all ranks
                if not torch.isfinite(check):
                    raise TrainingDiverged.at(self.epoch, terms, where=f"rank {self.rank}: ")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()  # DDP averages the gradients during the backward
            else:  # the loss check travels with the gradients (nothing is applied before it)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if not math.isfinite(rows.reduce(self._dense_params(), loss.detach())):
                    raise TrainingDiverged.at(self.epoch, terms, where=f"rank {self.rank}: ")
            self.optimizer.step()
            if rows is not None:
                rows.publish()
            share = weight / self.world  # n_r / n: rank shares of a term add up to its global-batch mean
            if self.plugin:
                self.plugin.after_step(part, self.step.last_emb)
                for k, v in self.plugin.logs.items():
                    self._acc(sums, names, k, float(v) * share)
            for k, v in terms.items():  # a batch sum's shares add up as they are
                self._acc(sums, names, k, float(v.detach()) * (float(weight > 0) if k in self._sum_terms else share))
            # this rank's share of the global batch loss, like every term (``check`` is already the sum over
            # ranks, and _reduce_logs sums again)
            self._acc(sums, names, "total", float(loss.detach()) / self.world)
            n_steps += 1
            self.step.last_emb = None
            if task:
                task()
        return self._reduce_logs(sums, names, n_steps)

    @property
    def _sum_terms(self) -> tuple[str, ...]:
        return getattr(self.backbone, "batch_sum_terms", ())

    def _rank_loss(self, terms: dict[str, Any], weight: float) -> Any:
        """This rank's part of the global batch loss, for gradients that are averaged over the ranks: a term that
        averages over the batch weighted by world × n_r / n (the average is then the global batch mean); a term
        that sums over it (``Backbone.batch_sum_terms``) by world (the average is then the global sum). A
        weight of 1 for both would divide a sum term's weight by the number of ranks."""
        means = [v for k, v in terms.items() if k not in self._sum_terms]
        loss = sum(means) * weight
        batch_sums = [v for k, v in terms.items() if k in self._sum_terms]
        if batch_sums:
            loss = loss + sum(batch_sums) * (self.world if weight > 0 else 0.0)
        return loss

    def _job_cpu_s(self, seconds: float) -> float:
        """The epoch's training CPU seconds summed over the ranks (does scale-out add work?)."""
        total = torch.tensor([seconds], dtype=torch.float64)
        dist.all_reduce(total)
        return float(total)

    def _rows(self) -> RowExchange:
        """Sampled mode's exchange of the tables' rows (built at the first epoch, after any resume). Sharded
        tables leave each rank its own block, whose rows the lazy Adam then numbers from 0."""
        if getattr(self, "_exchange", None) is None:
            self._exchange = make_exchange(self.backbone.sparse_parameters(), self.rank, self.world)
            if self._exchange.sharded:
                for o in self._row_adams():
                    for p in (p for g in o.param_groups for p in g["params"]):
                        o.keep_rows(p, 0, len(p))
                self.backbone.register_state_dict_pre_hook(self._refuse_blocks)
        return self._exchange

    def _refuse_blocks(self, *_: Any) -> None:
        """A saved model must hold whole tables: a state read while each rank holds its block would write
        a model of the rank's rows only, which loads nowhere."""
        if not self._exchange.whole:
            raise RuntimeError("the model's state was read while its tables are sharded; call _whole_tables() "
                               "first")

    def _whole_tables(self) -> None:
        """Whole tables on every rank until the next epoch's training (a collective when they are sharded)."""
        if getattr(self, "_exchange", None) is not None:
            self._exchange.assemble()

    def _eval_embeddings(self) -> Any:
        self._whole_tables()
        return super()._eval_embeddings()

    def _best_unit(self, user: np.ndarray, item: np.ndarray) -> dict[str, Any]:
        self._whole_tables()
        return super()._best_unit(user, item)

    def _dense_params(self) -> list[nn.Parameter]:
        """Every trained parameter but the sparse tables (averaged over the ranks, updated everywhere)."""
        tables = {id(p) for p in self.backbone.sparse_parameters().values()}
        return [p for p in [*self.backbone.parameters(), *(self.plugin.parameters() if self.plugin else ())]
                if p.requires_grad and id(p) not in tables]

    def _make_optimizer(self) -> torch.optim.Optimizer:
        """The one-process optimiser; in the sampled mode each rank keeps the lazy Adam's moments of the rows
        it owns only (row_exchange.owned_block), so the moments are sharded over the ranks, not replicated."""
        optimizer = super()._make_optimizer()
        self._own_moments(optimizer)
        return optimizer

    def _own_moments(self, optimizer: torch.optim.Optimizer) -> None:
        for o in self._row_adams(optimizer):
            for p in (p for g in o.param_groups for p in g["params"]):
                o.keep_rows(p, *owned_block(len(p), self.rank, self.world))

    def _row_adams(self, optimizer: torch.optim.Optimizer | None = None) -> list[Any]:
        from mrdib_cli.training.trainer import RowAdam

        return [o for o in getattr(optimizer or self.optimizer, "parts", []) if isinstance(o, RowAdam)]

    def _state(self) -> dict[str, Any]:
        """The checkpoint, with the lazy Adam's moments of every row gathered from their owners on rank 0 (the
        writer) and every rank's RNG states (every rank calls this: a collective)."""
        self._whole_tables()  # sharded tables: whole in the checkpoint, and numbered as in it
        st = super()._state()
        parts = st["optimizer"].get("parts", []) if isinstance(st["optimizer"], dict) else []
        for k, o in enumerate(self._row_adams()):
            packed = parts[k]["state"]
            params = [p for g in o.param_groups for p in g["params"]]
            for key, moments in list(packed.items()):
                gathered = dict(moments)  # a new dict: the packed one is the optimiser's live state
                for name in ("exp_avg", "exp_avg_sq"):
                    gathered[name] = gather_block(moments[name], len(params[key]), self.rank, self.world)
                packed[key] = gathered
        # every rank's global RNG states: the ranks draw different amounts (dropout on slices of different
        # sizes), so rank 0's state alone would resume the other ranks on another stream
        states: list[Any] = [None] * self.world
        dist.all_gather_object(states, ckpt.rng_state())
        st["rank_rng"] = states
        return st

    def _restore_rng(self, st: dict[str, Any]) -> None:
        """This rank's own RNG states; with another number of ranks than the checkpoint's (or a checkpoint
        from before they were kept), rank 0's, as a one-process run would resume."""
        ranks = st.get("rank_rng")
        if ranks and len(ranks) == self.world:
            ckpt.set_rng_state(ranks[self.rank])
        else:
            super()._restore_rng(st)

    def _restore(self) -> None:
        super()._restore()
        self._own_moments(self.optimizer)  # the checkpoint has every row's moments: keep the owned ones

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
        if self.rank != 0 and not self._collective:  # after Ctrl-C only rank 0 evaluates the test split
            return TrainResult(self.run_name, self.run_dir, status, self.stopper.best_epoch, self.epoch,
                               self.best_valid, {}, message, self.history)
        return super()._finish(status, message)  # the test evaluation is collective; rank 0's folder writes
