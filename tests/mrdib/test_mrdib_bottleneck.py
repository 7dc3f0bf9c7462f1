"""The Gaussian bottleneck: closed-form KL against Monte Carlo, reparameterisation, eval determinism."""

from __future__ import annotations

import math

import pytest
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
    r = bn(h, sample=False)
    out = r.out
    assert torch.allclose(out, h, atol=1e-6) and torch.equal(r.z, r.mu_f)  # mu head starts as the identity
    assert r.kl is None
    assert torch.equal(out, bn(h, sample=False).out)
    s1, s2 = bn(h, sample=True).out, bn(h, sample=True).out
    assert not torch.equal(s1, s2)
    # initial noise is ~10% of the signal's std
    ratio = float((s1 - h).detach().std() / h.std())
    assert 0.05 < ratio < 0.2, ratio


def test_bottleneck_with_other_size_decodes_back_to_hook_dim() -> None:
    bn = GaussianBottleneck(8, 3)
    r = bn(torch.randn(7, 8), sample=True)
    assert r.out.shape == (7, 8) and r.z.shape == r.mu.shape == r.logvar.shape == (7, 3)
    assert r.kl is not None and r.kl.shape == (7,)


def test_bottleneck_is_scale_free() -> None:
    """h and 100*h give the same Gaussian (hence the same KL): the prior's unit scale means 'the signal's scale'."""
    torch.manual_seed(0)
    h = torch.randn(40, 8) * 0.05
    a = GaussianBottleneck(8, None, init_noise=0.1, h_var=float(h.var(0).mean()))
    b = GaussianBottleneck(8, None, init_noise=0.1, h_var=float((100 * h).var(0).mean()))
    b.load_state_dict({**a.state_dict(), "scale": b.scale})
    ra, rb = a(h, sample=False), b(100 * h, sample=False)
    mu_a, lv_a, mu_b, lv_b, out_b = ra.mu, ra.logvar, rb.mu, rb.logvar, rb.out
    assert torch.allclose(mu_a, mu_b, atol=1e-5) and torch.allclose(lv_a, lv_b, atol=1e-5)
    assert torch.allclose(out_b, 100 * h, atol=1e-4)  # and the backbone gets its own scale back
    kl = gaussian_kl(mu_a, lv_a).mean()
    # unit-scale mu (~0.5 * d) plus the initial noise's cost (0.5 * d * (0.01 - log 0.01 - 1)), not thousands
    assert 0.5 * 8 * 0.5 < float(kl.detach()) < 0.5 * 8 * (1.5 + 0.01 - math.log(0.01) - 1)


