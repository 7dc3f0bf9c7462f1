"""MINE / Donsker-Varadhan estimator: analytic Gaussian MI, independence, stability, the critic's ascent."""

from __future__ import annotations

import math

import pytest
import torch

from mrdib_cli.mrdib.mine import (CriticTrainer, MineCritic, SeparableCritic, dv_bound, estimate_mi,
                                  shuffle_perm)


def _correlated(n: int, d: int, rho: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=g)
    return x, y


@pytest.mark.parametrize("d,rho,critic", [(2, 0.8, "concat"), (4, 0.6, "concat"), (2, 0.8, "separable"),
                                          (4, 0.6, "separable")])
def test_mine_recovers_gaussian_mi(d: int, rho: float, critic: str) -> None:
    x, y = _correlated(3000, d, rho, seed=d)
    truth = -0.5 * d * math.log(1 - rho**2)
    est = estimate_mi(x, y, steps=600, batch_size=256, seed=0, critic=critic)
    # DV with a finite critic and batch is a (slightly loose) lower bound: allow 20% or 0.15 nats
    assert abs(est["mi"] - truth) < max(0.15, 0.2 * truth), (est, truth)


@pytest.mark.parametrize("critic", ["concat", "separable"])
def test_mine_near_zero_for_independent_inputs(critic: str) -> None:
    x, y = _correlated(3000, 3, 0.0, seed=7)
    est = estimate_mi(x, y, steps=600, batch_size=256, seed=0, critic=critic)
    assert abs(est["mi"]) < 0.08, est


def test_dv_bound_is_stable_for_huge_critic_outputs() -> None:
    x, y = _correlated(64, 2, 0.5, seed=0)
    critic = MineCritic(2, 2, hidden=8)
    with torch.no_grad():
        critic.net[-1].bias.fill_(1e4)  # exp(1e4) overflows; logsumexp must not
    assert torch.isfinite(dv_bound(critic, x, y))
    sep = SeparableCritic(2, 2, hidden=8)
    with torch.no_grad():
        sep.g[-1].weight.mul_(1e3)
        sep.h[-1].weight.mul_(1e3)
    v = dv_bound(sep, x, y)
    assert torch.isfinite(v)


def test_shuffle_perm_has_no_fixed_points() -> None:
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 10, 257):
        p = shuffle_perm(n, torch.device("cpu"), g)
        assert sorted(p.tolist()) == list(range(n)) and not bool((p == torch.arange(n)).any())


def test_critic_trainer_ascends_and_leaves_no_gradients() -> None:
    torch.manual_seed(0)
    x, y = _correlated(512, 2, 0.9, seed=3)
    critic = MineCritic(2, 2, hidden=32)
    trainer = CriticTrainer(critic, lr=3e-3, steps=1)
    with torch.no_grad():
        before = float(dv_bound(critic, x, y, perm=torch.roll(torch.arange(512), 1)))
    for _ in range(300):
        trainer.step(x, y)
    with torch.no_grad():
        after = float(dv_bound(critic, x, y, perm=torch.roll(torch.arange(512), 1)))
    assert after > before + 0.5, (before, after)
    assert all(p.grad is None for p in critic.parameters())


def test_detached_critic_passes_gradient_to_inputs_only() -> None:
    critic = MineCritic(2, 2, hidden=8)
    x, y = _correlated(32, 2, 0.7, seed=1)
    x.requires_grad_(True)
    dv_bound(critic, x, y, critic_grad="detach").backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in critic.parameters())


def test_gradient_reversal_gives_the_critic_the_ascent_direction() -> None:
    torch.manual_seed(0)
    critic = SeparableCritic(3, 3, hidden=16)
    x, y = _correlated(50, 3, 0.7, seed=2)
    x.requires_grad_(True)
    w = 0.05
    (w * dv_bound(critic, x, y, critic_grad="reverse", reverse_scale=1 / w)).backward()
    rev = [p.grad.clone() for p in critic.parameters()]
    gx_rev = x.grad.clone()
    critic.zero_grad()
    x.grad = None
    dv_bound(critic, x, y).backward()  # separable critic + all pairs: deterministic, same value
    for r, p in zip(rev, critic.parameters()):
        assert torch.allclose(r, -p.grad, atol=1e-6)  # critic: minus the bound's gradient (ascent)
    assert torch.allclose(gx_rev, w * x.grad, atol=1e-6)  # encoder side: w * the bound's gradient (descent)


