"""Only the rows a step needs: the batch-row bottleneck on item-local backbones and shared user gathers."""

from __future__ import annotations

import torch
from mrdib_toy import ToyMM, make_batch

from mrdib_cli.models.base import Embeddings
from mrdib_cli.mrdib.objectives import MRdIB


class LocalToy(ToyMM):
    """The toy backbone declared item-local (it is: row i of a hook output only reaches item i), with its
    ``user_image`` view served as the user table's columns [d, 2d) (where theta_u sits)."""

    item_local_hooks = True

    def propagate(self) -> Embeddings:
        emb = super().propagate()
        d = self.theta_u.shape[1]
        return Embeddings(emb.user, emb.item, emb.views, user_columns={"user_image": (d, 2 * d)})


def _toy(cls: type[ToyMM] = LocalToy, **kw) -> tuple[ToyMM, MRdIB]:
    torch.manual_seed(0)
    toy = cls()
    toy.dropout.p = 0.0  # the two arms below must consume the same random numbers before the hooks
    plugin = MRdIB(**{"preset": "current", **kw})
    plugin.attach(toy)
    toy.train()
    plugin.train()
    return toy, plugin


def _step(toy: ToyMM, plugin: MRdIB, batch, restrict: bool) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One training step's loss terms and every parameter's gradient, with or without ``before_step``."""
    for p in [*toy.parameters(), *plugin.parameters()]:
        p.grad = None
    if restrict:
        plugin.before_step(batch)
    emb = toy.propagate()
    terms = {**toy.loss(batch, emb), **plugin.loss(batch, emb)}
    sum(terms.values()).backward()
    grads = {n: p.grad.clone() for n, p in [*toy.named_parameters(), *plugin.named_parameters()]
             if p.grad is not None}
    plugin.after_step(batch, emb)
    return {k: float(v.detach()) for k, v in terms.items()}, grads


def test_item_local_backbone_passes_only_the_batch_rows_through_the_bottleneck() -> None:
    toy, plugin = _toy()
    batch = make_batch()
    rows = torch.unique(torch.cat([batch.pos, batch.neg]))
    assert rows.numel() < toy.gamma_i.shape[0]  # the batch leaves some items out
    plugin.before_step(batch)
    emb = toy.propagate()
    assert plugin.latest("image").out.shape[0] == rows.numel()
    d = toy.theta_u.shape[1]
    h_v = toy.proj_v(toy.feat_v)
    outside = torch.ones(toy.gamma_i.shape[0], dtype=torch.bool)
    outside[rows] = False
    # rows outside the batch keep h (never read by an item-local loss); batch rows are the bottleneck's sample
    assert torch.equal(emb.item[outside, d:2 * d], h_v[outside])
    assert torch.allclose(emb.item[rows, d:2 * d], plugin.latest("image").out)
    assert not torch.allclose(emb.item[rows, d:2 * d], h_v[rows])
    plugin.loss(batch, emb)
    plugin.after_step(batch, emb)
    assert plugin._rows is None and plugin._inv is None  # the next step starts afresh


def test_batch_rows_give_the_same_terms_and_gradients_as_the_whole_table() -> None:
    """With (almost) no noise the two paths compute the same function: terms and gradients agree."""
    batch = make_batch()
    toy, plugin = _toy(init_noise=1e-6, synergy_head="mlp")
    state = ({k: v.clone() for k, v in toy.state_dict().items()}, {k: v.clone() for k, v in plugin.state_dict().items()})
    full_terms, full_grads = _step(toy, plugin, batch, restrict=False)
    toy.load_state_dict(state[0])
    plugin.load_state_dict(state[1])
    part_terms, part_grads = _step(toy, plugin, batch, restrict=True)
    assert plugin.latest("text").out.shape[0] < toy.gamma_i.shape[0]  # the batch path really ran
    assert set(full_terms) == set(part_terms) == {"bpr", "kl", "red", "uni", "syn"}
    for k in full_terms:
        assert abs(full_terms[k] - part_terms[k]) <= 1e-2 * abs(full_terms[k]) + 1e-8, k
    assert set(full_grads) == set(part_grads)
    for n, g in full_grads.items():  # float32 and sigma = 1e-6 of the signal: agreement to ~1e-4 of the largest entry
        assert float((g - part_grads[n]).abs().max()) <= 1e-3 * float(g.abs().max()) + 1e-8, n


def test_batch_rows_centre_the_log_variance_head_on_every_item() -> None:
    """With ``centre_logvar`` the batch-row path centres on the whole table's mean, as evaluation does, so the
    batch's log-variances are those the whole-table pass gives those rows."""
    batch = make_batch()
    toy, plugin = _toy(centre_logvar=True)
    with torch.no_grad():
        toy.proj_v.bias.add_(5.0)  # an offset all items share: the rows' own mean would differ from the table's
        plugin.bottlenecks["image"].head.weight[toy.theta_u.shape[1]:] += 0.3
    plugin.before_step(batch)
    toy.propagate()
    part = plugin.latest("image").logvar_raw
    rows = plugin._rows
    plugin.after_step(batch, None)
    toy.propagate()  # the whole table (no before_step)
    assert torch.allclose(part, plugin.latest("image").logvar_raw[rows], atol=1e-5)


def test_graph_backbones_and_evaluation_keep_the_whole_table() -> None:
    batch = make_batch()
    toy, plugin = _toy(cls=ToyMM)  # not item-local: every row may reach every item
    plugin.before_step(batch)
    toy.propagate()
    assert plugin._rows is None and plugin.latest("image").out.shape[0] == toy.gamma_i.shape[0]
    toy, plugin = _toy()
    plugin.before_step(batch)
    plugin.eval()  # evaluation embeddings: mu of every item, whatever before_step saw
    toy.eval()
    toy.propagate()
    assert plugin.latest("image").out.shape[0] == toy.gamma_i.shape[0]


def test_rows_gathers_once_and_serves_column_views_from_the_user_rows() -> None:
    toy, _ = _toy()
    emb = toy.propagate()
    users = make_batch().users
    assert emb.rows("user", users) is emb.rows("user", users)
    assert emb.rows("user", users.clone()) is not emb.rows("user", users)  # keyed by the index tensor itself
    assert torch.equal(emb.rows("user_image", users), toy.theta_u[users])
    assert torch.equal(emb.rows("item", users), emb.item[users])
    w = torch.randn(users.shape[0], toy.theta_u.shape[1])
    (emb.rows("user_image", users) * w).sum().backward()
    via_rows = toy.theta_u.grad.clone()
    toy.theta_u.grad = None
    (toy.theta_u[users] * w).sum().backward()
    assert torch.allclose(via_rows, toy.theta_u.grad)
