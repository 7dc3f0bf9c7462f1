"""Every backbone of issue 7: shapes, training reduces the loss, hook points work, parity quirks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrdib_cli.errors import MissingInputError
from mrdib_cli.models.base import Batch, get_backbone, resolve_hparams
from tests.backbones.synth import make_dataset

NAMES = ["freedom", "mgcn", "bm3", "lattice", "soil", "mmgcn", "dualgnn"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("bb"))


def build(name, data, **over):
    torch.manual_seed(0)
    cls = get_backbone(name)
    return cls(data, resolve_hparams(cls, data.name, over))


def batch_for(model, data, seed=0):
    u, i = data.pairs("train")
    g = torch.Generator().manual_seed(seed)
    neg = torch.randint(0, data.n_items, (len(u),), generator=g)
    return Batch(torch.from_numpy(u), torch.from_numpy(i), None if model.training_mode == "pairs" else neg)


def train_steps(model, data, steps=20, lr=1e-2):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for step in range(steps):
        model.train()
        model.pre_epoch(step, gen)
        b = batch_for(model, data, seed=step)
        terms = model.loss(b, model.propagate())
        loss = sum(terms.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_finite(name, data):
    m = build(name, data)
    emb = m.propagate()
    assert emb.user.shape == (data.n_users, 64) and emb.item.shape == (data.n_items, 64)
    terms = m.loss(batch_for(m, data), emb)
    assert terms and all(torch.isfinite(v) and v.dim() == 0 for v in terms.values())
    u, i = m.embeddings_for_eval()
    assert u.shape == (data.n_users, 64) and i.shape == (data.n_items, 64)
    assert torch.isfinite(u).all() and torch.isfinite(i).all()
    assert m.training  # embeddings_for_eval restores the mode


@pytest.mark.parametrize("name", NAMES)
def test_training_reduces_loss(name, data):
    m = build(name, data)
    losses = train_steps(m, data)
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:3]), losses


@pytest.mark.parametrize("name", NAMES)
def test_eval_is_deterministic(name, data):
    m = build(name, data)
    train_steps(m, data, steps=2)
    u1, i1 = m.embeddings_for_eval()
    u2, i2 = m.embeddings_for_eval()
    assert torch.equal(u1, u2) and torch.equal(i1, i2)


@pytest.mark.parametrize("name", NAMES)
def test_hook_points_see_item_level_modality_representations(name, data):
    m = build(name, data)
    seen: dict[str, tuple[int, ...]] = {}

    def hook(mod, h):
        seen[mod] = tuple(h.shape)
        return torch.zeros_like(h)

    for hp in m.get_hook_points():
        m.install_hook(hp, hook)
    emb = m.propagate()
    assert set(seen) == {"image", "text"}
    assert all(s[0] == data.n_items for s in seen.values())
    # the hook output is used downstream: zeroing it changes the loss or the embeddings
    m2 = build(name, data)
    emb2 = m2.propagate()
    b = batch_for(m, data)
    changed = not torch.allclose(emb.item, emb2.item) or not torch.allclose(emb.user, emb2.user) or any(
        not torch.allclose(a, c) for a, c in zip(m.loss(b, emb).values(), m2.loss(b, emb2).values()))
    assert changed


def test_modality_user_views(data):
    for name in ("mgcn", "soil", "mmgcn", "dualgnn"):
        emb = build(name, data).propagate()
        assert emb.views["user_image"].shape[0] == data.n_users
        assert emb.views["user_text"].shape[0] == data.n_users


def test_required_modality_missing_is_one_line_error(tmp_path):
    d = make_dataset(tmp_path, dims={"image": 16}, name="imgonly")
    with pytest.raises(MissingInputError, match="text features"):
        build("mgcn", d)
    # optional modalities: FREEDOM runs on image alone
    m = build("freedom", d)
    assert set(m.feat) == {"image"}
    assert m.propagate().item.shape == (d.n_items, 64)


def test_bm3_trains_without_negatives(data):
    m = build("bm3", data)
    assert m.training_mode == "pairs"
    b = batch_for(m, data)
    assert b.neg is None
    assert set(m.loss(b, m.propagate())) == {"ui", "reg", "cl"}


def test_mmgcn_id_embeddings_frozen_as_released(data):
    m = build("mmgcn", data)
    before = m.id_embedding.clone()
    train_steps(m, data, steps=3)
    assert torch.equal(before, m.id_embedding)  # the reference's plain tensors are never trained
    m2 = build("mmgcn", data, train_id_embeddings=True)
    before2 = m2.id_embedding.detach().clone()
    train_steps(m2, data, steps=3)
    assert not torch.equal(before2, m2.id_embedding.detach())


def test_freedom_uses_pruned_graph_in_training_full_graph_in_eval(data):
    m = build("freedom", data)
    m.train()
    m.pre_epoch(0, torch.Generator().manual_seed(1))
    n_edges = m.edge_users.numel()
    assert m.masked_adj._nnz() == 2 * int(n_edges * (1 - 0.8))
    assert m.norm_adj._nnz() == 2 * n_edges
    u_train = m.propagate().user
    u_eval, _ = m.embeddings_for_eval()
    assert not torch.allclose(u_train, u_eval)


def test_lr_schedules_declared():
    assert get_backbone("mgcn").lr_schedule == (0.96, 50)
    assert get_backbone("lattice").lr_schedule == (0.96, 50)
    assert get_backbone("soil").lr_schedule == (0.96, 50)


def test_trainer_applies_the_backbone_lr_schedule():
    from types import SimpleNamespace

    from mrdib_cli.training.trainer import Trainer

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-3)
    ns = SimpleNamespace(backbone=SimpleNamespace(lr_schedule=(0.96, 50)), optimizer=opt,
                         cfg=SimpleNamespace(train=SimpleNamespace(lr=1e-3)), epoch=100)
    Trainer._apply_lr_schedule(ns)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.96 ** 2)
    ns.backbone = SimpleNamespace()  # no schedule: lr untouched
    opt.param_groups[0]["lr"] = 5e-4
    Trainer._apply_lr_schedule(ns)
    assert opt.param_groups[0]["lr"] == 5e-4
