"""The Backbone interface and the backbone registry.

Every backbone (LightGCN, VBPR, LGMRec, FREEDOM, ...) subclasses :class:`Backbone`, registers itself with
``@register("name")`` and implements three methods. The trainer only ever calls these, sums the named loss
terms and logs each one; evaluation only needs the final user/item embeddings. Plug-in objectives such as
MRdIB attach through :meth:`Backbone.modality_hook`, never through backbone-specific code.

    propagate()            full-graph forward -> Embeddings(user [U,d], item [I,d], views {...})
    loss(batch, emb)       -> {"bpr": ..., "reg": ..., ...} (named, already weighted by the backbone's own
                              hyper-parameters; the trainer adds plug-in terms and sums)
    embeddings_for_eval()  deterministic (no dropout / sampling) user and item embeddings for ranking

Hook points: wherever a per-modality, item-level representation h_m [n_items, d_m] is formed before
fusion, a backbone writes ``h = self.modality_hook("image", h)``. Without plug-ins this is the identity.
Where the frozen modality features enter, before the backbone's own projection, it writes
``x = self.modality_input("image", x)``, so a plug-in can work on the modality input itself instead.
A backbone whose hook rows stay with their item (``item_local_hooks = True``, VBPR) lets a plug-in transform
only the rows of the training batch's items; in ``--minibatch sampled`` mode a backbone with
``sampled_hook_rows = True`` passes the hooks only the rows its step needs.
A backbone that exposes a modality-specific *user* representation for modality m puts it in
``Embeddings.views["user_<m>"]`` so that per-modality objectives can score with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import Tensor, nn

from mrdib_cli.errors import UsageError
from mrdib_cli.graphs.sampling import Block, CSRGraph, sample_blocks
from mrdib_cli.options import Option, options_from_defaults

HookFn = Callable[[str, Tensor], Tensor]
#: a backbone's ``features`` argument: the feature table to use per modality (None: the newest)
FeatureTables = Mapping[str, "str | None"] | None

#: help lines of hyper-parameters that several backbones share
HPARAM_HELP: dict[str, str] = {
    "embedding_size": "Width of the user and item embeddings.",
    "feat_embed_dim": "Width of the projected modality features.",
    "reg_weight": "Weight of the regularisation term.",
    "n_layers": "Propagation layers (on the item-item graphs where the backbone has them).",
    "n_ui_layers": "Propagation layers on the user-item graph.",
    "n_mm_layers": "Propagation layers on the modality (item-item) graph.",
    "knn_k": "Neighbours per item in the feature kNN graphs.",
    "cl_loss": "Weight of the contrastive (InfoNCE) term.",
    "cl_weight": "Weight of the contrastive term.",
    "dropout": "Dropout rate.",
}


@dataclass
class Embeddings:
    """Output of a full-graph forward pass."""

    user: Tensor  # [n_users, d]
    item: Tensor  # [n_items, d]
    views: dict[str, Tensor] = field(default_factory=dict)  # named extra views, e.g. "user_image"
    #: views that are column ranges ``[start, stop)`` of ``user`` (VBPR's preference part of theta_u):
    #: :meth:`rows` serves them from the user rows, so their gradient reaches the table in one scatter
    user_columns: dict[str, tuple[int, int]] = field(default_factory=dict)
    _gathered: dict[tuple[str, int], tuple[Tensor, Tensor]] = field(default_factory=dict, init=False,
                                                                     repr=False, compare=False)

    def rows(self, name: str, idx: Tensor) -> Tensor:
        """Rows ``idx`` of ``user``, ``item`` or a view, gathered once per (name, index tensor).

        Why: the backward of a gather writes a dense gradient table (zeros, scatter, add). When the backbone's
        loss and a plug-in both read the batch's users through here, that table is written once, not twice.
        """
        if name in self.user_columns:
            start, stop = self.user_columns[name]
            return self.rows("user", idx)[:, start:stop]
        key = (name, id(idx))
        hit = self._gathered.get(key)
        if hit is None or hit[0] is not idx:  # the index tensor itself is kept, so its id cannot be reused
            table = self.user if name == "user" else self.item if name == "item" else self.views[name]
            hit = self._gathered[key] = (idx, table[idx])
        return hit[1]


@dataclass
class Batch:
    """A training batch of (user, positive item[, negative item]) index triples."""

    users: Tensor  # [B] int64
    pos: Tensor  # [B] int64
    neg: Tensor | None = None  # [B] int64; None for backbones trained without negatives (BM3)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.users.to(device), self.pos.to(device),
                     None if self.neg is None else self.neg.to(device))


@dataclass(frozen=True)
class MiniBatch:
    """How a ``--minibatch sampled`` step draws the neighbourhoods of its batch's users and items."""

    fanout: tuple[int, ...]  # neighbours kept per node, per hop; the last value serves the deeper hops
    generator: torch.Generator | None = None
    node_budget: int = 0  # most new nodes one hop may add (0: no bound), see graphs/sampling.py
    ranks: int = 1  # ranks that share the step (--nproc), each with its slice of the batch

    def share(self, size: int) -> int:
        """This rank's part of a sample drawn once per step (LGMRec's uniform candidates): the sample is the
        step's, split among the ranks like the batch, so that N ranks draw about what one process draws."""
        return math.ceil(size / self.ranks)

    def hops(self, n: int) -> list[int]:
        """The fan-outs of an ``n``-hop neighbourhood."""
        return [self.fanout[min(h, len(self.fanout) - 1)] for h in range(n)]

    def neighbourhood(self, graph: CSRGraph, seeds: Tensor, n: int) -> tuple[list[Tensor], list[Block]]:
        """The sampled ``n``-hop neighbourhood of ``seeds`` under this step's fan-outs, budget and generator."""
        return sample_blocks(graph, seeds, self.hops(n), self.generator, self.node_budget)


