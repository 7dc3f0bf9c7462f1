"""The training engine: BPR epochs, validation every epoch, early stopping, checkpoints, resume.

One epoch (MMRec's loop, minus its test-set peeking)::

    backbone.pre_epoch(epoch, generator)
    for batch in sampler.epoch():            # reshuffled interactions, vectorised negatives
        plugin.before_step(batch)            # (with a plug-in)
        emb   = backbone.propagate()         # full-graph forward, as the reference does per batch
        terms = backbone.loss(batch, emb) (+ plugin.loss(batch, emb))
        Adam step on sum(terms); plugin.after_step(batch, emb)
    valid = evaluate_split(handle, *backbone.embeddings_for_eval(), "valid")
    early stopping on round(valid[valid_metric], 4), strictly greater, patience 20
    checkpoint (atomic): last.pt every epoch, best.pt + embeddings.npz when the best improves

Test is evaluated **once**, on the best-validation embeddings, after training ends (finished, early-stopped
or interrupted with Ctrl-C). A non-finite loss stops the run with a clear message; the last good checkpoint
stays. ``resume=True`` restores every RNG and the sampler state from ``last.pt``, so a resumed run ends with
exactly the metrics of an uninterrupted one on CPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.deterministic

from mrdib_cli import __version__
from mrdib_cli.cpu import auto_threads, choose_threads
from mrdib_cli.defaults import LATER_TRAIN_DEFAULTS
from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.errors import DataError, MrdibError, UsageError
from mrdib_cli.ids import IdTable, touched_rows
from mrdib_cli.job import Terminated, stop_exit_code
from mrdib_cli.models.base import Backbone, MiniBatch, get_backbone
from mrdib_cli.provenance import code_version, identity_fields, run_identity
from mrdib_cli.training import checkpoint as ckpt
from mrdib_cli.training.resolve import RunConfig, check_run, named
from mrdib_cli.training.run_folder import RunFolder
from mrdib_cli.training.plugin import Plugin, create_plugin, forward_terms
from mrdib_cli.training.sampler import BPRSampler
from mrdib_cli.workspace import (TMP_PREFIX, Workspace, check_name, digest_obj, file_lock, first_difference,
                                 read_json, value_at)


def run_exists(run_name: str) -> UsageError:
    """The refusal of a new run under a name another run has."""
    return UsageError(f"run '{run_name}' already exists; use --resume to continue it, --force to overwrite it, "
                      "or choose another --run-name")


def check_same_run(run_name: str, stored: dict[str, Any], conf: dict[str, Any]) -> None:
    """Refuse to continue run ``run_name`` (its ``config.json`` is ``stored``) with other options or data."""
    if stored.get("dataset") and conf.get("dataset") and stored["dataset"] != conf["dataset"]:
        raise UsageError(f"run '{run_name}' was started on dataset '{stored['dataset']}', not "
                         f"'{conf['dataset']}'; resume it without -d, or start a new --run-name")
    was, now = identity_fields(stored), identity_fields(conf)
    if digest_obj(was) != digest_obj(now):
        raise UsageError(f"run '{run_name}' was started with a different configuration "
                         f"({_what_changed(was, now)}); "
                         "resume it with the same inputs and options, start it over with --force, or "
                         "start a new --run-name")


def check_epoch_cap(run_name: str, trained: int, cfg: RunConfig) -> None:
    """Refuse to resume a run past its epoch cap: its results would claim a cap its epochs went beyond."""
    if trained > cfg.train.epochs:
        raise UsageError(f"run '{run_name}' has trained {trained} epochs already, more than "
                         f"{named(cfg, 'train.epochs')} {cfg.train.epochs}: resume it with --epochs {trained} or "
                         "more, or start it over with --force")


def _what_changed(was: dict[str, Any], now: dict[str, Any]) -> str:
    """The first difference between a run's identity and a command's, in the user's words."""
    was, now = _with_later_defaults(was), _with_later_defaults(now)
    key = first_difference(was, now)
    if not key:  # equal as values, different as stored (1 and 1.0)
        return "its options as stored differ in type"
    top = key.split(".")[0]
    if top == "dataset_digest":
        return "the dataset changed since"
    if top == "feature_digests":
        return f"the {key.split('.', 1)[-1]} feature table changed since"
    if top == "plugin" and None in (was.get("plugin"), now.get("plugin")):  # a whole section on or off
        return f"plugin was {_plugin_named(was)}, now {_plugin_named(now)}"
    return f"{key} was {value_at(was, key)}, now {value_at(now, key)}"


