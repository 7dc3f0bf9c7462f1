"""The MRdIB plug-in against a toy backbone: hooks, terms, gradients, ablations, eval, inference cost."""

from __future__ import annotations

import pytest
import torch

from mrdib_cli.errors import UsageError
from mrdib_cli.mrdib.objectives import MRdIB, MRdIBConfig

from mrdib_toy import NoModality, ToyMM, make_batch


def _attached(toy: ToyMM, **kw) -> MRdIB:
    plugin = MRdIB(**{"preset": "current", **kw})  # the closed forms below are the current reading's
    plugin.attach(toy)
    toy.train()
    plugin.train()
    return plugin


def test_refuses_backbone_without_modalities() -> None:
    with pytest.raises(UsageError, match="no modality hook points"):
        MRdIB().attach(NoModality())


def test_bad_options_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="synergy-head"):
        MRdIB(synergy_head="attention")
    with pytest.raises(UsageError, match="alpha-kl"):
        MRdIB(alpha_kl=-1.0)
    with pytest.raises(UsageError, match="minmax"):
        MRdIB(minmax="both")
    with pytest.raises(UsageError, match="unknown MRdIB option"):
        MRdIB(alpha_foo=1.0)


def test_attach_builds_heads_from_probed_dims_and_keeps_rng(toy: ToyMM) -> None:
    toy.train()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    dims, inputs, _ = MRdIB._probe(toy, ("image", "text"))
    assert torch.equal(torch.rand(3), expected)  # the probe forward consumed no random numbers
    assert toy.training and not toy._hooks and not toy._input_hooks  # mode and hooks restored
    assert {m: d[0] for m, d in dims.items()} == {"image": 8, "text": 8}
    assert {m: d[0] for m, d in inputs.items()} == {"image": 12, "text": 10}  # the features' own dims
    plugin = _attached(toy)
    assert plugin.hooks == ("image", "text")
    assert plugin.pairs == (("image", "text"),)
    # image has views["user_image"] with the hook's dim: no map; text falls back to the 3d user embedding
    assert set(plugin.unique_maps.keys()) == {"text"}
    assert plugin.unique_maps["text"].weight.shape == (24, 8)


def test_all_terms_and_logs_and_gradients(toy: ToyMM, batch) -> None:
    plugin = _attached(toy, synergy_head="mlp")
    emb = toy.propagate()
    terms = plugin.loss(batch, emb)
    assert set(terms) == {"kl", "red", "uni", "syn"}
    assert {"kl_image", "kl_text", "mine", "uni_image", "uni_text", "syn"} <= set(plugin.logs)
    total = sum(toy.loss(batch, emb).values()) + sum(terms.values())
    total.backward()
    for name, p in [("mu", plugin.bottlenecks["image"].head.weight), ("logvar", plugin.bottlenecks["text"].head.weight),
                    ("proj_v", toy.proj_v.weight), ("proj_t", toy.proj_t.weight),
                    ("unique map", plugin.unique_maps["text"].weight), ("synergy", plugin.synergy[0].weight),
                    ("theta_u", toy.theta_u)]:
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    # default min-max: gradient reversal, so the critic gets a gradient from the same backward pass
    critic = plugin.critics["image__text"]
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in critic.parameters())


def test_minmax_step_mode_uses_the_critics_own_optimiser(toy: ToyMM, batch) -> None:
    plugin = _attached(toy, minmax="step", critic="concat")
    emb = toy.propagate()
    terms = plugin.loss(batch, emb)
    sum(terms.values()).backward()
    critic = plugin.critics["image__text"]
    assert all(p.grad is None for p in critic.parameters())  # the encoder term treats the critic as constant
    assert float(plugin.bottlenecks["image"].head.weight.grad.abs().sum()) > 0
    before = [p.detach().clone() for p in critic.parameters()]
    plugin.after_step(batch, emb)
    assert any(not torch.equal(a, b) for a, b in zip(before, critic.parameters()))
    assert "mine_critic" in plugin.logs and all(p.grad is None for p in critic.parameters())


