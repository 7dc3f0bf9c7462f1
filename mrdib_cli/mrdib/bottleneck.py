"""Variational information bottleneck (VIB) for one modality: a Gaussian encoder and its closed-form KL.

MRdIB squeezes each modality representation h_m through q(z_m | h_m) = N(mu(h_m), diag sigma^2(h_m)) so that
detail irrelevant to the interactions is dropped (docs/mrdib.md). The backbone then continues with
z_m in place of h_m, so what is scored really passed the bottleneck.

Design decisions (the paper is silent on them; see docs/mrdib.md):
- **The bottleneck works in the signal's own units.** The prior is N(0, I), so the KL measures information
  relative to unit scale; but a hook representation such as LGMRec's X_m W_m has a per-dimension std of
  about 0.05. Encoding h directly, the KL keeps pushing sigma towards 1, i.e. towards noise 20 times the
  signal (it fell from ~190 to ~7 nats within 20 epochs on Scientific and took the modality signal with it,
  whatever alpha_kl was, because Adam moves the log-variance head at its own rate). So h is divided by its
  scale s (the std of h measured when the plug-in attaches, stored as a buffer) before the Gaussian heads,
  and the decoder multiplies by s again: sigma = 1 now means "noise as large as the signal", and the
  trade-off between the KL and the backbone's BPR is decided by alpha_kl, as in the paper.
- When the bottleneck size equals the hook dimension (the default), the mu head starts as the identity, so
  an untrained plug-in leaves the backbone unchanged (up to the initial noise); the backbone then only sees
  what the bottleneck lets through as training goes on. With a different bottleneck size the heads are
  Xavier-initialised and a linear ``decoder`` maps z back to the hook dimension the backbone expects.
- The log-variance bias starts at ``log(init_noise^2)``: the initial noise is ``init_noise`` times the
  signal's scale.
- Optionally (``centre_logvar``) the log-variance head sees h minus the items' mean (detached), so an offset
  that all items share cannot move every log-variance at once; the mu head still sees h itself. Off by
  default (the stored results were trained without it); see docs/mrdib.md for when it matters (MMGCN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


def gaussian_kl(mu: Tensor, logvar: Tensor, prior_var: float = 1.0) -> Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, p^2 I)) per row, p^2 = ``prior_var``:
    0.5 * sum_d ((mu^2 + sigma^2) / p^2 - log sigma^2 + log p^2 - 1)."""
    if prior_var == 1.0:
        return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(dim=-1)
    return 0.5 * ((mu.pow(2) + logvar.exp()) / prior_var - logvar + math.log(prior_var) - 1.0).sum(dim=-1)


def reparameterise(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): differentiable in mu and logvar."""
    eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device, generator=generator)
    return torch.addcmul(mu, torch.exp(0.5 * logvar), eps)


def _fold(weight: Tensor, bias: Tensor, k: int, mu_scale: float, lv_scale: float,
          mu_bias_scale: float) -> tuple[Tensor, Tensor]:
    """The head's weight and bias with the scale factors folded in (a 2k x d matrix, not the item table)."""
    w, b = weight.clone(), bias.clone()
    if mu_scale != 1.0:
        w[:k].mul_(mu_scale)
    w[k:].mul_(lv_scale)
    if mu_bias_scale != 1.0:
        b[:k].mul_(mu_bias_scale)
    return w, b


def _sq_norm(x: Tensor) -> Tensor:
    """Row-wise squared L2 norm in one pass (``vecdot(x, x)`` writes the product table first)."""
    return torch.linalg.vector_norm(x, dim=-1).square()


def _clamp_mask(raw: Tensor, clamped: Tensor, lo: float, hi: float) -> Tensor | None:
    """Where the clamp is active (no sample gradient there; the bounds themselves pass, as with torch.clamp).

    On a CPU the boolean table costs two slow passes (a compare and a masked fill) and is almost always all
    False, so one min/max reduction decides whether it is needed (None: nothing clamped). On a GPU that
    decision would be a host sync per step, so the mask is always built there.
    """
    if raw.device.type == "cpu":
        lo_seen, hi_seen = torch.aminmax(raw)
        if lo <= float(lo_seen) and float(hi_seen) <= hi:
            return None
    return clamped != raw


