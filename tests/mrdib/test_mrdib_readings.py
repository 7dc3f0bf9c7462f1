"""The readings the paper leaves open, one switch each: every option changes the loss as documented.

Closed forms on the toy backbone's small tensors; the default ("current") reading is checked to be the one
every other MRdIB test runs.
"""

from __future__ import annotations

import math

import pytest
import torch

from mrdib_cli.errors import UsageError
from mrdib_cli.mrdib.bottleneck import GaussianBottleneck, gaussian_kl
from mrdib_cli.mrdib.objectives import DEFAULT_PRESET, PRESETS, MRdIB, MRdIBConfig

from mrdib_toy import ToyMM, make_batch


def _terms(options: dict, seed: int = 0, dropout: float = 0.2) -> tuple[MRdIB, ToyMM, dict[str, torch.Tensor]]:
    """One training forward of the toy backbone with the plug-in built from ``options`` (seeded)."""
    torch.manual_seed(seed)
    toy = ToyMM()
    toy.dropout.p = dropout
    plugin = MRdIB(**{"preset": "current", **options})  # each switch against the current reading
    plugin.attach(toy)
    toy.train()
    plugin.train()
    batch = make_batch()
    torch.manual_seed(seed + 1)
    plugin.before_step(batch)
    emb = toy.propagate()
    terms = toy.loss(batch, emb)
    terms.update(plugin.loss(batch, emb))
    return plugin, toy, terms


def test_mean_reduced_kl_is_the_summed_kl_over_the_dimension() -> None:
    plug_sum, _, t_sum = _terms({"kl_reduction": "sum", "no_redundancy": True})
    plug_mean, _, t_mean = _terms({"kl_reduction": "mean", "no_redundancy": True})
    k = {m: plug_sum.bottlenecks[m].z_dim for m in plug_sum.hooks}
    expected = sum(float(plug_sum.logs[f"kl_{m}"]) / k[m] for m in plug_sum.hooks) * plug_sum.cfg.alpha_kl
    assert float(t_mean["kl"].detach()) == pytest.approx(expected, rel=1e-6)
    assert float(t_sum["kl"].detach()) == pytest.approx(expected * k["image"], rel=1e-6)  # both hooks have d = 8
    # the logged figure stays nats per item whatever the reduction
    assert float(plug_mean.logs["kl_image"]) == pytest.approx(float(plug_sum.logs["kl_image"]), rel=1e-6)


@pytest.mark.parametrize("prior_var", [0.25, 4.0])
def test_the_prior_scale_enters_the_kl_in_closed_form(prior_var: float) -> None:
    g = torch.Generator().manual_seed(3)
    mu, logvar = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    # KL(N(mu, s^2) || N(0, p^2)) per dimension = log(p / s) + (s^2 + mu^2) / (2 p^2) - 1/2
    s2 = logvar.exp()
    ref = (0.5 * math.log(prior_var) - 0.5 * logvar + (s2 + mu ** 2) / (2 * prior_var) - 0.5).sum(-1)
    assert torch.allclose(gaussian_kl(mu, logvar, prior_var), ref, atol=1e-5)


@pytest.mark.parametrize("prior_var", [1.0, 0.25])
def test_the_fused_sample_uses_the_prior_in_value_and_gradient(prior_var: float) -> None:
    torch.manual_seed(0)
    h = torch.randn(20, 6, requires_grad=True)
    bn = GaussianBottleneck(6, h_var=float(h.detach().var(0).mean()), prior_var=prior_var)
    res = bn(h, sample=True)
    ref = gaussian_kl(res.mu_f / res.factor, res.logvar_raw, prior_var)
    assert torch.allclose(res.kl, ref, rtol=1e-5, atol=1e-5)
    # gradient of the KL w.r.t. the heads against autograd's composition of the same closed form
    res.kl.sum().backward()
    fused = bn.head.weight.grad.clone()
    bn.head.weight.grad = None
    k, s = bn.z_dim, bn.attach_std()
    head = torch.addmm(bn.head.bias, h.detach() / s, bn.head.weight.t())
    gaussian_kl(head[:, :k], head[:, k:], prior_var).sum().backward()
    assert torch.allclose(fused, bn.head.weight.grad, rtol=1e-4, atol=1e-5)


def test_raw_units_leave_the_input_undivided() -> None:
    torch.manual_seed(0)
    h = 0.05 * torch.randn(30, 4)
    scaled = GaussianBottleneck(4, h_var=float(h.var(0).mean()))
    raw = GaussianBottleneck(4, h_var=float(h.var(0).mean()), raw_units=True)
    raw.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        a, b = scaled(h, sample=False), raw(h, sample=False)
    # identity mu heads: mu = h / s in scaled units, h itself in raw units; the KL's mean part ~ 1/s^2 apart
    assert torch.allclose(a.mu * scaled.attach_std(), h, atol=1e-6)
    assert torch.allclose(b.mu, h, atol=1e-6)
    ratio = float(a.mu.pow(2).sum() / b.mu.pow(2).sum())
    assert ratio == pytest.approx(1.0 / scaled.attach_std() ** 2, rel=1e-4)


