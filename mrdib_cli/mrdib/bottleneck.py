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

import torch
from torch import Tensor, nn


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per row: 0.5 * sum_d (mu^2 + sigma^2 - log sigma^2 - 1)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(dim=-1)


def reparameterise(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): differentiable in mu and logvar."""
    eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device, generator=generator)
    return torch.addcmul(mu, torch.exp(0.5 * logvar), eps)


class GaussianBottleneck(nn.Module):
    """Encoder q(z | h) for one modality, with an optional decoder back to the hook dimension.

    ``forward(h, sample)`` returns ``(z_for_backbone, z, mu, logvar)``: ``z`` lives in the (unit-scale)
    bottleneck space (used by the redundancy term), ``z_for_backbone = decode(z)`` has the hook's dimension
    and scale.
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

    def encode(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """mu and (clamped) log sigma^2 of q(z | h)."""
        mu, logvar = self.head(h / self.scale).split(self.z_dim, dim=-1)
        return mu, logvar.clamp(*self.LOGVAR_RANGE)

    def decode(self, z: Tensor) -> Tensor:
        """z (bottleneck space) -> the hook's dimension and scale: what the backbone continues with."""
        return self.decoder(z) * self.scale

    def forward(self, h: Tensor, sample: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(h)
        z = reparameterise(mu, logvar) if sample else mu
        return self.decode(z), z, mu, logvar