class Backbone(nn.Module):
    """Base class of every recommender backbone. See the module docstring for the contract."""

    name: ClassVar[str] = ""
    #: modalities the backbone consumes, e.g. ("image", "text"); () for ID-only models
    modalities: ClassVar[tuple[str, ...]] = ()
    #: which modalities are required (a subset of ``modalities``); the rest are used when present
    required_modalities: ClassVar[tuple[str, ...]] = ()
    #: "bpr" (one sampled negative per positive) or "pairs" (no negatives, e.g. BM3)
    training_mode: ClassVar[str] = "bpr"
    #: hyper-parameter defaults (MMRec's, Baby where per-dataset)
    defaults: ClassVar[dict[str, Any]] = {}
    #: the grid a fair baseline is tuned over on validation (keys: hyper-parameters or ``train.lr``), from
    #: MMRec's model configs; examples/sweeps/mmrec-<name>.yaml sweeps it
    mmrec_grid: ClassVar[dict[str, list[Any]]] = {}
    #: per-dataset overrides of ``defaults`` keyed by dataset name (e.g. LGMRec's Sports/Clothing)
    dataset_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    #: names of the modality hook points this backbone calls (default: its modalities)
    hook_points: ClassVar[tuple[str, ...]] = ()
    #: True when row i of a hook's output reaches only item i's representation (no propagation over items,
    #: e.g. VBPR) and ``loss`` reads item rows only at the batch's items: a plug-in may then transform just the
    #: rows a training batch uses. False for graph backbones, where every row reaches every item.
    item_local_hooks: ClassVar[bool] = False
    #: loss terms that sum over the batch's rows instead of averaging them (LGMRec's contrastive term, as in
    #: MMRec): with --nproc each rank's share is weighted so that the ranks add up to the whole batch's sum
    batch_sum_terms: ClassVar[tuple[str, ...]] = ()
    #: True when :meth:`propagate_batch` passes the hooks only the rows of the items its step needs, the
    #: batch's items first in the order of the re-indexed batch: a plug-in's per-item terms, indexed by that
    #: batch, then read the right rows (``--minibatch sampled`` with a plug-in)
    sampled_hook_rows: ClassVar[bool] = False
    #: embedding tables (parameter names, dotted for a submodule's) that :meth:`propagate_batch` reads row by
    #: row (sparse gradients): in ``--minibatch sampled`` mode a lazy Adam updates only the rows a step
    #: touched; empty = mode unsupported
    sparse_tables: ClassVar[tuple[str, ...]] = ()
    #: help lines of this backbone's own hyper-parameters (shared names are explained in :data:`HPARAM_HELP`)
    hparam_help: ClassVar[dict[str, str]] = {}

    #: the hyper-parameters that set :meth:`sampled_hops`, named in the refusal of too many fan-outs
    hop_settings: ClassVar[str] = ""

    @classmethod
    def sampled_hops(cls, hparams: Mapping[str, Any], plugin: bool) -> int:
        """The most hops a ``--minibatch sampled`` step draws with these hyper-parameters (0: it reads no
        neighbourhood). Why: fan-outs past it would go unused without a word, so the configuration refuses them."""
        return 0

    def __init__(self, data: Any = None, hparams: Mapping[str, Any] | None = None) -> None:
        """The preamble every backbone shares: the dataset's sizes and the hyper-parameters, resolved by
        :func:`resolve_hparams` (complete: a backbone never merges its defaults again)."""
        super().__init__()
        self._hooks: dict[str, HookFn] = {}
        self._input_hooks: dict[str, HookFn] = {}
        self.hp: dict[str, Any] = dict(hparams or {})
        #: the embedding width, which every backbone declares as ``embedding_size``
        self.dim = int(self.hp.get("embedding_size", 0))
        if data is not None:
            self.n_users, self.n_items = data.n_users, data.n_items

    @classmethod
    def feature_tables(cls, data: Any, features: Mapping[str, str | None] | None) -> dict[str, Path]:
        """The feature table each modality reads (named, else the newest); a missing required one is an error.
        What a run records in config.json and ``--print-config`` shows, checked before anything starts."""
        from mrdib_cli.models._common import select_modalities

        return select_modalities(data, cls.modalities, cls.required_modalities, dict(features or {}), cls.name)

    def load_features(self, data: Any, features: Mapping[str, str | None] | None) -> dict[str, Tensor]:
        """This backbone's modality features that the dataset has (a missing required one is an error)."""
        from mrdib_cli.models._common import load_modalities

        return load_modalities(data, self.modalities, self.required_modalities, dict(features or {}), self.name)

    @classmethod
    def options(cls) -> tuple[Option, ...]:
        """The declared hyper-parameters (name, type, default, help), as ``mrdib train --help`` lists them."""
        return options_from_defaults(cls.defaults, {**HPARAM_HELP, **cls.hparam_help})

    # hooks ----------------------------------------------------------------------------------
    def modality_hook(self, name: str, h: Tensor) -> Tensor:
        """Pass a per-modality item representation through the installed plug-in (identity if none)."""
        fn = self._hooks.get(name)
        return h if fn is None else fn(name, h)

    def modality_input(self, name: str, x: Tensor) -> Tensor:
        """Pass modality ``name``'s input features [n_items, d_x] through the installed input plug-in (identity
        if none), before the backbone's own projection."""
        fn = self._input_hooks.get(name)
        return x if fn is None else fn(name, x)

    def install_hook(self, name: str, fn: HookFn, *, on_input: bool = False) -> None:
        """Install ``fn`` at hook point ``name`` (``on_input``: at that modality's input features instead)."""
        if name not in self.get_hook_points():
            raise UsageError(f"backbone '{self.name}' has no modality hook point '{name}' "
                             f"(it has: {', '.join(self.get_hook_points()) or 'none'})")
        (self._input_hooks if on_input else self._hooks)[name] = fn

    @classmethod
    def get_hook_points(cls) -> tuple[str, ...]:
        return cls.hook_points or cls.modalities

    # training lifecycle -----------------------------------------------------------------------
    def pre_epoch(self, epoch: int, generator: torch.Generator) -> None:
        """Called before each training epoch (e.g. FREEDOM resamples its pruned graph)."""

    def propagate(self) -> Embeddings:
        raise NotImplementedError

    def loss(self, batch: Batch, emb: Embeddings) -> dict[str, Tensor]:
        raise NotImplementedError

    def propagate_step(self, batch: Batch) -> Embeddings:
        """The training step's forward (``--minibatch full``): :meth:`propagate` unless a backbone can give
        the same values, bit for bit, with less work for this batch (VBPR projects only its items)."""
        return self.propagate()

    def propagate_batch(self, batch: Batch, mb: MiniBatch) -> tuple[Embeddings, Batch]:
        """Forward for the rows ``batch`` reads only (``--minibatch sampled``), from sampled neighbourhoods.

        Returns compact embeddings and the batch re-indexed into them, so that :meth:`loss` runs unchanged.
        Why: the full forward costs the whole graph per step, so an epoch grows like its square; this one
        costs the batch size times the fan-outs, whatever the catalogue's size.
        """
        raise UsageError(f"backbone '{self.name}' does not support --minibatch sampled "
                         f"(supported: {', '.join(sampled_backbones())}); use --minibatch full")

    def sparse_parameters(self) -> dict[str, nn.Parameter]:
        """The :attr:`sparse_tables` this instance has (a backbone without an optional modality lacks its
        table), by name."""
        params = dict(self.named_parameters())
        return {n: params[n] for n in self.sparse_tables if n in params}

    @torch.no_grad()
    def embeddings_for_eval(self) -> tuple[Tensor, Tensor]:
        """Deterministic user and item embeddings; score(u, i) = <user[u], item[i]>."""
        was = self.training
        self.eval()
        try:
            emb = self.propagate()
        finally:
            self.train(was)
        # detached: a backbone may return a parameter itself (VBPR's user table), which no_grad does not detach
        return emb.user.detach(), emb.item.detach()