def test_dual_path_adds_the_clean_bpr() -> None:
    # without dropout, the backbone's forward differs between the two paths only by the bottleneck's noise
    plugin, toy, terms = _terms({"dual_path": True, "no_redundancy": True}, dropout=0.0)
    assert "bpr_clean" in terms
    # the clean BPR by hand: the same backbone with every bottleneck passing its mean (the plug-in in eval mode
    # samples nothing); the trainer sums the terms, so the backbone's BPR is the clean plus the noisy one
    toy.eval()
    plugin.eval()
    batch = make_batch()
    with torch.no_grad():
        clean = toy.loss(batch, toy.propagate())["bpr"]
    assert float(terms["bpr_clean"].detach()) == pytest.approx(float(clean), rel=1e-5)
    _, _, single = _terms({"no_redundancy": True}, dropout=0.0)
    assert "bpr_clean" not in single
    # the noisy path is untouched by the switch: same seed, same backbone BPR
    assert float(single["bpr"].detach()) == pytest.approx(float(terms["bpr"].detach()), rel=1e-6)
    assert float(terms["bpr_clean"].detach()) != pytest.approx(float(terms["bpr"].detach()), rel=1e-6)


def test_independent_decoders_have_separate_parameters_and_gradients() -> None:
    plugin2, toy2, _ = _terms({"unique_decoders": "independent", "no_redundancy": True, "no_kl": True})
    tables = plugin2.user_tables
    assert set(tables) == {"image", "text"} and not plugin2.unique_maps
    assert tables["image"].weight.data_ptr() != tables["text"].weight.data_ptr()
    # the image unique BPR, recomputed from the image table: it moves only that table, never the backbone's users
    batch = make_batch()
    p_img = plugin2.user_tables["image"](batch.users)
    item = plugin2._state["image"].out.index_select(0, torch.cat([batch.pos, batch.neg]))
    n = batch.pos.shape[0]
    loss_img = torch.nn.functional.softplus((p_img * item[n:]).sum(-1) - (p_img * item[:n]).sum(-1)).mean()
    assert float(loss_img.detach()) == pytest.approx(float(plugin2.logs["uni_image"]), rel=1e-6)
    loss_img.backward()
    assert plugin2.user_tables["image"].weight.grad.abs().sum() > 0
    assert plugin2.user_tables["text"].weight.grad is None
    assert toy2.theta_u.grad is None
    shared, _, _ = _terms({"no_redundancy": True})
    assert len(shared.user_tables) == 0


def test_input_placement_encodes_the_modality_input_with_its_own_encoder() -> None:
    plugin, toy, terms = _terms({"placement": "input", "units": "raw", "no_redundancy": True})
    # the bottleneck's dimension is the feature's (12 image, 10 text), not the projection's (8)
    assert plugin.bottlenecks["image"].in_dim == toy.feat_v.shape[1]
    assert plugin.bottlenecks["text"].in_dim == toy.feat_t.shape[1]
    assert plugin.latest("image").z.shape == toy.feat_v.shape
    # the unique term scores the backbone's projection of z, which the plug-in observed at the hook
    assert plugin._proj["image"].shape == (toy.feat_v.shape[0], 8)
    assert "uni" in terms and "kl" in terms
    # an untrained identity mu head: at evaluation the backbone sees its input unchanged
    toy.eval()
    plugin.eval()
    with torch.no_grad():
        assert torch.allclose(toy.propagate().item[:, 8:16], toy.proj_v(toy.feat_v), atol=1e-5)


def test_always_gate_passes_the_redundancy_gradient_when_the_estimate_is_negative() -> None:
    from mrdib_cli.mrdib.mine import SeparableCritic, redundancy_term

    torch.manual_seed(0)
    x = torch.randn(16, 4, requires_grad=True)
    y = torch.randn(16, 4)
    critic = SeparableCritic(4, 4, hidden=8)
    grads = {}
    for gate in ("positive", "always"):
        x.grad = None
        dv = redundancy_term(critic, x, y, 0.05, "step", gate=gate)
        dv.backward()
        grads[gate] = x.grad.abs().sum().item()
    assert float(dv.detach()) < 0  # independent x, y and an untrained critic: a (spurious) negative estimate
    assert grads["positive"] == 0.0 and grads["always"] > 0


def test_presets_resolve_to_the_documented_values_and_explicit_options_win() -> None:
    paper = MRdIBConfig.resolve({"preset": "paper"})
    assert (paper.kl_reduction, paper.prior_std, paper.placement, paper.units, paper.dual_path,
            paper.unique_decoders) == ("mean", 0.5, "input", "raw", True, "independent")
    # the reading fields default to the default preset's values: --help's defaults are what --mrdib trains
    assert MRdIBConfig.resolve({}) == MRdIBConfig() == MRdIBConfig.resolve({"preset": DEFAULT_PRESET})
    current = MRdIBConfig.resolve({"preset": "current"})
    assert (current.kl_reduction, current.placement, current.dual_path) == ("sum", "projection", False)
    mixed = MRdIBConfig.resolve({"preset": "paper", "dual_path": False, "alpha_kl": 1e-3})
    assert mixed.dual_path is False and mixed.alpha_kl == 1e-3 and mixed.placement == "input"
    # every preset names every reading, so a preset never inherits another's leftovers
    assert set(PRESETS["paper"]) == set(PRESETS["current"])
    with pytest.raises(UsageError, match="mrdib-preset"):
        MRdIBConfig.resolve({"preset": "lab"})
    with pytest.raises(UsageError, match="--placement must be one of"):
        MRdIB(placement="raw")
    with pytest.raises(UsageError, match="--prior-std must be > 0"):
        MRdIB(prior_std=0.0)
