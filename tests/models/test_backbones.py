"""Backbones against their formulas: propagation, losses, hooks, deterministic evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.errors import MissingInputError, UsageError
from mrdib_cli.graphs import norm_adj_symmetric
from mrdib_cli.models.base import Batch, available, get_backbone, resolve_hparams
from mrdib_cli.models.lgmrec import info_nce_sum
from tests.synth_data import make_dataset


@pytest.fixture(scope="module")
def handle(tmp_path_factory):
    return DatasetHandle(make_dataset(tmp_path_factory.mktemp("m"), n_users=30, n_items=20, per_user=6))


def _build(name, handle, **over):
    torch.manual_seed(0)
    cls = get_backbone(name)
    return cls(handle, resolve_hparams(cls, handle.name, over))


def _batch(handle, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randint(0, handle.n_users, (n,), generator=g), torch.randint(0, handle.n_items, (n,), generator=g),
                 torch.randint(0, handle.n_items, (n,), generator=g))


def test_registry_and_hook_points():
    reg = available()
    assert {"lightgcn", "vbpr", "lgmrec"} <= set(reg)
    assert reg["lightgcn"].get_hook_points() == ()
    assert reg["vbpr"].get_hook_points() == ("image", "text") == reg["lgmrec"].get_hook_points()
    with pytest.raises(UsageError, match="unknown backbone"):
        get_backbone("nope")


def test_lightgcn_is_the_layer_mean_of_normalised_propagation(handle):
    m = _build("lightgcn", handle, n_layers=2)
    a = torch.from_numpy(norm_adj_symmetric(handle.csr("train")).toarray())
    e0 = torch.cat([m.user_embedding, m.item_embedding]).detach()
    expected = (e0 + a @ e0 + a @ a @ e0) / 3
    emb = m.propagate()
    np.testing.assert_allclose(torch.cat([emb.user, emb.item]).detach(), expected, rtol=1e-4, atol=1e-6)
    b = _batch(handle)
    terms = m.loss(b, emb)
    u, i, j = emb.user[b.users], emb.item[b.pos], emb.item[b.neg]
    bpr = -torch.log(1e-10 + torch.sigmoid((u * i).sum(1) - (u * j).sum(1))).mean()
    reg = (m.user_embedding[b.users].norm() + m.item_embedding[b.pos].norm() + m.item_embedding[b.neg].norm()) / 16
    assert torch.allclose(terms["bpr"], bpr) and torch.allclose(terms["reg"], 1e-2 * reg)
    with pytest.raises(UsageError, match="no modality hook point"):
        m.install_hook("image", lambda n, h: h)


def test_vbpr_per_modality_projection_equals_one_linear_over_the_concatenation(handle):
    m = _build("vbpr", handle)
    x = torch.cat([m.feat_image, m.feat_text], dim=1)
    w = torch.cat([m.proj["image"], m.proj["text"]], dim=0)
    emb = m.propagate()
    np.testing.assert_allclose(emb.item[:, 64:].detach(), (x @ w + m.bias).detach(), rtol=1e-5, atol=1e-6)
    assert emb.user.shape == (handle.n_users, 128) and emb.item.shape == (handle.n_items, 128)
    assert emb.views["user_image"].shape == (handle.n_users, 64)
    seen = {}

    def hook(name, h):
        seen[name] = h.shape
        return torch.zeros_like(h)

    m.install_hook("image", hook)
    m.install_hook("text", hook)
    emb2 = m.propagate()
    assert seen == {"image": (handle.n_items, 64), "text": (handle.n_items, 64)}
    assert torch.allclose(emb2.item[:, 64:], m.bias.expand(handle.n_items, -1))  # hooks feed the fused item
    assert set(m.loss(_batch(handle), emb2)) == {"bpr", "reg"}


def test_lgmrec_eval_is_deterministic_unless_eval_gumbel(handle):
    m = _build("lgmrec", handle)
    a, b = m.embeddings_for_eval(), m.embeddings_for_eval()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    m2 = _build("lgmrec", handle, eval_gumbel=True)
    c, d = m2.embeddings_for_eval(), m2.embeddings_for_eval()
    assert not torch.equal(c[1], d[1])
    m.train()
    e1, e2 = m.propagate(), m.propagate()
    assert not torch.equal(e1.item, e2.item)  # Gumbel noise + hyperedge dropout in training


def test_lgmrec_loss_terms_and_hooks(handle):
    m = _build("lgmrec", handle)
    m.train()
    calls = []
    m.install_hook("image", lambda n, h: calls.append((n, tuple(h.shape))) or h)
    m.install_hook("text", lambda n, h: calls.append((n, tuple(h.shape))) or h)
    emb = m.propagate()
    assert calls == [("image", (handle.n_items, 64)), ("text", (handle.n_items, 64))]
    assert emb.views["user_image"].shape == (handle.n_users, 64)
    b = _batch(handle)
    terms = m.loss(b, emb)
    assert set(terms) == {"bpr", "hcl", "reg"}
    # HCL: summed InfoNCE over the batch with every user (item) as a candidate, tau = 0.2
    gv, gt = emb.views["ghe_user_image"], emb.views["ghe_user_text"]
    nv, nt = torch.nn.functional.normalize(gv, dim=1), torch.nn.functional.normalize(gt, dim=1)
    manual = 0.0
    for u in b.users.tolist():
        manual += -torch.log(torch.exp(nv[u] @ nt[u] / 0.2) / torch.exp(nv[u] @ nt.T / 0.2).sum())
    assert torch.allclose(info_nce_sum(gv[b.users], gt[b.users], gt), manual, rtol=1e-4)
    sum(terms.values()).backward()
    assert m.trs["image"].grad is not None and m.hyper["text"].grad is not None


def test_missing_features_are_refused(tmp_path):
    h = DatasetHandle(make_dataset(tmp_path, features=False))
    with pytest.raises(MissingInputError, match="needs image features"):
        _build("lgmrec", h)
    with pytest.raises(MissingInputError, match="extract-features"):
        _build("vbpr", h)


def test_per_dataset_defaults():
    cls = get_backbone("lgmrec")
    assert resolve_hparams(cls, "baby", {})["hyper_num"] == 4
    assert resolve_hparams(cls, "clothing", {})["hyper_num"] == 64
    assert resolve_hparams(cls, "sports", {"alpha": 0.5})["alpha"] == 0.5


def test_lowrank_hcl_equals_the_plain_formula_and_its_gradients():
    from mrdib_cli.models.lgmrec import info_nce_sum_lowrank

    g = torch.Generator().manual_seed(0)
    n, h, d = 50, 4, 16
    assign = torch.softmax(torch.randn(n, h, generator=g), 1).requires_grad_()
    lam = torch.randn(h, d, generator=g, requires_grad=True)
    anchor_all = torch.randn(n, d, generator=g, requires_grad=True)
    ids = torch.tensor([3, 7, 3, 3, 49, 0, 7])  # repeated ids are weighted, not recomputed
    pos_all = assign @ lam
    plain = info_nce_sum(anchor_all[ids], pos_all[ids], pos_all)
    fast = info_nce_sum_lowrank(ids, anchor_all, pos_all, assign, lam)
    assert torch.allclose(plain, fast, rtol=1e-5)
    grads_plain = torch.autograd.grad(plain, [assign, lam, anchor_all], retain_graph=True)
    grads_fast = torch.autograd.grad(fast, [assign, lam, anchor_all])
    for a, b in zip(grads_plain, grads_fast):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