def _plugin_named(identity: dict[str, Any]) -> str:
    return (identity.get("plugin") or {}).get("name") or "none"


def _with_later_defaults(identity: dict[str, Any]) -> dict[str, Any]:
    """An identity with the options added later put back at their defaults, where settled_train left them
    out: the same differences, shown as the values the user set ([10], not None)."""
    later = {k: list(v) if isinstance(v, tuple) else v for k, v in LATER_TRAIN_DEFAULTS.items()}
    return {**identity, "train": {**later, **identity["train"]}}


class TrainingDiverged(MrdibError):
    """The loss became NaN/inf: the run stops and keeps its last good checkpoint."""

    @classmethod
    def at(cls, epoch: int, terms: dict[str, torch.Tensor], where: str = "") -> TrainingDiverged:
        """The one-line message naming each loss term's value (``epoch`` = the last completed one)."""
        bad = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
        kept = f"the last good checkpoint (epoch {epoch}) is kept" if epoch else "before its first checkpoint"
        # resuming would diverge again (a resumed run repeats the same steps) and may not change --lr: start over
        return cls(f"loss became non-finite in epoch {epoch + 1} ({where}{bad}); stopped, {kept}; train again "
                   "with a lower --lr or smaller weights (--force replaces this run, or choose another --run-name)")


@dataclass
class EpochRecord:
    epoch: int
    loss: dict[str, float]
    valid: dict[str, float]
    time: dict[str, float]
    best: bool = False
    health: dict[str, float] = field(default_factory=dict)  # the plug-in's state after the epoch (Plugin.health)
    #: the processes that trained the epoch: train_cpu_s sums over them, and a resume may change --nproc
    processes: int = 1

    def to_dict(self) -> dict[str, Any]:
        d = {"epoch": self.epoch, "loss": self.loss, "valid": self.valid, "time": self.time, "best": self.best,
             "processes": self.processes}
        return {**d, "health": self.health} if self.health else d


@dataclass
class TrainResult:
    run_name: str
    run_dir: Path
    status: str
    best_epoch: int
    epochs_run: int
    valid: dict[str, float]
    test: dict[str, float]
    message: str = ""
    history: list[EpochRecord] = field(default_factory=list)
    #: how a stopped run's command exits: 130 after Ctrl-C, 143 after SIGTERM (job.stop_exit_code)
    exit_code: int = 0


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but no CUDA device is available (use --device cpu or auto)")
    return torch.device(spec)


def configure_cpu(threads: int | None) -> dict[str, Any]:
    """Threads, denormal handling and deterministic kernels for CPU training; returns what was set (stored in
    ``config.json``).

    Denormal floats (below 1.2e-38) are flushed to zero: on x86 each arithmetic operation on one costs ~100
    cycles, and some backbones make them in bulk. LGMRec's step on Baby took 400 ms instead of 300 ms on 2
    threads because of them (``benchmarks/bench_mrdib_overhead.py``). Flushing changes values only below
    1.2e-38, i.e. results only at the level of float rounding, like a change of device.

    Deterministic algorithms: the backward of an advanced-index gather (``emb[idx]``, an accumulating
    ``index_put_``) sums rows in a thread-dependent order on CPU, so with more than one thread two runs of
    the same seed drifted apart (LGMRec on the demo: gradients differing by ~1e-10 at the first step,
    embeddings by ~1e-6 after 3 epochs). PyTorch's deterministic mode sorts the indices first. On one
    thread it gives bit-identical gradients to the default for every backbone (checked); on two, a VBPR step
    at Baby scale moved by under 3% either way (plain 86.0 -> 88.9 ms, with MRdIB 118.6 -> 116.5 ms).
    Uninitialised memory is not NaN-filled (that only helps find reads of it, at a cost per tensor).
    """
    n = threads or auto_threads()
    torch.set_num_threads(n)
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    return {"threads": n, "flush_denormal": bool(torch.set_flush_denormal(True)), "deterministic": True}


def train_threads(requested: int | None, stored: int | None = None) -> tuple[int, str]:
    """(threads, why) for a training run: ``--threads`` if given, else a resumed run's stored count, else
    the free cores (:func:`mrdib_cli.cpu.auto_threads`).

    A resumed run keeps its count because the thread count decides how float reductions are split, so a
    run resumed on another count continues with values that differ in the last bits from an uninterrupted
    one; bit-identical resume needs the same count (and device and code).
    """
    if requested:
        return int(requested), "--threads"
    if stored:
        return int(stored), "the run's stored count, for a bit-identical resume; --threads N overrides"
    return choose_threads(None)