def test_min_max_moves_the_bound_both_ways() -> None:
    """One optimiser, one backward: the critic alone raises the bound, the inputs alone lower it."""
    torch.manual_seed(0)
    x0, y0 = _correlated(256, 2, 0.9, seed=4)
    critic = SeparableCritic(2, 2, hidden=32)
    w = 0.05
    opt = torch.optim.Adam(critic.parameters(), lr=3e-3)
    start = float(dv_bound(critic, x0, y0).detach())
    for _ in range(200):
        opt.zero_grad()
        (w * dv_bound(critic, x0, y0, critic_grad="reverse", reverse_scale=1 / w)).backward()
        opt.step()
    trained = float(dv_bound(critic, x0, y0).detach())
    assert trained > start + 0.5, (start, trained)
    x = x0.clone().requires_grad_(True)
    opt_x = torch.optim.Adam([x], lr=1e-2)
    for _ in range(100):
        opt_x.zero_grad()
        (w * dv_bound(critic, x, y0, critic_grad="reverse", reverse_scale=1 / w)).backward()
        opt_x.step()
    assert float(dv_bound(critic, x, y0).detach()) < trained - 0.5


def test_redundancy_term_gates_the_encoders_at_a_negative_estimate() -> None:
    """MI >= 0: the encoders follow the bound only while it is positive; the critic always ascends."""
    from mrdib_cli.mrdib.mine import redundancy_term, standardise

    torch.manual_seed(0)
    x, y = _correlated(128, 2, 0.9, seed=5)
    critic = SeparableCritic(2, 2, hidden=16)
    opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    for _ in range(100):  # a decent critic: positive estimate
        opt.zero_grad()
        (-dv_bound(critic, standardise(x), standardise(y))).backward()
        opt.step()
    for flip, positive in ((False, True), (True, False)):
        if flip:  # negating T makes joint pairs score low: a negative estimate
            with torch.no_grad():
                critic.h[-1].weight.neg_()
                critic.h[-1].bias.neg_()
        xg = x.clone().requires_grad_(True)
        critic.zero_grad()
        dv = redundancy_term(critic, xg, y, weight=0.05)
        (0.05 * dv).backward()
        enc = float(xg.grad.abs().sum())
        assert (float(dv.detach()) > 0) == positive and (enc > 0) == positive, (flip, float(dv.detach()), enc)
        assert all(float(p.grad.abs().sum()) > 0 for p in critic.parameters())


def test_redundancy_term_is_scale_invariant() -> None:
    critic = SeparableCritic(2, 2, hidden=16)
    x, y = _correlated(128, 2, 0.9, seed=6)
    from mrdib_cli.mrdib.mine import redundancy_term

    with torch.no_grad():
        a = redundancy_term(critic, x, y, 0.05)
        b = redundancy_term(critic, 1000 * x + 3, 0.1 * y, 0.05)
    assert float(a) == pytest.approx(float(b), abs=1e-4)


def test_fused_separable_bound_equals_the_composed_form() -> None:
    """The hand-written DV pass (values and gradients) against the plain autograd composition: masked diagonal,
    log-sum-exp over the n(n-1) off-diagonal pairs, including scores large enough to overflow a naive exp."""
    from mrdib_cli.mrdib.mine import _SeparableDV

    g = torch.Generator().manual_seed(0)
    for scale in (1.0, 40.0):
        a0, b0 = torch.randn(9, 4, generator=g, dtype=torch.float64) * scale, torch.randn(9, 4, generator=g,
                                                                                       dtype=torch.float64)
        grads = []
        for fused in (True, False):
            a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
            if fused:
                v = _SeparableDV.apply(a, b)
            else:
                s = a @ b.T
                off = s.masked_fill(torch.eye(9, dtype=torch.bool), float("-inf"))
                v = s.diagonal().mean() - (torch.logsumexp(off.reshape(-1), 0) - math.log(9 * 8))
            (3.0 * v).backward()
            grads.append((v.detach(), a.grad, b.grad))
        for x, y in zip(*grads):
            assert torch.isfinite(x).all() and torch.allclose(x, y, rtol=1e-9, atol=1e-9), (x, y)


def test_standardise_gradients_match_finite_differences() -> None:
    from mrdib_cli.mrdib.mine import standardise

    z = (torch.randn(12, 3, dtype=torch.float64) * 3 + 1).requires_grad_()
    y = standardise(z)
    assert torch.allclose(y.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(y.var(0, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5)
    assert torch.autograd.gradcheck(lambda t: standardise(t), (z,))