def _reference(bn: GaussianBottleneck, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bottleneck written the plain autograd way (the specification the fused pass must equal)."""
    x = h / bn.scale
    mu, raw = bn.head(x).split(bn.z_dim, dim=-1)
    if bn.centre_logvar:  # the log-variance head sees x minus the items' mean (a constant for the gradient)
        raw = raw - x.mean(dim=0).detach() @ bn.head.weight[bn.z_dim:].t()
    logvar = raw.clamp(*bn.LOGVAR_RANGE)
    z = reparameterise(mu, logvar)
    # the KL sees the clamped value but its gradient passes the clamp (straight through)
    return bn.decoder(z) * bn.scale, gaussian_kl(mu, raw + (logvar - raw).detach())


@pytest.mark.parametrize("z_dim,centre", [(None, False), (5, False), (None, True), (5, True)])
def test_fused_sample_and_kl_equal_the_plain_autograd_version(z_dim: int | None, centre: bool) -> None:
    """Values and gradients (heads, input) of the hand-written pass equal the composed reference, including
    log-variances past the clamp (only the KL's gradient passes there) and a KL that weights rows unevenly;
    with and without the centred log-variance head."""
    torch.manual_seed(0)
    h = (torch.randn(30, 8) * 0.05 + 0.02).requires_grad_()
    bn = GaussianBottleneck(8, z_dim, init_noise=0.1, h_var=float(h.detach().var(0).mean()), centre_logvar=centre)
    with torch.no_grad():  # push a few log-variances past both clamp bounds
        bn.head.bias[bn.z_dim] = 30.0
        bn.head.bias[bn.z_dim + 1] = -40.0
        bn.head.weight[bn.z_dim:] += 0.3 * torch.randn(bn.z_dim, 8)
    g_out, w_kl = torch.randn(30, 8), torch.rand(30)
    grads = []
    for fn in (lambda: (lambda r: (r.out, r.kl))(bn(h, sample=True)), lambda: _reference(bn, h)):
        torch.manual_seed(1)
        out, kl = fn()
        ((out * g_out).sum() + (kl * w_kl).sum()).backward()
        grads.append((out.detach(), kl.detach(), h.grad.clone(), bn.head.weight.grad.clone(),
                      bn.head.bias.grad.clone()))
        h.grad, bn.head.weight.grad, bn.head.bias.grad = None, None, None
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (a - b).abs().max()
    lv_grad = grads[0][4][bn.z_dim:]
    # past a bound only the KL's gradient 0.5 (sigma^2 - 1) * w_kl arrives, and it points back into the range
    lo, hi = bn.LOGVAR_RANGE
    assert torch.isclose(lv_grad[0], 0.5 * (math.exp(hi) - 1) * w_kl.sum(), rtol=1e-4)
    assert torch.isclose(lv_grad[1], 0.5 * (math.exp(lo) - 1) * w_kl.sum(), rtol=1e-4)
    assert float(lv_grad[2:].abs().min()) > 0


def test_centred_log_variance_ignores_an_offset_all_items_share() -> None:
    """With ``centre_logvar`` a shift shared by every item moves mu but no log-variance (MMGCN's image hook
    grows such an offset on the demo, and the plain head turned it into clamped log-variances)."""
    torch.manual_seed(0)
    h = torch.randn(50, 8)
    shift = 40.0 * torch.randn(8)  # far larger than the items' spread
    for centre in (False, True):
        bn = GaussianBottleneck(8, init_noise=0.1, h_var=1.0, centre_logvar=centre)
        with torch.no_grad():
            bn.head.weight[8:] += 0.3 * torch.randn(8, 8)
        for sample in (False, True):
            a, b = bn(h, sample=sample), bn(h + shift, sample=sample)
            assert not torch.allclose(a.mu, b.mu)
            assert torch.allclose(a.logvar_raw, b.logvar_raw, atol=1e-4) is centre, (centre, sample)
        # rows of a larger table: the given centre (that table's mean) decides, not the rows' own mean
        part = bn(h[:10], sample=False, centre=h.mean(dim=0))
        assert torch.allclose(part.logvar_raw, bn(h, sample=False).logvar_raw[:10], atol=1e-5)


@pytest.mark.parametrize("bias", [30.0, -40.0])
def test_a_log_variance_pushed_past_the_clamp_comes_back(bias: float) -> None:
    """The clamp guards exp() only: minimising the KL brings a head that starts beyond a bound back into the
    range (with torch.clamp's zero gradient it would stay there for ever)."""
    torch.manual_seed(0)
    h = torch.randn(64, 8)
    bn = GaussianBottleneck(8, None, init_noise=0.1, h_var=1.0)
    with torch.no_grad():
        bn.head.bias[bn.z_dim:] = bias
    opt = torch.optim.Adam(bn.parameters(), lr=0.5)
    lo, hi = bn.LOGVAR_RANGE
    for _ in range(100):
        opt.zero_grad()
        bn(h, sample=True).kl.mean().backward()
        opt.step()
    raw = bn(h, sample=True).logvar_raw
    assert lo < float(raw.min()) and float(raw.max()) < hi


def test_loading_a_state_dict_updates_the_cached_scale() -> None:
    """The scale is read into a Python float once; a checkpoint loaded later (directly or through a parent
    module, as the trainer's resume does) must replace it, or a resumed run would decode at the old scale."""
    torch.manual_seed(0)
    h = torch.randn(20, 8)
    parent = torch.nn.ModuleDict({"image": GaussianBottleneck(8, None, h_var=1.0)})
    before = parent["image"](h, sample=False).out
    assert torch.allclose(before, h, atol=1e-6)
    state = {**parent.state_dict(), "image.scale": torch.tensor(4.0)}  # a bottleneck fitted at scale 4
    parent.load_state_dict(state)
    after = parent["image"](h, sample=False).out
    # identity init: mu = h / 4 (unit space), out = 4 * mu = h for the mu part, but the bias is scaled by 4
    assert parent["image"]._scale_value() == 4.0
    with torch.no_grad():
        parent["image"].head.bias[:8] = 0.5
    shifted = parent["image"](h, sample=False).out
    assert torch.allclose(shifted - after, torch.full_like(h, 2.0), atol=1e-5)  # 4 * 0.5, not 1 * 0.5