def test_redundancy_term_alone_reaches_the_encoders(toy: ToyMM, batch) -> None:
    plugin = _attached(toy, no_kl=True, no_unique=True)
    terms = plugin.loss(batch, toy.propagate())
    assert set(terms) == {"red"}
    terms["red"].backward()
    assert float(plugin.bottlenecks["image"].head.weight.grad.abs().sum()) > 0
    assert float(toy.proj_t.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("flags,expected", [
    ({}, {"kl", "red", "uni"}),
    ({"no_kl": True}, {"red", "uni"}),
    ({"no_redundancy": True}, {"kl", "uni"}),
    ({"no_unique": True}, {"kl", "red"}),
    ({"mib_only": True, "synergy_head": "mlp"}, {"kl"}),
    ({"alpha_red": 0.0}, {"kl", "uni"}),
])
def test_ablations(toy: ToyMM, batch, flags: dict, expected: set) -> None:
    plugin = _attached(toy, **flags)
    assert set(plugin.loss(batch, toy.propagate())) == expected
    assert set(plugin.config()["resolved"]["active_terms"]) == expected


def test_weights_scale_terms(batch) -> None:
    vals = {}
    for a in (0.01, 0.02):
        torch.manual_seed(0)
        toy = ToyMM()
        plugin = _attached(toy, alpha_kl=a, alpha_uni=a)
        toy.eval()  # mu path: identical z in both runs
        t = plugin.loss(batch, toy.propagate())
        vals[a] = (float(t["kl"].detach()), float(t["uni"].detach()))
    assert vals[0.02][0] == pytest.approx(2 * vals[0.01][0], rel=1e-5)
    assert vals[0.02][1] == pytest.approx(2 * vals[0.01][1], rel=1e-5)


def test_eval_is_deterministic_and_uses_mu(toy: ToyMM) -> None:
    plugin = _attached(toy)
    # train a little so mu is no longer the identity and sigma is not tiny
    opt = torch.optim.Adam(list(toy.parameters()) + list(plugin.parameters()), lr=0.05)
    for step in range(20):
        b = make_batch(seed=step)
        emb = toy.propagate()
        loss = sum(toy.loss(b, emb).values()) + sum(plugin.loss(b, emb).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        plugin.after_step(b, emb)
    # plug-in left in train mode on purpose: the backbone's eval switch alone must give mu
    u1, i1 = toy.embeddings_for_eval()
    u2, i2 = toy.embeddings_for_eval()
    assert torch.equal(u1, u2) and torch.equal(i1, i2)
    mu_v = plugin.latest("image").mu
    assert torch.equal(plugin.latest("image").z / plugin.latest("image").factor, mu_v)
    assert torch.allclose(i1[:, 8:16], plugin.bottlenecks["image"].decode(mu_v))
    # training forward samples
    toy.train()
    a = toy.propagate().item
    b = toy.propagate().item
    assert not torch.equal(a, b)


def test_plugin_does_not_change_inference_cost(toy: ToyMM) -> None:
    base_u, base_i = toy.embeddings_for_eval()
    plugin = _attached(toy)
    u, i = toy.embeddings_for_eval()
    # same ranking cost: same embedding matrices (shape and dtype); score(u, i) stays one inner product
    assert u.shape == base_u.shape and i.shape == base_i.shape and i.dtype == base_i.dtype
    # and an untrained plug-in (identity mu head) is exactly the backbone
    assert torch.allclose(u, base_u) and torch.allclose(i, base_i, atol=1e-6)
    # a smaller bottleneck is decoded back: still the same embedding shapes
    toy2 = ToyMM()
    _attached(toy2, bottleneck_dim=3)
    u3, i3 = toy2.embeddings_for_eval()
    assert u3.shape == base_u.shape and i3.shape == base_i.shape


def test_state_dict_round_trip(toy: ToyMM, batch) -> None:
    plugin = _attached(toy, synergy_head="mlp")
    sd = {k: v.clone() for k, v in plugin.state_dict().items()}
    assert any(k.startswith("critics.") for k in sd) and any(k.startswith("bottlenecks.") for k in sd)
    toy2 = ToyMM()
    plugin2 = MRdIB(MRdIBConfig.resolve({"preset": "current", "synergy_head": "mlp"}))
    plugin2.attach(toy2)
    plugin2.load_state_dict(sd)
    toy2.load_state_dict(toy.state_dict())
    assert torch.equal(toy.embeddings_for_eval()[1], toy2.embeddings_for_eval()[1])


def test_toy_training_with_plugin_learns(toy: ToyMM) -> None:
    """End to end on the toy: the summed loss goes down and every term stays finite."""
    plugin = _attached(toy, synergy_head="mlp")
    opt = torch.optim.Adam(list(toy.parameters()) + list(plugin.parameters()), lr=0.01)
    losses = []
    for step in range(150):
        b = make_batch(seed=100 + step % 10)
        emb = toy.propagate()
        terms = {**toy.loss(b, emb), **plugin.loss(b, emb)}
        loss = sum(terms.values())
        assert all(torch.isfinite(v) for v in terms.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        plugin.after_step(b, emb)
        losses.append(float(loss.detach()))
    assert sum(losses[-10:]) < sum(losses[:10])


def test_terms_do_not_depend_on_the_hook_representations_scale(batch) -> None:
    """The bottleneck works in the hook's own scale, so a backbone whose modality representations are 1000x
    smaller gets the same KL, MINE estimate and unique terms (same seeds), not a distorted estimate."""
    logs = []
    for scale in (1.0, 1e-3):
        torch.manual_seed(0)  # the projections' init draws from the global RNG
        toy = ToyMM()
        with torch.no_grad():
            for lin in (toy.proj_v, toy.proj_t):
                lin.weight.mul_(scale)
                lin.bias.mul_(scale)
        torch.manual_seed(0)
        plugin = _attached(toy)
        torch.manual_seed(1)
        plugin.loss(batch, toy.propagate())
        logs.append({k: float(v) for k, v in plugin.logs.items()})
    assert logs[0].keys() == logs[1].keys() and "mine" in logs[0]
    for k in ("kl_image", "kl_text", "mine"):
        assert logs[1][k] == pytest.approx(logs[0][k], rel=1e-3, abs=1e-4), k
