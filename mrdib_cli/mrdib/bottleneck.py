"""Variational information bottleneck (VIB) for one modality: a Gaussian encoder and its closed-form KL.

MRdIB squeezes each modality representation h_m through q(z_m | h_m) = N(mu(h_m), diag sigma^2(h_m)) so that
detail irrelevant to the interactions is dropped (mrdib-method.md §2.1). The backbone then continues with
z_m in place of h_m, so what is scored really passed the bottleneck.

Design decisions (the paper is silent on them; see docs/mrdib.md):
- When the bottleneck size equals the hook dimension (the default), the mu head starts as the identity, so
  an untrained plug-in leaves the backbone unchanged; the backbone then only sees what the bottleneck lets
  through as training goes on. With a different bottleneck size the heads are Xavier-initialised and a
  linear ``decoder`` maps z back to the hook dimension the backbone expects.
- The log-variance bias starts at ``log(init_noise^2 * Var(h))``: the initial noise is a fixed fraction of
  the signal's own scale, whatever the feature scale of the backbone.
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

    ``forward(h, sample)`` returns ``(z_for_backbone, z, mu, logvar)``: ``z`` lives in the bottleneck space
    (used by the unique / redundancy terms), ``z_for_backbone`` has the hook's dimension.
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
        self._init(init_noise, h_var)

    def _init(self, init_noise: float, h_var: float) -> None:
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
            noise_var = max(init_noise, 1e-6) ** 2 * max(h_var, 1e-12)
            self.head.bias[:k].zero_()
            self.head.bias[k:].fill_(math.log(noise_var))

    def encode(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """mu and (clamped) log sigma^2 of q(z | h)."""
        mu, logvar = self.head(h).split(self.z_dim, dim=-1)
        return mu, logvar.clamp(*self.LOGVAR_RANGE)

    def forward(self, h: Tensor, sample: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(h)
        z = reparameterise(mu, logvar) if sample else mu
        return self.decoder(z), z, mu, logvar
