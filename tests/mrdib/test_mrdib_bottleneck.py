"""The Gaussian bottleneck: closed-form KL against Monte Carlo, reparameterisation, eval determinism."""

from __future__ import annotations

import math

import torch

from mrdib_cli.mrdib.bottleneck import GaussianBottleneck, gaussian_kl, reparameterise


def _log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return (-0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) / logvar.exp())).sum(-1)


def test_kl_closed_form_matches_monte_carlo() -> None:
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 6, generator=g)
    logvar = torch.randn(5, 6, generator=g).clamp(-2, 1)
    n = 200_000
    eps = torch.randn(n, 5, 6, generator=g)
    z = mu + (0.5 * logvar).exp() * eps
    mc = (_log_normal(z, mu, logvar) - _log_normal(z, torch.zeros_like(mu), torch.zeros_like(logvar))).mean(0)
    closed = gaussian_kl(mu, logvar)
    assert closed.shape == (5,)
    # the Monte-Carlo standard error here is ~0.01-0.03 nats; the KLs themselves are several nats
    assert torch.allclose(closed, mc, atol=0.08, rtol=0.02), (closed, mc)
    assert float(gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)).abs().max()) == 0.0


def test_reparameterised_sample_has_the_right_moments_and_gradients() -> None:
    mu = torch.full((100_000, 2), 1.5, requires_grad=True)
    logvar = torch.full((100_000, 2), math.log(0.25), requires_grad=True)
    z = reparameterise(mu, logvar)
    zd = z.detach()
    assert abs(float(zd.mean()) - 1.5) < 0.01 and abs(float(zd.std()) - 0.5) < 0.01
    z.sum().backward()
    assert mu.grad is not None and logvar.grad is not None and float(logvar.grad.abs().sum()) > 0


def test_bottleneck_identity_init_and_eval_uses_mu() -> None:
    torch.manual_seed(0)
    h = torch.randn(50, 8)
    bn = GaussianBottleneck(8, None, init_noise=0.1, h_var=float(h.var(0).mean()))
    out, z, mu, logvar = bn(h, sample=False)
    assert torch.allclose(out, h, atol=1e-6) and torch.equal(z, mu)  # mu head starts as the identity
    out1, *_ = bn(h, sample=False)
    assert torch.equal(out, out1)
    s1, *_ = bn(h, sample=True)
    s2, *_ = bn(h, sample=True)
    assert not torch.equal(s1, s2)
    # initial noise is ~10% of the signal's std
    ratio = float((s1 - h).detach().std() / h.std())
    assert 0.05 < ratio < 0.2, ratio


def test_bottleneck_with_other_size_decodes_back_to_hook_dim() -> None:
    bn = GaussianBottleneck(8, 3)
    out, z, mu, logvar = bn(torch.randn(7, 8), sample=True)
    assert out.shape == (7, 8) and z.shape == mu.shape == logvar.shape == (7, 3)


def test_bottleneck_is_scale_free() -> None:
    """h and 100*h give the same Gaussian (hence the same KL): the prior's unit scale means 'the signal's scale'."""
    torch.manual_seed(0)
    h = torch.randn(40, 8) * 0.05
    a = GaussianBottleneck(8, None, init_noise=0.1, h_var=float(h.var(0).mean()))
    b = GaussianBottleneck(8, None, init_noise=0.1, h_var=float((100 * h).var(0).mean()))
    b.load_state_dict({**a.state_dict(), "scale": b.scale})
    _, _, mu_a, lv_a = a(h, sample=False)
    out_b, _, mu_b, lv_b = b(100 * h, sample=False)
    assert torch.allclose(mu_a, mu_b, atol=1e-5) and torch.allclose(lv_a, lv_b, atol=1e-5)
    assert torch.allclose(out_b, 100 * h, atol=1e-4)  # and the backbone gets its own scale back
    kl = gaussian_kl(mu_a, lv_a).mean()
    # unit-scale mu (~0.5 * d) plus the initial noise's cost (0.5 * d * (0.01 - log 0.01 - 1)), not thousands
    assert 0.5 * 8 * 0.5 < float(kl) < 0.5 * 8 * (1.5 + 0.01 - math.log(0.01) - 1)