class _SampleAndKL(torch.autograd.Function):
    """The training-time bottleneck in one hand-written pass each way (the hot path of every MRdIB step).

    Inputs: the hook representation ``h`` [N, d], the head's ``weight`` [2k, d] and ``bias`` [2k], the
    factor ``f``, the hook scale ``s`` and the prior's variance ``pv`` (Python floats). With
    ``mu = W_mu h / s + b_mu`` and ``logvar = clamp(W_lv h / s + b_lv)``, the outputs are
    ``f * (mu + sigma * eps)`` (eps ~ N(0, I)), the per-row KL of N(mu, sigma^2) to N(0, pv I), and the raw
    head output ``[f * mu | logvar before clamping]`` (no gradient; for diagnostics). With ``pv = 1`` no
    prior operation runs at all, so the default prior is bit-identical to the unit-prior code.

    The clamp of the log-variance is a numerical guard (exp() must not overflow), not part of the model, so
    the KL's gradient passes through it: the sample's gradient stops at a bound, as with ``torch.clamp``, but
    the KL, whose gradient 0.5 (sigma^2 - 1) always points back into the range, still pulls the head back.
    With ``torch.clamp`` semantics for the KL too, a head pushed past a bound got no gradient at all and stayed
    there: MMGCN on the demo at lr 5e-3 ended with every image log-variance clamped and a KL of 80,000-300,000
    nats per item (docs/mrdib.md). Steps where nothing is clamped are unaffected.

    Written out by hand because autograd's composition of the same maths (linear, split, clamp, exp, sqrt,
    pow, sum and their backwards, plus the scale folding) dispatches ~75 operations per modality and makes
    ~40 elementwise passes over the item table; this is ~25 operations and ~15 passes (CPU cost and, on a
    GPU, kernel launches). Equal to the composed reference (:func:`reparameterise`, :func:`gaussian_kl`) up
    to float rounding: see tests/mrdib/test_mrdib_bottleneck.py.
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor, f: float, s: float, lo: float,
                hi: float, pv: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
        k = weight.shape[0] // 2
        w, b = _fold(weight, bias, k, f / s, 1.0 / s, f)
        head = torch.addmm(b, h, w.t())  # [f * mu | raw logvar]
        m, lv_raw = head[:, :k], head[:, k:]
        lv = lv_raw.clamp(lo, hi)
        clamped = _clamp_mask(lv_raw, lv, lo, hi)
        lv_sum = lv.sum(-1)
        std = lv.mul_(0.5).exp_()
        noise = torch.randn_like(std).mul_(std)  # sigma * eps
        out = torch.add(m, noise, alpha=f)
        if pv == 1.0:
            kl = 0.5 * (_sq_norm(m) * (1.0 / (f * f)) + _sq_norm(std) - lv_sum - k)
        else:
            kl = 0.5 * ((_sq_norm(m) * (1.0 / (f * f)) + _sq_norm(std)) / pv - lv_sum + k * (math.log(pv) - 1.0))
        ctx.save_for_backward(h, w, m, std, noise, clamped)
        ctx.consts = (k, f, s, pv)
        ctx.mark_non_differentiable(head)
        return out, kl, head

    @staticmethod
    def backward(ctx, g_out: Tensor | None, g_kl: Tensor | None, _g_head: Tensor | None):
        h, w, m, std, noise, clamped = ctx.saved_tensors
        k, f, s, pv = ctx.consts
        if g_kl is None:
            g_kl = torch.zeros(m.shape[0], dtype=m.dtype, device=m.device)
        if g_out is None:
            g_out = torch.zeros_like(m)
        gk = g_kl.unsqueeze(-1)
        g_head = torch.empty(m.shape[0], 2 * k, dtype=m.dtype, device=m.device)
        g_mu, g_lv = g_head[:, :k], g_head[:, k:]  # gradients w.r.t. f * mu and logvar
        # d out / d (f mu) = 1; d kl / d (f mu) = mu / (f pv) = (f mu) / (f^2 pv)
        torch.addcmul(g_out, m, gk, value=1.0 / (f * f) if pv == 1.0 else 1.0 / (f * f * pv), out=g_mu)
        # d kl / d logvar = 0.5 (sigma^2 / pv - 1), passed through the clamp (it always points back into the
        # range); d out / d logvar = 0.5 f sigma eps, stopped where clamped (as torch.clamp would)
        torch.mul(std, std, out=g_lv)
        if pv != 1.0:
            g_lv.div_(pv)
        g_lv.sub_(1.0).mul_(gk * 0.5)
        g_lv.addcmul_(g_out, noise if clamped is None else noise.masked_fill(clamped, 0.0), value=0.5 * f)
        g_h = g_head @ w if ctx.needs_input_grad[0] else None
        g_w, g_b = _fold(g_head.t() @ h, g_head.sum(0), k, f / s, 1.0 / s, f)
        return g_h, g_w, g_b, None, None, None, None, None


@dataclass
class BottleneckOut:
    """One pass through a :class:`GaussianBottleneck` (full item table)."""

    out: Tensor  # what the backbone continues with: the hook's dimension and scale
    z: Tensor  # the bottleneck sample (mu at evaluation) times ``factor``, bottleneck dimension
    factor: float  # z / factor is the sample in the unit-scale bottleneck space
    mu_f: Tensor  # factor * mu (no gradient in training: for diagnostics)
    logvar_raw: Tensor  # the head's log sigma^2 before clamping (likewise)
    kl: Tensor | None  # per-row KL (computed with the sample; None at evaluation)
    prior_var: float = 1.0  # the prior N(0, prior_var I) the KL is measured against

    @property
    def logvar(self) -> Tensor:
        return self.logvar_raw.clamp(*GaussianBottleneck.LOGVAR_RANGE)

    def detach(self) -> BottleneckOut:
        return BottleneckOut(self.out.detach(), self.z.detach(), self.factor, self.mu_f.detach(),
                             self.logvar_raw.detach(), None if self.kl is None else self.kl.detach(),
                             self.prior_var)

    @property
    def mu(self) -> Tensor:
        """The posterior mean in the unit-scale bottleneck space (diagnostics)."""
        return self.mu_f / self.factor

    def unit_z(self, rows: Tensor) -> Tensor:
        """The sample at item indices ``rows`` in the unit-scale bottleneck space (MINE, synergy head)."""
        return self.z.index_select(0, rows) / self.factor

    def kl_rows(self) -> Tensor:
        return self.kl if self.kl is not None else gaussian_kl(self.mu, self.logvar, self.prior_var)


class GaussianBottleneck(nn.Module):
    """Encoder q(z | h) for one modality, with an optional decoder back to the hook dimension.

    ``forward(h, sample)`` returns a :class:`BottleneckOut`. The heads act on h / scale and the decoder
    multiplies by scale (see the module docstring); for the identity decoder both are folded into the head's
    weights at run time (a 2k x d matrix, not the item table), so in training the table is touched only by
    :class:`_SampleAndKL`.
    """

    #: log-variance is clamped to this range so exp() never overflows and sigma never collapses to 0 exactly
    LOGVAR_RANGE = (-20.0, 10.0)

    def __init__(self, in_dim: int, z_dim: int | None = None, init_noise: float = 0.1,
                 h_var: float = 1.0, centre_logvar: bool = False, prior_var: float = 1.0,
                 raw_units: bool = False) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.prior_var = prior_var
        self.raw_units = raw_units  # the heads see h itself, not h / scale (scale is then only a reference)
        self.centre_logvar = centre_logvar
        self.z_dim = z_dim or in_dim
        # one Linear for both heads ([mu | logvar]): one matmul instead of two on the full item set
        self.head = nn.Linear(in_dim, 2 * self.z_dim)
        self.decoder: nn.Module = nn.Identity() if self.z_dim == in_dim else nn.Linear(self.z_dim, in_dim)
        # the hook representation's scale (std): the heads see h / scale, the decoder returns to it
        self.register_buffer("scale", torch.tensor(math.sqrt(max(h_var, 1e-12))))
        self._scale_float: float | None = None  # cached float(scale); reset when a state dict is loaded
        self.register_load_state_dict_post_hook(lambda module, _keys: setattr(module, "_scale_float", None))
        self._init(init_noise)

    @property
    def identity_decoder(self) -> bool:
        return isinstance(self.decoder, nn.Identity)

    def _init(self, init_noise: float) -> None:
        k = self.z_dim
        with torch.no_grad():
            w_mu, w_lv = self.head.weight[:k], self.head.weight[k:]
            if k == self.in_dim:
                nn.init.eye_(w_mu)
            else:
                nn.init.xavier_uniform_(w_mu)
                nn.init.xavier_uniform_(self.decoder.weight)  # type: ignore[union-attr]
                nn.init.zeros_(self.decoder.bias)  # type: ignore[union-attr]
            # small weights: the initial variance is set by the bias, i.e. by the signal's scale
            nn.init.xavier_uniform_(w_lv, gain=0.01)
            self.head.bias[:k].zero_()
            self.head.bias[k:].fill_(math.log(max(init_noise, 1e-6) ** 2))

    def _scale_value(self) -> float:
        """The unit the heads work in as a Python float: the hook's std at attach, read from the buffer once
        (not per step: on a GPU a read is a sync), or 1 in raw units."""
        if self.raw_units:
            return 1.0
        return self.attach_std()

    def attach_std(self) -> float:
        """The hook input's std over items measured at attach (the health figures' reference)."""
        if self._scale_float is None:
            self._scale_float = float(self.scale)
        return self._scale_float

    def _factor(self) -> float:
        return self._scale_value() if self.identity_decoder else 1.0

    def decode(self, z: Tensor) -> Tensor:
        """z (unit-scale bottleneck space) -> the hook's dimension and scale: what the backbone continues with."""
        return self.decoder(z) * self._scale_value()

    def _head_bias(self, h: Tensor, centre: Tensor | None) -> Tensor:
        """The heads' bias. With ``centre_logvar`` the log-variance head sees h - c (c = ``centre``, or the mean
        of the rows of ``h``; detached): W_lv (h - c) / s + b_lv = W_lv h / s + (b_lv - W_lv c / s), so only a
        k-vector changes, never the item table."""
        b = self.head.bias
        if not self.centre_logvar:
            return b
        k = self.z_dim
        c = (h.mean(dim=0) if centre is None else centre).detach()
        return torch.cat([b[:k], b[k:] - (self.head.weight[k:] @ c) / self._scale_value()])

    def forward(self, h: Tensor, sample: bool, centre: Tensor | None = None) -> BottleneckOut:
        """``centre``: the items' mean of the hook input when ``h`` holds only some of the items (used only with
        ``centre_logvar``; default: the mean of ``h``'s rows)."""
        f, s, k = self._factor(), self._scale_value(), self.z_dim
        bias = self._head_bias(h, centre)
        if sample:
            z, kl, head = _SampleAndKL.apply(h, self.head.weight, bias, f, s, *self.LOGVAR_RANGE, self.prior_var)
        else:  # mu only (evaluation): the same folded head, left to autograd
            w, b = _fold(self.head.weight, bias, k, f / s, 1.0 / s, f)
            head = torch.addmm(b, h, w.t())
            z, kl = head[:, :k].contiguous(), None
        out = z if self.identity_decoder else self.decode(z)
        return BottleneckOut(out=out, z=z, factor=f, mu_f=head[:, :k], logvar_raw=head[:, k:], kl=kl,
                             prior_var=self.prior_var)
