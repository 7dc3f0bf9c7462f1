"""The MRdIB plug-in: bottleneck + unique + redundancy (+ optional explicit synergy) objectives.

Total loss (paper form, docs/mrdib.md):

    L = L_backbone + alpha_kl * sum_m KL_m + alpha_red * L_R + alpha_uni * L_U  [+ alpha_syn * L_S_head]

- **Bottleneck**: a :class:`GaussianBottleneck` per hook point; the backbone continues with z_m (a sample
  in training, mu at evaluation). KL_m is averaged over the batch's items (positives and negatives).
- **Synergy**: the backbone's own fused BPR, which already scores the z-based representation. With
  ``synergy_head="mlp"`` an explicit fusion head f([z_v, z_t]) is also trained with its own BPR.
- **Unique**: per-modality BPR with score_m(u, i) = <p_m(u), A_m dec(z_m)(i)>, dec(z_m) the bottleneck sample
  as the backbone receives it (the hook's dimension and scale), p_m the backbone's ``views["user_<m>"]`` if it
  has one, else the user embedding; A_m is a linear map only when the dims differ.
- **Redundancy**: MINE/DV estimate of I(Z_v; Z_t) on the batch's distinct positive items (standardised per
  dimension); the encoders minimise it while it is positive and the critic maximises it, through a
  gradient-reversal layer on the critic's parameters (default) or with the critic's own optimiser step in
  :meth:`after_step` (``minmax="step"``). See :func:`mrdib_cli.mrdib.mine.redundancy_term`.

Nothing here knows any backbone: it only uses the hook points, ``Embeddings.user`` and ``views``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrdib_cli.errors import UsageError
from mrdib_cli.models.base import Backbone, Batch, Embeddings
from mrdib_cli.mrdib.bottleneck import BottleneckOut, GaussianBottleneck
from mrdib_cli.mrdib.mine import CriticTrainer, make_critic, redundancy_term
from mrdib_cli.options import options_from_dataclass
from mrdib_cli.training.plugin import Plugin


#: named readings of what the paper leaves open (docs/mrdib.md): "current" is this toolkit's first reading,
#: "paper" the conventions of the paper's lab. The reading fields of MRdIBConfig default to DEFAULT_PRESET's.
PRESETS: dict[str, dict[str, Any]] = {
    "current": {"kl_reduction": "sum", "prior_std": 1.0, "placement": "projection", "units": "scaled",
                "dual_path": False, "unique_decoders": "shared", "red_gate": "positive"},
    "paper": {"kl_reduction": "mean", "prior_std": 0.5, "placement": "input", "units": "raw",
              "dual_path": True, "unique_decoders": "independent", "red_gate": "positive"},
}
#: the reading ``--mrdib`` uses when no preset is named (chosen by the readings study, docs/results.md)
DEFAULT_PRESET = "paper"
_READING = PRESETS[DEFAULT_PRESET]


@dataclass
class MRdIBConfig:
    """Hyper-parameters of the plug-in (names as in the paper where it has them)."""

    alpha_kl: float = 0.005  # alpha1: weight of sum_m KL_m
    alpha_red: float = 0.05  # alpha2: weight of the MINE redundancy term
    alpha_uni: float = 0.005  # alpha3: weight of the per-modality (unique) BPR terms
    alpha_syn: float = 0.005  # weight of the optional explicit synergy head's BPR
    bottleneck_dim: int | None = None  # None: the hook dimension (the backbone needs no decoder)
    synergy_head: str = "none"  # "none" (the backbone's fused BPR is the synergy term) or "mlp"
    no_kl: bool = False
    no_redundancy: bool = False
    no_unique: bool = False
    mib_only: bool = False  # bottleneck (+KL) only: no redundancy, no unique, no synergy head
    critic: str = "separable"  # MINE critic: "separable" g(x)^T h(y) (all pairs) or "concat" MLP([x, y])
    critic_hidden: int = 128
    mine_items: int = 512  # at most this many distinct positive items of the batch per MINE estimate (0: all)
    minmax: str = "reverse"  # "reverse" (gradient reversal, one pass) or "step" (critic's own optimiser step)
    critic_lr: float = 1e-3  # only for minmax="step" (with "reverse" the trainer's optimiser moves the critic)
    critic_steps: int = 1  # only for minmax="step"
    init_noise: float = 0.1  # initial sigma as a fraction of the hook representation's std
    centre_logvar: bool = False  # the log-variance head sees the hook input minus the items' mean
    # the readings the paper leaves open (docs/mrdib.md, "Readings the paper leaves open"); defaults: today's
    preset: str = DEFAULT_PRESET  # a named set of the readings below (PRESETS); explicit options override it
    kl_reduction: str = _READING["kl_reduction"]  # "sum" over the bottleneck's dimensions, or "mean" (/ dim)
    prior_std: float = _READING["prior_std"]  # the prior N(0, prior_std^2 I) of the KL
    placement: str = _READING["placement"]  # bottleneck on the backbone's projected hook or its "input"
    units: str = _READING["units"]  # "scaled": heads see h / std(h at attach); "raw": h itself
    dual_path: bool = _READING["dual_path"]  # the backbone's BPR also scores the clean (z = mu) representation
    unique_decoders: str = _READING["unique_decoders"]  # unique BPR's user side: "shared" or one per modality
    red_gate: str = _READING["red_gate"]  # MINE gradient to the encoders: "positive" (estimate > 0) or "always"

    #: option -> allowed values, for the readings chosen by name
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "synergy_head": ("none", "mlp"), "critic": ("separable", "concat"), "minmax": ("reverse", "step"),
        "kl_reduction": ("sum", "mean"), "placement": ("projection", "input"), "units": ("scaled", "raw"),
        "unique_decoders": ("shared", "independent"), "red_gate": ("positive", "always")}

    def validate(self) -> None:
        for opt in options_from_dataclass(type(self), {}):  # the same types the flags convert to
            value = getattr(self, opt.name)
            if not opt.accepts(value):
                raise UsageError(f"MRdIB option {opt.name} must be {opt.words}, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):  # NaN passes every comparison below
                raise UsageError(f"MRdIB option {opt.name} must be a finite number, got {value}")
        for k in ("alpha_kl", "alpha_red", "alpha_uni", "alpha_syn", "critic_lr", "init_noise"):
            if getattr(self, k) < 0:
                raise UsageError(f"--{k.replace('_', '-')} must be >= 0, got {getattr(self, k)}")
        if self.critic_hidden < 1:
            raise UsageError(f"--critic-hidden must be a positive integer, got {self.critic_hidden}")
        if self.bottleneck_dim is not None and self.bottleneck_dim < 1:
            raise UsageError(f"--bottleneck-dim must be a positive integer, got {self.bottleneck_dim}")
        for key, allowed in self.CHOICES.items():
            if getattr(self, key) not in allowed:
                raise UsageError(f"--{key.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                 f"got '{getattr(self, key)}'")
        if self.preset not in PRESETS:
            raise UsageError(f"--mrdib-preset must be one of {', '.join(PRESETS)}, got '{self.preset}'")
        if not self.prior_std > 0:
            raise UsageError(f"--prior-std must be > 0, got {self.prior_std}")
        if self.mine_items < 0 or self.mine_items == 1:
            raise UsageError(f"mine_items must be 0 (all) or >= 2, got {self.mine_items}")
        if self.critic_steps < 1:
            raise UsageError(f"critic_steps must be >= 1, got {self.critic_steps}")

    @property
    def use_kl(self) -> bool:
        return not self.no_kl and self.alpha_kl > 0

    @property
    def use_red(self) -> bool:
        return not (self.no_redundancy or self.mib_only) and self.alpha_red > 0

    @property
    def use_uni(self) -> bool:
        return not (self.no_unique or self.mib_only) and self.alpha_uni > 0

    @property
    def use_syn_head(self) -> bool:
        return self.synergy_head == "mlp" and not self.mib_only and self.alpha_syn > 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MRdIBConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UsageError(f"unknown MRdIB option(s): {', '.join(unknown)} (valid: {', '.join(sorted(names))})")
        return cls(**d)

    @classmethod
    def resolve(cls, options: dict[str, Any], base: MRdIBConfig | None = None) -> MRdIBConfig:
        """``base`` (default: the defaults), then the preset named in ``options`` (or base's), then ``options``.

        So ``{"preset": "paper", "alpha_kl": 1e-3}`` is the paper's reading with one alpha changed, and a
        config.json's plug-in section (the preset plus every resolved value) resolves to itself.
        """
        start = asdict(base or cls())
        preset = options.get("preset", start["preset"])
        if preset not in PRESETS:
            raise UsageError(f"--mrdib-preset must be one of {', '.join(PRESETS)}, got '{preset}'")
        return cls.from_dict({**start, **PRESETS[preset], **options})


def bpr(pos: Tensor, neg: Tensor) -> Tensor:
    """BPR(s) = -mean log sigmoid(s+ - s-), in the numerically stable softplus form."""
    return F.softplus(neg - pos).mean()


class MRdIB(Plugin):
    """The MRdIB plug-in objective (see the module docstring)."""

    name = "mrdib"
    #: warn when a hook's spread over items moves this many times (either way) from its spread at attach
    DRIFT_WARN = 10.0
    #: warn when more than this share of a bottleneck's log-variances lies outside the clamp range
    CLAMPED_WARN = 0.01

    def __init__(self, config: MRdIBConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = config or MRdIBConfig()
        if overrides:
            cfg = MRdIBConfig.resolve(overrides, cfg)
        cfg.validate()
        self.cfg = cfg
        self.bottlenecks = nn.ModuleDict()
        self.unique_maps = nn.ModuleDict()  # item-side alignment A_m (only where dims differ)
        self.critics = nn.ModuleDict()  # one per modality pair, key "a__b"
        self.user_tables = nn.ModuleDict()  # unique_decoders="independent": modality m's own user vectors
        self._proj: dict[str, Tensor] = {}  # placement="input": the projected hook of the last forward
        self._clean = False  # inside the dual path's clean forward (z = mu, nothing stored)
        self.synergy = None  # optional explicit fusion head
        self.hooks: tuple[str, ...] = ()
        self.pairs: tuple[tuple[str, str], ...] = ()
        self._critic_trainers: dict[str, CriticTrainer] = {}
        self._state: dict[str, BottleneckOut] = {}
        # the hook input at the last evaluation: [mean over dims of the variance over items, mean square of the
        # per-dimension item mean]
        self._h_moments: dict[str, Tensor] = {}
        # item-local backbones on CPU: the batch's distinct items (sorted) and where pos ++ neg sit among them
        self._rows: Tensor | None = None
        self._inv: Tensor | None = None
        self._state_inv: Tensor | None = None  # _inv if the last forward transformed only those rows, else None
        self._last_z: dict[str, Tensor] | None = None
        self._backbone: list[Backbone] = []  # a list, so the backbone is not registered as a submodule

    # ---------------------------------------------------------------------------------- attaching
    def refuses_backbone(self, backbone: type[Backbone]) -> str | None:
        if not backbone.get_hook_points():
            return (f"backbone '{backbone.name}' has no modality hook points: --mrdib needs a multimodal "
                    f"backbone (e.g. vbpr, lgmrec)")
        if self.cfg.dual_path and backbone.training_mode != "bpr":
            return (f"the dual path (dual_path, on in the paper preset) scores the backbone's BPR twice, and "
                    f"'{backbone.name}' trains without a BPR term: add --no-dual-path (or --mrdib-preset current)")
        return None

    def attach(self, backbone: Backbone) -> None:
        """Probe the backbone's hook dimensions (one deterministic forward), build heads, install hooks."""
        why = self.refuses_backbone(type(backbone))
        if why:
            raise UsageError(why)
        points, cfg = backbone.get_hook_points(), self.cfg
        dims, inputs, emb = self._probe(backbone, points)
        if not dims:
            raise UsageError(f"backbone '{backbone.name}' formed no modality representation (no image/text "
                             f"features loaded?): --mrdib needs at least one modality")
        on_input = cfg.placement == "input"
        if on_input and set(inputs) != set(dims):
            raise UsageError(f"backbone '{backbone.name}' does not pass its modality inputs through "
                             f"modality_input(): use --placement projection with it")
        device = next(iter(dims.values()))[2]
        self.hooks = tuple(m for m in points if m in dims)
        for m in self.hooks:
            d_in, h_var, _ = inputs[m] if on_input else dims[m]
            self.bottlenecks[m] = GaussianBottleneck(d_in, cfg.bottleneck_dim, cfg.init_noise, h_var,
                                                     cfg.centre_logvar, cfg.prior_std ** 2, cfg.units == "raw")
            self._unique_side(m, dims[m][0], emb)
        self.pairs = tuple(itertools.combinations(self.hooks, 2))
        for a, b in self.pairs:
            self.critics[f"{a}__{b}"] = make_critic(self.cfg.critic, self.bottlenecks[a].z_dim,
                                                    self.bottlenecks[b].z_dim, self.cfg.critic_hidden)
        if self.cfg.synergy_head == "mlp":
            d_cat = sum(self.bottlenecks[m].z_dim for m in self.hooks)
            d_user = emb.user.shape[-1]
            self.synergy = nn.Sequential(nn.Linear(d_cat, d_user), nn.Tanh(), nn.Linear(d_user, d_user))
            for mod in self.synergy:
                if isinstance(mod, nn.Linear):
                    nn.init.xavier_uniform_(mod.weight)
                    nn.init.zeros_(mod.bias)
        self.to(device)
        if self.cfg.minmax == "step":
            self._critic_trainers = {k: CriticTrainer(c, lr=self.cfg.critic_lr, steps=self.cfg.critic_steps)
                                     for k, c in self.critics.items()}
        self._backbone = [backbone]
        for m in self.hooks:
            backbone.install_hook(m, self._hook, on_input=on_input)
            if on_input:
                backbone.install_hook(m, self._observe)

    def refuses_sampled(self) -> str | None:
        # the hint names the settings at fault: both are the default preset's, and a user who chose the current
        # preset and turned one of them back on needs that one, not the preset again
        dual, raw = self.cfg.dual_path, self.cfg.placement == "input"
        hint = ("add --mrdib-preset current (or --no-dual-path --placement projection)" if dual and raw else
                "add --no-dual-path" if dual else "add --placement projection")
        if dual:
            return ("the dual path (dual_path, on in the paper preset) scores a second, whole-catalogue forward, "
                    f"which the sampled step does not run: {hint}")
        if raw:
            return ("the input placement (placement: input, the paper preset's) encodes every item's raw features, "
                    f"which the sampled step does not project: {hint}")
        return None

    def _unique_side(self, m: str, d_item: int, emb: Embeddings) -> None:
        """The unique term's parameters for modality ``m`` whose item side has ``d_item`` columns: an
        independent user table (``unique_decoders="independent"``), or the alignment A_m to the backbone's
        user side when the dimensions differ."""
        if self.cfg.unique_decoders == "independent":
            table = nn.Embedding(emb.user.shape[0], d_item)
            nn.init.xavier_uniform_(table.weight)
            self.user_tables[m] = table
            return
        d_user = emb.views.get(f"user_{m}", emb.user).shape[-1]
        if d_user != d_item:
            lin = nn.Linear(d_item, d_user, bias=False)
            nn.init.xavier_uniform_(lin.weight)
            self.unique_maps[m] = lin

    @staticmethod
    def _probe(backbone: Backbone, points: tuple[str, ...]) -> tuple[dict[str, tuple[int, float, Any]],
                                                                      dict[str, tuple[int, float, Any]], Embeddings]:
        """One eval-mode forward recording the hooks and the modality inputs (dimension, variance over items,
        device); the RNG state is restored so seeding is unaffected."""
        seen: dict[str, tuple[int, float, Any]] = {}
        seen_in: dict[str, tuple[int, float, Any]] = {}

        def recorder(into: dict[str, tuple[int, float, Any]]):
            def record(name: str, h: Tensor) -> Tensor:
                into[name] = (int(h.shape[-1]), float(h.detach().float().var(dim=0).mean()), h.device)
                return h
            return record

        saved, saved_in = dict(backbone._hooks), dict(backbone._input_hooks)
        for m in points:
            backbone._hooks[m] = recorder(seen)
            backbone._input_hooks[m] = recorder(seen_in)
        was = backbone.training
        devices = [d for d in {p.device for p in backbone.parameters()} if d.type == "cuda"]
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                backbone.eval()
                emb = backbone.propagate()
        finally:
            backbone.train(was)
            for table, old in ((backbone._hooks, saved), (backbone._input_hooks, saved_in)):
                table.clear()
                table.update(old)
        return seen, seen_in, emb

    # ---------------------------------------------------------------------------------- the hook
    def _sampling(self) -> bool:
        """Sample z only when both the plug-in and the backbone train (eval embeddings always use mu), and not
        in the dual path's clean forward."""
        return self.training and bool(self._backbone) and self._backbone[0].training and not self._clean

    def before_step(self, batch: Batch) -> None:
        """On an item-local backbone (VBPR), on CPU: note the batch's distinct items for :meth:`_hook`.

        The bottleneck then encodes and samples only those rows (about 45% of Baby's items at batch 2048)
        instead of the whole item table; the loss is the same function of the same random variables, since
        such a backbone's loss never reads the other rows. Not on a GPU: ``torch.unique`` would be a host
        sync per step, and there the full table costs a few kernels whatever its size.
        """
        self._rows = self._inv = None
        backbone = self._backbone[0] if self._backbone else None
        if (backbone is None or not backbone.item_local_hooks or not self._sampling()
                or batch.pos.device.type != "cpu" or self.cfg.placement == "input"):
            return
        idx = batch.pos if batch.neg is None else torch.cat([batch.pos, batch.neg])
        self._rows, self._inv = torch.unique(idx, return_inverse=True)

    def _observe(self, name: str, h: Tensor) -> Tensor:
        """With ``placement="input"``: the projected hook, left as it is, is the unique term's item side."""
        if not self._clean:
            self._proj[name] = h
        return h

    def _hook(self, name: str, h: Tensor) -> Tensor:
        if self._clean:  # the dual path's clean forward: z = mu with gradients, and nothing is recorded
            return self.bottlenecks[name](h, sample=False).out
        sample = self._sampling()
        if not sample:  # evaluation only (once per epoch): the scale and offset the backbone gives this hook now
            var, mean = torch.var_mean(h.detach().float(), dim=0)
            self._h_moments[name] = torch.stack([var.mean(), mean.pow(2).mean()])
        rows = self._rows if sample else None
        self._state_inv = None if rows is None else self._inv
        if rows is None:
            res = self.bottlenecks[name](h, sample=sample)
            self._state[name] = res
            return res.out
        # only the batch's rows pass the bottleneck; the others keep h, which an item-local loss never reads
        bn = self.bottlenecks[name]
        centre = h.mean(dim=0) if bn.centre_logvar else None  # every item's mean, as at evaluation
        res = bn(h.index_select(0, rows), sample=True, centre=centre)
        self._state[name] = res
        return h.index_copy(0, rows, res.out)

    def latest(self, name: str) -> BottleneckOut:
        """The bottleneck outputs of the last forward pass for hook ``name`` (for diagnostics).

        Every item's row after an evaluation-mode forward; during a CPU training step of an item-local
        backbone only the batch's distinct items (see :meth:`before_step`).
        """
        if name not in self._state:
            raise RuntimeError(f"hook '{name}' was not called by the backbone's last forward pass")
        return self._state[name]

    # ---------------------------------------------------------------------------------- objectives
    def item_view(self, name: str, z: Tensor) -> Tensor:
        """The item side of modality ``name``'s own score: A_m dec(z_m) (A_m = identity when dims agree, and
        with independent decoders). With ``placement="input"`` z lives in the input's space, and the item side
        is the backbone's projection of it as observed at the hook in the last forward (``z`` = that forward's)."""
        side = self._proj[name] if self.cfg.placement == "input" else self.bottlenecks[name].decode(z)
        return side if name in self.user_tables else self._aligned(name, side)

    def unique_users(self, name: str, emb: Embeddings) -> Tensor:
        """Every user's vector in modality ``name``'s own score (the unique term's decoder)."""
        if name in self.user_tables:
            return self.user_tables[name].weight
        view = f"user_{name}"
        return emb.views[view] if view in emb.views else emb.user

    def _aligned(self, name: str, x: Tensor) -> Tensor:
        """A_m x for a decoded representation x (what the backbone received)."""
        return self.unique_maps[name](x) if name in self.unique_maps else x

    @staticmethod
    def user_rows(name: str, emb: Embeddings, users: Tensor) -> Tensor:
        """p_m at ``users``: the backbone's modality-specific user representation if it has one, else the user
        embedding, through :meth:`Embeddings.rows` (one gather shared with the backbone's loss)."""
        view = f"user_{name}"
        return emb.rows(view if view in emb.views else "user", users)

    def loss(self, batch: Batch, emb: Embeddings) -> dict[str, Tensor]:
        """The weighted MRdIB terms for this batch (the bottleneck outputs come from this propagate()).

        z is gathered once per modality (at pos ++ neg): on CPU the backward of an index op (a scatter-add)
        costs more than the small heads themselves.
        """
        cfg = self.cfg
        missing = [m for m in self.hooks if m not in self._state]
        if missing:
            raise RuntimeError(f"MRdIB: hook(s) {missing} were not called during propagate()")
        logs: dict[str, Tensor] = {}  # detached tensors: converted once per epoch, not synced every step
        terms: dict[str, Tensor] = {}
        has_neg = batch.neg is not None
        n_pos = batch.pos.shape[0]
        # rows of the stored bottleneck tables: item ids, or positions among the batch's items (before_step)
        idx = self._state_inv
        if idx is None:
            idx = torch.cat([batch.pos, batch.neg]) if has_neg else batch.pos
        out_b: dict[str, Tensor] = {}  # the decoded sample as the backbone received it, at pos ++ neg
        kl_sum = None
        for m in self.hooks:
            st = self._state[m]
            if cfg.use_uni and has_neg:
                out_b[m] = (self._proj[m] if cfg.placement == "input" else st.out).index_select(0, idx)
            # KL per item over the item set (computed with the sample), then averaged over the batch's items:
            # the same value as KL of the gathered rows, but only a vector is gathered/scattered in backward
            kl_m = st.kl_rows().index_select(0, idx).mean()
            logs[f"kl_{m}"] = kl_m.detach()  # nats per item whatever the reduction: a health figure
            if cfg.kl_reduction == "mean":  # the mean over every element: the sum over dimensions / dimension
                kl_m = kl_m / self.bottlenecks[m].z_dim
            kl_sum = kl_m if kl_sum is None else kl_sum + kl_m
        if cfg.use_kl and kl_sum is not None:
            terms["kl"] = cfg.alpha_kl * kl_sum

        if cfg.use_uni and has_neg:
            uni = None
            for m in self.hooks:
                if m in self.user_tables:  # an independent decoder: modality m's own user vectors
                    p, s_i = self.user_tables[m](batch.users), out_b[m]
                else:
                    p, s_i = self.user_rows(m, emb, batch.users), self._aligned(m, out_b[m])
                l_m = bpr((p * s_i[:n_pos]).sum(-1), (p * s_i[n_pos:]).sum(-1))
                logs[f"uni_{m}"] = l_m.detach()
                uni = l_m if uni is None else uni + l_m
            if uni is not None:
                terms["uni"] = cfg.alpha_uni * uni

        if cfg.use_syn_head and self.synergy is not None and has_neg:
            z_b = [self._state[m].unit_z(idx) for m in self.hooks]
            fused = self.synergy(torch.cat(z_b, dim=-1))
            u = emb.rows("user", batch.users)
            l_s = bpr((u * fused[:n_pos]).sum(-1), (u * fused[n_pos:]).sum(-1))
            logs["syn"] = l_s.detach()
            terms["syn"] = cfg.alpha_syn * l_s

        if cfg.use_red and self.pairs:
            # distinct positive items: "joint" must really be one item's two modalities
            red_items = torch.unique(idx[:n_pos])
            if cfg.mine_items and red_items.numel() > cfg.mine_items:
                # a random subset keeps the all-pairs critic's cost fixed (mine_items^2 pairs)
                keep = torch.randperm(red_items.numel(), device=red_items.device)[:cfg.mine_items]
                red_items = red_items[keep]
            # unit-scale z (the stored sample is z times the hook's scale): the critic standardises its inputs
            # with a small epsilon, which must not be compared with a tiny hook scale
            zr = {m: self._state[m].unit_z(red_items) for m in self.hooks}
            red = None
            for a, b in self.pairs:
                mi = redundancy_term(self.critics[f"{a}__{b}"], zr[a], zr[b], cfg.alpha_red, cfg.minmax,
                                     gate=cfg.red_gate)
                red = mi if red is None else red + mi
            assert red is not None
            logs["mine"] = red.detach()
            terms["red"] = cfg.alpha_red * red
            self._last_z = {m: v.detach() for m, v in zr.items()} if cfg.minmax == "step" else None
        if cfg.dual_path and self._sampling():
            terms["bpr_clean"] = self._clean_bpr(batch)
        self.logs = logs
        return terms

    def _clean_bpr(self, batch: Batch) -> Tensor:
        """The dual path's second term: the backbone's own BPR with every bottleneck passing z = mu.

        Why a second forward: the backbone's BPR already scores the noisy sample; scoring the clean mean as well
        (the paper's lab's convention) keeps the ranking signal of mu even while the noise is large. It costs
        one more backbone forward per step.
        """
        backbone = self._backbone[0]
        self._clean = True
        try:
            return backbone.loss(batch, backbone.propagate())["bpr"]
        finally:
            self._clean = False

    def after_step(self, batch: Batch, emb: Embeddings) -> None:
        """With ``minmax="step"``: the critic's ascent step on the batch's detached z (the max side)."""
        last = self._last_z
        self._last_z = None
        self._rows = self._inv = self._state_inv = None
        # drop the references to this step's graph early (the next propagate() rebuilds them)
        self._state = {k: v.detach() for k, v in self._state.items()}
        if last is None or not self._critic_trainers:
            return
        crit = 0.0
        for a, b in self.pairs:
            crit += self._critic_trainers[f"{a}__{b}"].step(last[a], last[b], standardised=True)
        self.logs["mine_critic"] = crit

    def health(self) -> tuple[dict[str, float], dict[str, str]]:
        """Per modality, from the last evaluation forward (every item, z = mu):

        - ``nats_<m>``: the mean closed-form KL per item, i.e. how much information the bottleneck passes;
        - ``clamped_<m>``: the share of log-variances outside the clamp range (the sample's gradient stops
          there, so a large share means the head has run away);
        - ``spread_<m>``: the hook input's spread over items now (its std) over the spread at attach, which
          is the unit the bottleneck and its KL work in (see the module docstring of ``bottleneck``);
        - ``offset_<m>``: the part all items share (the RMS of the per-dimension mean over items) in that
          unit. It tells nothing about any item, yet the KL's mean part pays 0.5 offset^2 nats per dimension
          for it unless the mu head cancels it.

        Problems (one line each): more than 1% clamped, or the spread moved tenfold. (MMGCN at lr 5e-3 on the
        demo: the image spread stays at 0.6-0.9 while the offset jumps from ~2 to 13 and then 70, and the
        log-variance head, linear in the input, runs away with it: docs/mrdib.md.)
        """
        figures: dict[str, float] = {}
        problems: dict[str, str] = {}
        for m in self.hooks:
            st, moments = self._state.get(m), self._h_moments.get(m)
            if st is None or st.kl is not None or moments is None:
                continue  # the last forward was a training step: nothing measured on every item
            bn = self.bottlenecks[m]
            lo, hi = bn.LOGVAR_RANGE
            raw = st.logvar_raw
            nats = float(st.kl_rows().mean())  # closed form: an evaluation forward stores no sampled KL
            clamped = float(((raw < lo) | (raw > hi)).float().mean())
            var, mean_sq = (max(float(v), 0.0) for v in moments)
            ref = bn.attach_std()
            spread, offset = math.sqrt(var) / ref, math.sqrt(mean_sq) / ref
            figures.update({f"nats_{m}": nats, f"clamped_{m}": clamped, f"spread_{m}": spread,
                            f"offset_{m}": offset})
            where = f"MRdIB {m} bottleneck ({nats:,.0f} nats per item pass)"
            if clamped > self.CLAMPED_WARN:
                problems[f"clamped_{m}"] = (
                    f"{where}: {clamped:.0%} of its log-variances lie outside the clamp range [{lo:g}, {hi:g}], "
                    f"its head has run away; the offset all items share is {offset:.3g}x the items' spread at "
                    f"attach, their spread {spread:.2g}x"
                    + ("" if bn.centre_logvar else "; --centre-logvar keeps a shared offset out of the log-variances")
                    + " (docs/mrdib.md, 'Health, per epoch')")
            if not 1 / self.DRIFT_WARN <= spread <= self.DRIFT_WARN:
                problems[f"spread_{m}"] = (
                    f"{where}: the backbone's {m} representation now spreads {spread:.3g}x as wide over items as "
                    f"when MRdIB attached, the unit its KL is measured in (docs/mrdib.md, 'Health, per epoch')")
        return figures, problems

    def config(self) -> dict[str, Any]:
        """Every option (defaults included) plus, under ``resolved``, what attach() derived from the backbone."""
        active = [t for t, on in (("kl", self.cfg.use_kl), ("red", self.cfg.use_red and bool(self.pairs)),
                                  ("uni", self.cfg.use_uni), ("syn", self.cfg.use_syn_head)) if on]
        return {"name": self.name, **asdict(self.cfg),
                "resolved": {"hooks": list(self.hooks),
                             "bottleneck_dims": {m: self.bottlenecks[m].z_dim for m in self.hooks},
                             "unique_maps": sorted(self.unique_maps.keys()), "active_terms": active}}