def default_run_name(backbone: str, dataset: str) -> str:
    return f"{backbone}-{dataset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


@dataclass
class EarlyStopping:
    """MMRec's rule: the score is rounded to 4 decimals, only a strictly greater score improves, and
    training stops once ``patience`` has been *exceeded* (21 consecutive bad epochs for patience 20)."""

    patience: int = 20
    best_score: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, epoch: int, value: float) -> bool:
        score = round(float(value), 4)
        if score > self.best_score:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs > self.patience


class Trainer:
    """Owns one run: its folder, backbone, optimiser, sampler and early-stopping state."""

    def __init__(self, ws: Workspace, cfg: RunConfig, **kwargs: Any) -> None:
        """Set up the run (see :meth:`_setup`) holding the run's lock until :meth:`fit` ends, so that two
        processes never write one run folder; the lock is released when setting up fails."""
        self._lock = contextlib.ExitStack()
        try:
            self._setup(ws, cfg, **kwargs)
        except BaseException:
            self._lock.close()
            raise

    def _setup(self, ws: Workspace, cfg: RunConfig, *, resume: bool = False, overwrite: bool = False,
               on_epoch: Callable[[EpochRecord], None] | None = None,
               on_info: Callable[[str], None] | None = None,
               on_warn: Callable[[str], None] | None = None,
               progress: Callable[[int], Callable[..., None]] | None = None) -> None:
        self.ws, self.cfg = ws, cfg
        self.on_epoch = on_epoch or (lambda r: None)
        self.on_info = on_info or (lambda s: None)
        # a warning goes to on_warn, or to on_info marked as one
        self.on_warn = on_warn or (lambda s: self.on_info(f"warning: {s}"))
        # plug-in problems warned about (first epoch of each kind): kept in checkpoints and results.json, so a
        # resumed run does not repeat them and 'mrdib doctor' can report them later
        self.warnings: list[dict[str, Any]] = []
        self.progress = progress
        tc = cfg.train
        cls = get_backbone(cfg.backbone)
        self.handle = DatasetHandle.open(ws, cfg.dataset)
        self.hparams = dict(cfg.hparams)
        self.run_name = check_name(cfg.run_name or default_run_name(cls.name, self.handle.name), "run name")
        self.folder = RunFolder(ws, self.run_name, writes=getattr(self, "rank", 0) == 0)
        self.run_dir = self.folder.path
        if getattr(self, "rank", 0) == 0:  # one writer per run (in a torchrun job: rank 0)
            self._lock.enter_context(file_lock(ws.lock("run", self.run_name), wait=False,
                                               what=f"run '{self.run_name}'"))
        self.device = resolve_device(tc.device)
        self.runtime: dict[str, Any] = {"device": str(self.device)}
        if self.device.type == "cpu":
            self.runtime.update(configure_cpu(tc.threads))
        else:  # GPU runs use non-deterministic kernels (scatter/index_add), which deterministic mode refuses
            torch.use_deterministic_algorithms(False)

        # seed everything before building the model, as MMRec's init_seed does
        torch.manual_seed(tc.seed)
        np.random.seed(tc.seed % 2**32)
        import random

        random.seed(tc.seed)
        check_run(cfg)
        self.backbone: Backbone = cls(self.handle, self.hparams, cfg.features or None).to(self.device)
        self.plugin: Plugin | None = None
        if cfg.plugin:
            opts = {k: v for k, v in cfg.plugin.items() if k != "name"}
            self.plugin = create_plugin(cfg.plugin["name"], opts)
            self.plugin.attach(self.backbone)
            self.plugin.to(self.device)
        # only now: a backbone or plug-in that refuses this configuration leaves no half-made run folder
        resume = self._prepare_run_dir(resume, overwrite)
        self.optimizer = self._make_optimizer()
        users, items = self.handle.pairs("train")
        self.sampler = BPRSampler(users, items, self.handle.n_items, tc.batch_size, tc.seed,
                                  with_negatives=cls.training_mode == "bpr")
        self.epoch = 0
        self.stopper = EarlyStopping(tc.patience)
        self.best_valid: dict[str, float] = {}
        self.best_emb: tuple[np.ndarray, np.ndarray] | None = None
        # the best epoch's number, embeddings and model (and plug-in) state, saved inside every last.pt so a
        # resume never pairs results.json with the files of another epoch (see _restore_best)
        self.best_unit: dict[str, Any] | None = None
        self.history: list[EpochRecord] = []
        self._metric_lines: list[str] = []  # metrics.jsonl as written, kept in every last.pt too
        self._exit_code = 0
        if resume:
            self._check_identity(self._config_dict())
            self._restore()
        self._write_config()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        """Adam over every parameter; in ``--minibatch sampled`` mode the embedding tables (sparse gradients)
        get a lazy Adam, so that a step costs the rows it touched rather than the whole table."""
        tc = self.cfg.train
        params = list(self.backbone.parameters()) + (list(self.plugin.parameters()) if self.plugin else [])
        params = [p for p in params if p.requires_grad]
        if tc.minibatch == "full":
            return torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)
        tables = {id(p) for p in self.backbone.sparse_parameters().values()}
        return LazyTablesAdam([p for p in params if id(p) in tables],
                              [p for p in params if id(p) not in tables], tc.lr)

    def _minibatch(self, generator: torch.Generator) -> MiniBatch | None:
        tc = self.cfg.train
        return MiniBatch(tuple(tc.fanout), generator, tc.node_budget) if tc.minibatch == "sampled" else None

    # ------------------------------------------------------------------------------ run folder
    @property
    def ckpt_dir(self) -> Path:
        return self.folder.ckpt_dir

    def _config_dict(self) -> dict[str, Any]:
        cfg = self.cfg.to_dict()
        paths = self.feature_tables()
        features = {m: p.name for m, p in paths.items()}
        # content, not names: a table re-extracted under the same name is another input (graphs are built
        # from the dataset and these tables, so their digests follow)
        digests = {m: self.handle.content_digest(p) for m, p in paths.items()}
        return {
            "run_name": self.run_name, "dataset": self.handle.name, "dataset_dir": str(self.handle.dir),
            "dataset_digest": self.handle.digest, "backbone": self.cfg.backbone, "hparams": self.hparams,
            "train": cfg["train"], "plugin": self.plugin_config(), "features": features,
            "feature_digests": digests, "runtime": self.runtime, "version": __version__, "code": code_version(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def feature_tables(self) -> dict[str, Path]:
        """The feature table each modality of the backbone reads: the named one, else the newest."""
        return get_backbone(self.cfg.backbone).feature_tables(self.handle, self.cfg.features)

    def plugin_config(self) -> dict[str, Any] | None:
        """The plug-in's resolved configuration (its defaults included), overridden by the given options."""
        if not self.cfg.plugin:
            return None
        resolved = self.plugin.config() if self.plugin is not None else {}
        return {**resolved, "name": self.cfg.plugin["name"],
                **{k: v for k, v in self.cfg.plugin.items() if k != "name"}}

    @cached_property
    def identity(self) -> str:
        """What must not change between an interrupted run and its resumption, as one digest; fixed for the
        run's life (a resume that would change it is refused), so computed once."""
        return run_identity(self._config_dict())

    def _prepare_run_dir(self, resume: bool, overwrite: bool) -> bool:
        """Create or reuse the run folder; returns whether there is a checkpoint to resume from."""
        exists = (self.run_dir / "config.json").exists()
        if resume and not (self.ckpt_dir / "last.pt").exists():
            if not exists:
                raise UsageError(f"cannot resume run '{self.run_name}': no checkpoint in {self.ckpt_dir}")
            # stopped before its first epoch ended: nothing to lose, start it again from epoch 0
            self.on_info(f"run '{self.run_name}' has no checkpoint yet; starting it from epoch 0")
            self._check_identity(self._config_dict())
            resume, overwrite = False, True
        if exists and not resume:
            if not overwrite:
                raise run_exists(self.run_name)
            _discard(self.run_dir)
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        return resume

    def _check_identity(self, conf: dict[str, Any] | None) -> None:
        """Refuse to continue a run with other options or data than it was started with."""
        path = self.run_dir / "config.json"
        if conf is not None and path.exists():
            check_same_run(self.run_name, read_json(path), conf)

    def _write_config(self) -> None:
        conf = self._config_dict()
        path = self.run_dir / "config.json"
        if path.exists():
            old = read_json(path)
            self._check_identity(conf)
            conf["created"] = old.get("created", conf["created"])
        self.folder.write_config(conf)

    # ------------------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "model": self.backbone.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "plugin": self.plugin.state_dict() if self.plugin else None,
            "rng": ckpt.rng_state(), "sampler": self.sampler.state(),
            "best_score": self.stopper.best_score, "best_epoch": self.stopper.best_epoch,
            "best_valid": self.best_valid, "bad_epochs": self.stopper.bad_epochs,
            "identity": self.identity,
            "warnings": list(self.warnings), "best": self.best_unit,
            # the history too: a metrics.jsonl torn or deleted since is rewritten from it on resume
            "metrics": json.dumps(self._metric_lines),
        }

    def _restore(self) -> None:
        path = self.ckpt_dir / "last.pt"
        st = ckpt.load(path, self.device)
        foreign = DataError(f"checkpoint {path} belongs to another run (other backbone, options or dataset); "
                            f"restore this run's own checkpoint or start again with --force")
        if st.get("identity") not in (None, self.identity):
            raise foreign
        try:
            self.backbone.load_state_dict(st["model"])
            self.optimizer.load_state_dict(st["optimizer"])
            if self.plugin is not None and st.get("plugin") is not None:
                self.plugin.load_state_dict(st["plugin"])
        except (RuntimeError, KeyError, ValueError, TypeError):
            raise foreign from None
        self._restore_rng(st)
        self.sampler.set_state(st["sampler"])
        self.epoch = int(st["epoch"])
        check_epoch_cap(self.run_name, self.epoch, self.cfg)
        self.stopper.best_score, self.stopper.best_epoch = float(st["best_score"]), int(st["best_epoch"])
        self.stopper.bad_epochs = int(st["bad_epochs"])
        self.best_valid = dict(st["best_valid"])
        self.warnings = list(st.get("warnings") or [])  # absent in checkpoints from before warnings were kept
        self._restore_best(st.get("best"))
        self._restore_metrics(st)
        self.on_info(f"resumed run '{self.run_name}' after epoch {self.epoch} "
                     f"(best epoch {self.stopper.best_epoch}, {self.stopper.bad_epochs} epochs without improvement)")

    def _restore_metrics(self, st: dict[str, Any]) -> None:
        """The history of the epochs the checkpoint covers (later lines are recomputed): the checkpoint's own
        copy, which also repairs a metrics.jsonl torn or deleted since; the file's lines for checkpoints
        written before they kept one."""
        mpath = self.run_dir / "metrics.jsonl"
        on_disk = [ln for ln in mpath.read_text().splitlines() if ln.strip()] if mpath.exists() else []
        on_disk = [ln for ln in on_disk if _epoch_of(ln) <= self.epoch]
        kept = json.loads(st["metrics"]) if "metrics" in st else on_disk
        if kept != on_disk:
            self.on_info(f"metrics.jsonl held {len(on_disk)} of the {len(kept)} epochs the checkpoint covers "
                         "(torn, edited or deleted); rewritten from the checkpoint")
        self._metric_lines = list(kept)
        self.history = [EpochRecord(**{k: v for k, v in json.loads(ln).items()
                                       if k in EpochRecord.__dataclass_fields__}) for ln in kept]
        self.folder.keep_metrics(kept)

    def _restore_rng(self, st: dict[str, Any]) -> None:
        ckpt.set_rng_state(st["rng"])

    def _restore_best(self, unit: dict[str, Any] | None) -> None:
        """Take the best epoch from the checkpoint; rewrite embeddings.npz/best.pt when a crash left them at
        another epoch (they are saved before last.pt, so they can be one epoch ahead)."""
        best = self.stopper.best_epoch
        if not best:
            return
        emb_path = self.run_dir / "embeddings.npz"
        if unit is None and emb_path.exists() and saved_epoch(emb_path) in (None, best):
            # a checkpoint from before the best epoch was kept inside it: its embeddings.npz is all there is
            with np.load(emb_path, allow_pickle=False) as z:
                self.best_emb = (z["user"], z["item"])
            return
        if unit is None or int(unit["epoch"]) != best:
            raise DataError(f"checkpoint {self.ckpt_dir / 'last.pt'} does not hold its best epoch ({best}); "
                            "start the run again with --force")
        self.best_unit = unit
        self.best_emb = (unit["user"].cpu().numpy(), unit["item"].cpu().numpy())
        if saved_epoch(self.run_dir / "embeddings.npz") != best or _ckpt_epoch(self.ckpt_dir / "best.pt") != best:
            self.on_info(f"best-epoch files were not those of epoch {best}; rewriting them from the checkpoint")
            self.folder.save_best(unit)

    def _best_unit(self, user: np.ndarray, item: np.ndarray) -> dict[str, Any]:
        """The best epoch as one unit (number, embeddings, model and plug-in state), kept inside every
        last.pt and written to embeddings.npz/best.pt, each with its epoch inside."""
        clone = lambda sd: {k: v.detach().clone() for k, v in sd.items()}  # noqa: E731
        return {"epoch": self.epoch, "user": torch.from_numpy(user), "item": torch.from_numpy(item),
                "model": clone(self.backbone.state_dict()),
                "plugin": clone(self.plugin.state_dict()) if self.plugin else None,
                "identity": self.identity}

    # ------------------------------------------------------------------------------ loop
    def _apply_lr_schedule(self) -> None:
        """A backbone's ``lr_schedule = (factor, step)`` (MGCN, LATTICE, SOIL): lr * factor^(epoch/step),
        MMRec's per-epoch LambdaLR. Stateless (derived from the epoch), so resuming needs nothing extra."""
        sched = getattr(self.backbone, "lr_schedule", None)
        if sched:
            for g in self.optimizer.param_groups:
                g["lr"] = self.cfg.train.lr * sched[0] ** (self.epoch / sched[1])

    def _train_epoch(self) -> dict[str, float]:
        self.backbone.train()
        if self.plugin:
            self.plugin.train()
        gen = torch.Generator().manual_seed(int(self.sampler.rng.integers(2**62)))
        self._apply_lr_schedule()
        self.backbone.pre_epoch(self.epoch, gen)
        sums: dict[str, Any] = {}
        n = 0
        task = self.progress(len(self.sampler)) if self.progress else None
        minibatch = self._minibatch(gen)
        for batch in self.sampler.epoch():
            batch = batch.to(self.device)
            emb, terms = forward_terms(self.backbone, self.plugin, batch, minibatch)
            loss = sum(terms.values())
            if not torch.isfinite(loss):
                raise TrainingDiverged.at(self.epoch, terms)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.plugin:
                self.plugin.after_step(batch, emb)
                for k, v in self.plugin.logs.items():
                    sums[k] = sums.get(k, 0.0) + (v.detach().double() if isinstance(v, torch.Tensor) else v)
            # summed as (device) tensors and read once per epoch: a float() per term per step would stall a GPU
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach().double()
            sums["total"] = sums.get("total", 0.0) + loss.detach().double()
            n += 1
            if task:
                task(loss.detach())
        return {k: float(v) / max(n, 1) for k, v in sums.items()}

    def _job_cpu_s(self, seconds: float) -> float:
        """CPU seconds the epoch's training took in the whole job (one process here; all ranks under DDP)."""
        return seconds

    def _eval_embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        self.backbone.eval()
        if self.plugin:
            self.plugin.eval()
        with torch.no_grad():
            u, i = self.backbone.embeddings_for_eval()
        # own copies: on CPU .numpy() shares memory with the tensor, and a backbone may hand out a parameter itself
        # (VBPR's user table); the best epoch's embeddings must not keep changing as training goes on
        return (np.array(u.detach().float().cpu().numpy(), dtype=np.float32, copy=True),
                np.array(i.detach().float().cpu().numpy(), dtype=np.float32, copy=True))

    def _plugin_health(self) -> dict[str, float]:
        """The plug-in's figures after the evaluation forward; each kind of problem is warned about once."""
        if self.plugin is None:
            return {}
        figures, problems = self.plugin.health()
        seen = {w["kind"] for w in self.warnings}
        for kind, message in problems.items():
            if kind not in seen:
                self.warnings.append({"epoch": self.epoch + 1, "kind": kind, "message": message})
                self.on_warn(f"epoch {self.epoch + 1}: {message}")
        return {k: round(v, 6) for k, v in figures.items()}

    def _evaluate(self, u: np.ndarray, i: np.ndarray, split: str):
        from mrdib_cli.evaluation.engine import evaluate_split

        tc = self.cfg.train
        mask = "train" if split == "valid" else tc.test_mask
        return evaluate_split(self.handle, u, i, split, mask=mask, ks=tuple(tc.ks),
                              batch_users=tc.eval_batch_users)

    def fit(self) -> TrainResult:
        try:
            return self._fit()
        finally:
            self._lock.close()

    def _fit(self) -> TrainResult:
        tc = self.cfg.train
        status, message = "finished", ""
        try:
            while self.epoch < tc.epochs and not self.stopper.should_stop:
                t0, c0 = time.perf_counter(), time.process_time()
                losses = self._train_epoch()
                t1, cpu = time.perf_counter(), self._job_cpu_s(time.process_time() - c0)
                u, i = self._eval_embeddings()
                health = self._plugin_health()
                valid = self._evaluate(u, i, "valid").metrics
                t2 = time.perf_counter()
                self.epoch += 1
                improved = self.stopper.update(self.epoch, valid[tc.valid_metric])
                if improved:
                    self.best_valid, self.best_emb = dict(valid), (u, i)
                    self.best_unit = self._best_unit(u, i)
                    self.folder.save_best(self.best_unit)
                rec = EpochRecord(self.epoch, {k: round(v, 6) for k, v in losses.items()}, valid,
                                  {"train_s": round(t1 - t0, 3), "valid_s": round(t2 - t1, 3),
                                   "train_cpu_s": round(cpu, 3)}, improved,
                                  health, getattr(self, "world", 1))
                self.history.append(rec)
                self._metric_lines.append(self.folder.append_metrics(rec.to_dict()))
                self.folder.save_last(self._state())
                self.on_epoch(rec)
            if self.stopper.should_stop:
                message = (f"early stopping after epoch {self.epoch}: no {tc.valid_metric} improvement "
                           f"for {self.stopper.bad_epochs} epochs")
            else:
                message = f"reached the epoch limit ({tc.epochs})"
        except KeyboardInterrupt as e:
            status, self._exit_code = "stopped", stop_exit_code(e)
            how = "stopped by SIGTERM" if isinstance(e, Terminated) else "interrupted"
            message = (f"{how} after epoch {self.epoch}; the checkpoint is saved, continue with "
                       f"'mrdib train --resume --run-name {self.run_name}'")
            if self.epoch == 0:  # no epoch ended, so no checkpoint was written
                message = (f"{how} before the first epoch ended, so there is no checkpoint; "
                           f"'mrdib train --resume --run-name {self.run_name}' starts it from epoch 0")
        except TrainingDiverged as e:
            status, message = "failed", str(e)
        except torch.cuda.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            tc = self.cfg.train
            raise MrdibError(
                f"out of GPU memory in epoch {self.epoch + 1}; try a smaller --batch-size (now {tc.batch_size}) "
                f"or --set train.eval_batch_users={max(1, tc.eval_batch_users // 4)}, or --device cpu; the last "
                f"good checkpoint (epoch {self.epoch}) is kept: add --resume to continue") from None
        return self._finish(status, message)

    def _finish(self, status: str, message: str) -> TrainResult:
        test: dict[str, float] = {}
        protocol: dict[str, Any] = {}
        res = None
        if self.best_emb is not None:
            res = self._evaluate(*self.best_emb, "test")
            test, protocol = dict(res.metrics), res.protocol.to_dict()
        results = {"status": status, "message": message, "best_epoch": self.stopper.best_epoch,
                   "epochs_run": self.epoch, "valid": self.best_valid, "test": test, "protocol": protocol,
                   "valid_metric": self.cfg.train.valid_metric}
        if self.warnings:
            results["warnings"] = list(self.warnings)
        self.folder.write_results(results, res)
        return TrainResult(self.run_name, self.run_dir, status, self.stopper.best_epoch, self.epoch,
                           self.best_valid, test, message, self.history,
                           exit_code=self._exit_code if status == "stopped" else 0)


def saved_epoch(path: Path) -> int | None:
    """The epoch stored in an ``embeddings.npz`` (None when absent or unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return int(z["epoch"]) if "epoch" in z.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _ckpt_epoch(path: Path) -> int | None:
    try:
        return int(ckpt.load(path)["epoch"])
    except (DataError, KeyError, TypeError, ValueError):
        return None


def _discard(run_dir: Path) -> None:
    """Remove a run folder for ``--force``: first moved aside in one rename, so a crash while deleting
    leaves either the whole old run or none of it (never a run without its metrics); ``cache gc``
    removes what a crash left aside."""
    aside = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{run_dir.name}.", dir=run_dir.parent))
    os.replace(run_dir, aside / "d")
    shutil.rmtree(aside, ignore_errors=True)


class RowAdam(torch.optim.Optimizer):
    """Lazy Adam for embedding tables with sparse gradients: only the rows a step touched move, and their
    moments advance (the semantics of ``torch.optim.SparseAdam``, bias-corrected by the global step count).

    Why our own: ``SparseAdam`` goes through sparse-tensor arithmetic and took about half of a sampled
    LightGCN step at 4x Baby; gathering the touched rows, updating them densely and writing them back is
    the same update with a few dense kernels.
    """

    def __init__(self, params: list[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        #: per table, the rows whose moments this optimiser keeps (all of them unless :meth:`keep_rows` says)
        self.blocks: dict[torch.Tensor, tuple[int, int]] = {}
        self._slots: dict[torch.Tensor, IdTable] = {}  # per table, a slot per row for :meth:`_touched`

    def keep_rows(self, p: torch.Tensor, lo: int, hi: int) -> None:
        """Keep the moments of ``p``'s rows ``lo .. hi-1`` only, the only rows this optimiser will be asked to
        update: when the ranks of a job share the tables' updates, each then holds 2/N of the tables in
        moments instead of twice every table. Moments held for every row (a checkpoint's) are cut down."""
        self.blocks[p] = (lo, hi)
        st = self.state[p]
        if not st:
            self._init_state(p)
            return
        for name in ("exp_avg", "exp_avg_sq"):
            if len(st[name]) == len(p):
                st[name] = st[name][lo:hi].clone()
            elif len(st[name]) != hi - lo:
                raise ValueError(f"moments of {len(st[name])} rows for a block of {hi - lo}")

    def _init_state(self, p: torch.Tensor) -> dict[str, Any]:
        lo, hi = self.blocks.get(p, (0, len(p)))
        st = self.state[p]
        st["step"] = torch.zeros((), dtype=torch.float64)
        st["exp_avg"], st["exp_avg_sq"] = (p.new_zeros(hi - lo, *p.shape[1:]) for _ in range(2))
        return st

    def _touched(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of ``p`` the step touched, each once, and their gradients (any order: each row's update
        is its own)."""
        if p not in self._slots:
            self._slots[p] = IdTable(len(p), p.device)
        return touched_rows(p.grad, self._slots[p])

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                rows, g = self._touched(p)
                st = self.state[p] or self._init_state(p)
                st["step"] += 1
                t = float(st["step"])
                at = rows - self.blocks[p][0] if p in self.blocks else rows  # rows of the kept block
                m = st["exp_avg"].index_select(0, at).mul_(b1).add_(g, alpha=1 - b1)
                v = st["exp_avg_sq"].index_select(0, at).mul_(b2).addcmul_(g, g, value=1 - b2)
                st["exp_avg"].index_copy_(0, at, m)
                st["exp_avg_sq"].index_copy_(0, at, v)
                denom = v.div_(1 - b2 ** t).sqrt_().add_(group["eps"])
                p.index_add_(0, rows, m.div_(denom).mul_(-group["lr"] / (1 - b1 ** t)))


class LazyTablesAdam(torch.optim.Optimizer):
    """:class:`RowAdam` on the embedding tables and Adam on the dense parameters, driven as one optimiser
    (``zero_grad``, ``step``, ``state_dict``)."""

    def __init__(self, tables: list[torch.Tensor], dense: list[torch.Tensor], lr: float) -> None:
        self.parts: list[torch.optim.Optimizer] = [RowAdam(tables, lr=lr)] if tables else []
        if dense:
            self.parts.append(torch.optim.Adam(dense, lr=lr))
        super().__init__([p for o in self.parts for g in o.param_groups for p in g["params"]], {"lr": lr})
        self.param_groups = [g for o in self.parts for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.parts:
            o.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for o in self.parts:
            o.step()

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"parts": [o.state_dict() for o in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # type: ignore[override]
        if len(state.get("parts", ())) != len(self.parts):
            raise ValueError("optimiser state of another layout")
        for o, s in zip(self.parts, state["parts"]):
            o.load_state_dict(s)


def _epoch_of(line: str) -> float:
    """Epoch of a metrics.jsonl line; a line cut short by a crash counts as not written (inf)."""
    try:
        return int(json.loads(line)["epoch"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return math.inf


def train(ws: Workspace, cfg: RunConfig, **kwargs: Any) -> TrainResult:
    """Build a :class:`Trainer` and run it to the end (library entry point of ``mrdib train``)."""
    return Trainer(ws, cfg, **kwargs).fit()