_REGISTRY: dict[str, type[Backbone]] = {}


def register(name: str) -> Callable[[type[Backbone]], type[Backbone]]:
    """Class decorator: make a backbone available as ``mrdib train --backbone name``."""

    def deco(cls: type[Backbone]) -> type[Backbone]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"backbone '{name}' registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _import_all() -> None:
    """Import every module in mrdib_cli.models so their @register decorators run."""
    import importlib
    import pkgutil

    import mrdib_cli.models as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name != "base" and not mod.name.startswith("_"):
            importlib.import_module(f"mrdib_cli.models.{mod.name}")


def available() -> dict[str, type[Backbone]]:
    _import_all()
    return dict(sorted(_REGISTRY.items()))


def sampled_backbones() -> list[str]:
    """Backbones with a ``--minibatch sampled`` forward."""
    return [n for n, c in available().items() if c.sparse_tables]


def get_backbone(name: str) -> type[Backbone]:
    """Look up a backbone class by name; a one-line error lists the valid names."""
    reg = available()
    key = name.lower()
    if key not in reg:
        raise UsageError(f"unknown backbone '{name}' (available: {', '.join(reg)})")
    return reg[key]


def resolve_hparams(cls: type[Backbone], dataset_name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """defaults <- per-dataset defaults <- user overrides; unknown keys are errors, not ignored."""
    params = dict(cls.defaults)
    for ds_key, ds_defaults in cls.dataset_defaults.items():
        if dataset_name.lower().startswith(ds_key):
            params.update(ds_defaults)
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise UsageError(f"unknown hyper-parameter(s) for {cls.name}: {', '.join(unknown)} "
                         f"(valid: {', '.join(sorted(params))})")
    for k, v in overrides.items():
        default = params[k]
        wrong = UsageError(f"hyper-parameter '{k}' of {cls.name} must be {type(default).__name__}, got {v!r}")
        if isinstance(v, bool) and not isinstance(default, bool):  # YAML 'true' is an int to Python
            raise wrong
        if default is not None and not isinstance(v, type(default)):
            if isinstance(default, float) and isinstance(v, int):
                v = float(v)
            else:
                raise wrong
        _check_range(cls.name, k, v)
        params[k] = v
    return params


def _check_range(backbone: str, key: str, value: Any) -> None:
    """Values no backbone can use: layer counts and sizes below 1, non-finite numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"hyper-parameter '{key}' of {backbone} must be a finite number, got {value}")
    counts = "layer" in key or key.endswith(("_size", "_dim")) or key == "embedding_dim"
    if counts and isinstance(value, int) and value < 1:
        raise UsageError(f"hyper-parameter '{key}' of {backbone} must be a positive integer, got {value}")
