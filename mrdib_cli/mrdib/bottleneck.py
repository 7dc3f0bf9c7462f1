"""Variational information bottleneck (VIB) for one modality: a Gaussian encoder and its closed-form KL.

MRdIB squeezes each modality representation h_m through q(z_m | h_m) = N(mu(h_m), diag sigma^2(h_m)) so that
detail irrelevant to the interactions is dropped (mrdib-method.md §2.1). The backbone then continues with
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
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per row: 0.5 * sum_d (mu^2 + sigma^2 - log sigma^2 - 1)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(dim=-1)


def reparameterise(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): differentiable in mu and logvar."""
    eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device, generator=generator)
    return torch.addcmul(mu, torch.exp(0.5 * logvar), eps)


class _SampleAndKL(torch.autograd.Function):
    """The training-time half of the bottleneck in one pass each way (the hot path of every MRdIB step).

    Inputs ``m = f * mu`` and ``logvar`` (``f`` a fixed positive factor, the hook's scale for the identity
    decoder); outputs ``m + f * sigma * eps`` (eps ~ N(0, I)) and the per-row KL of N(mu, sigma^2) to N(0, I).
    Written out by hand because autograd's version of the same maths costs ~40 elementwise passes over the
    item table per modality (clamp, exp, pow, sum, their backwards), which made VBPR's step 1.3x slower;
    this is ~15. Equal to the composed reference (:func:`reparameterise`, :func:`gaussian_kl`) up to float
    rounding: see tests/mrdib/test_mrdib_bottleneck.py.
    """

    @staticmethod
    def forward(ctx, m: Tensor, logvar_raw: Tensor, f: Tensor, lo: float, hi: float) -> tuple[Tensor, Tensor]:
        logvar = logvar_raw.clamp(lo, hi)
        # 0.5 where the clamp passes the gradient (bounds included, as torch.clamp), else 0
        half_in = (logvar == logvar_raw).to(m.dtype).mul_(0.5)
        var = torch.exp(logvar)
        noise = torch.randn(m.shape, dtype=m.dtype, device=m.device).mul_(var.sqrt()).mul_(f)  # f * sigma * eps
        out = m + noise
        kl = 0.5 * (torch.linalg.vecdot(m, m) * f.reciprocal().square() + var.sum(-1) - logvar.sum(-1)
                    - logvar.shape[-1])
        ctx.save_for_backward(m, var, noise, half_in, f)
        return out, kl

    @staticmethod
    def backward(ctx, g_out: Tensor | None, g_kl: Tensor | None):
        m, var, noise, half_in, f = ctx.saved_tensors
        if g_kl is None:
            g_kl = torch.zeros(m.shape[:-1], dtype=m.dtype, device=m.device)
        if g_out is None:
            g_out = torch.zeros_like(m)
        gk = g_kl.unsqueeze(-1)
        # d kl / d mu = mu (times 1/f^2 for m = f mu); d out / d m = 1
        g_m = torch.addcmul(g_out, m, gk * f.reciprocal().square())
        # d kl / d logvar = 0.5 (sigma^2 - 1); d out / d logvar = 0.5 f sigma eps; 0.5 and the clamp in half_in
        g_lv = torch.addcmul(gk.neg(), var, gk).addcmul_(g_out, noise).mul_(half_in)
        return g_m, g_lv, None, None, None


@dataclass
class BottleneckOut:
    """One pass through a :class:`GaussianBottleneck` (full item table)."""

    out: Tensor  # what the backbone continues with: the hook's dimension and scale
    z: Tensor  # the bottleneck sample (mu at evaluation) times ``factor``, bottleneck dimension
    factor: Tensor  # z / factor is the sample in the unit-scale bottleneck space
    mu_f: Tensor  # factor * mu
    logvar_raw: Tensor  # the head's log sigma^2 before clamping
    kl: Tensor | None  # per-row KL (computed with the sample; None at evaluation)

    @property
    def logvar(self) -> Tensor:
        return self.logvar_raw.clamp(*GaussianBottleneck.LOGVAR_RANGE)

    def detach(self) -> BottleneckOut:
        return BottleneckOut(self.out.detach(), self.z.detach(), self.factor, self.mu_f.detach(),
                             self.logvar_raw.detach(), None if self.kl is None else self.kl.detach())

    @property
    def mu(self) -> Tensor:
        """The posterior mean in the unit-scale bottleneck space (diagnostics)."""
        return self.mu_f / self.factor

    def unit_z(self, rows: Tensor) -> Tensor:
        """The sample at item indices ``rows`` in the unit-scale bottleneck space (MINE, synergy head)."""
        return self.z[rows] / self.factor

    def kl_rows(self) -> Tensor:
        return self.kl if self.kl is not None else gaussian_kl(self.mu, self.logvar)


class GaussianBottleneck(nn.Module):
    """Encoder q(z | h) for one modality, with an optional decoder back to the hook dimension.

    ``forward(h, sample)`` returns a :class:`BottleneckOut`. The heads act on h / scale and the decoder
    multiplies by scale (see the module docstring); for the identity decoder both are folded into the head's
    weights at run time (a 2d x d matrix, not the item table), so the table is touched only by the head's
    matmul and :class:`_SampleAndKL`.
    """

    #: log-variance is clamped to this range so exp() never overflows and sigma never collapses to 0 exactly
    LOGVAR_RANGE = (-20.0, 10.0)

    def __init__(self, in_dim: int, z_dim: int | None = None, init_noise: float = 0.1,
                 h_var: float = 1.0) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.z_dim = z_dim or in_dim
        # one Linear for both heads ([mu | logvar]): one matmul instead of two on the full item set
        self.head = nn.Linear(in_dim, 2 * self.z_dim)
        self.decoder: nn.Module = nn.Identity() if self.z_dim == in_dim else nn.Linear(self.z_dim, in_dim)
        # the hook representation's scale (std): the heads see h / scale, the decoder returns to it
        self.register_buffer("scale", torch.tensor(math.sqrt(max(h_var, 1e-12))))
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

    def _factor(self) -> Tensor:
        return self.scale if self.identity_decoder else torch.ones_like(self.scale)

    def encode_scaled(self, h: Tensor, f: Tensor) -> tuple[Tensor, Tensor]:
        """(f * mu, raw log sigma^2) of q(z | h), with 1/scale and f folded into the head's weights."""
        k, s = self.z_dim, self.scale
        w, b = self.head.weight, self.head.bias
        # rows of mu: factor * (W_mu h / s + b_mu); rows of logvar: W_lv h / s + b_lv
        row = torch.cat([(f / s).expand(k), s.reciprocal().expand(k)]).unsqueeze(1)
        bias = torch.cat([b[:k] * f, b[k:]])
        mu_f, logvar = F.linear(h, w * row, bias).split(k, dim=-1)
        return mu_f, logvar

    def decode(self, z: Tensor) -> Tensor:
        """z (unit-scale bottleneck space) -> the hook's dimension and scale: what the backbone continues with."""
        return self.decoder(z) * self.scale

    def forward(self, h: Tensor, sample: bool) -> BottleneckOut:
        f = self._factor()
        mu_f, logvar_raw = self.encode_scaled(h, f)
        if sample:
            z, kl = _SampleAndKL.apply(mu_f, logvar_raw, f, *self.LOGVAR_RANGE)
        else:
            z, kl = mu_f, None
        out = z if self.identity_decoder else self.decode(z)
        return BottleneckOut(out=out, z=z, factor=f, mu_f=mu_f, logvar_raw=logvar_raw, kl=kl)
