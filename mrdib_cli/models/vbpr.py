"""VBPR (He & McAuley, AAAI'16) as in MMRec, with per-modality projections.

    θ_u ∈ R^{2d}                               user embedding (xavier-uniform), d = embedding_size
    γ_i ∈ R^d                                  item ID embedding (xavier-uniform)
    h_i^m = x_i^m W_m                          per-modality projection (hook point "image" / "text")
    f_i = Σ_m h_i^m + b                        = Linear([x_t ; x_v]) of MMRec, exactly
    e_i = [γ_i ; f_i],  ŷ_ui = θ_u · e_i
    L = -mean log(1e-10 + σ(ŷ_ui - ŷ_uj)) + reg_weight · (‖θ_u‖_F + ‖e_i‖_F + ‖e_j‖_F) / B

MMRec applies *one* linear layer to the concatenated features. A linear map of a concatenation is the sum
of per-block linear maps, so projecting each modality separately and summing is the same model (same
function class, same xavier-normal initial distribution with fan-in = Σ d_m, zero bias); it gives the MRdIB
plug-in a per-modality item representation h^m to attach to. The modality-specific user representation
(the visual/text preference part of θ_u) is exposed as ``views["user_<m>"]``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.models._common import (MMREC_BPR_EPS, bpr, emb_norm_loss, local_batch, tables_rows,
                                      xavier_uniform)
from mrdib_cli.models.base import Backbone, Batch, Embeddings, FeatureTables, MiniBatch, register


class _RowProjection(torch.autograd.Function):
    """Rows ``rows`` of x W (zeros elsewhere); W's gradient is x^T G over every row, as for x W itself."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, rows: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        out = torch.zeros(x.shape[0], w.shape[1], dtype=w.dtype, device=w.device)
        return out.index_copy_(0, rows, x.index_select(0, rows) @ w)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return None, x.t().mm(grad), None


def project_rows(x: Tensor, w: Tensor, rows: Tensor) -> Tensor:
    """x W at ``rows`` only (other rows zero), with the gradient of the full product."""
    return _RowProjection.apply(x, w, rows)


@register("vbpr")
class VBPR(Backbone):
    modalities = ("image", "text")
    defaults: dict[str, Any] = {"embedding_size": 64, "reg_weight": 2.0}  # first point of MMRec's grid
    #: the hyper-parameter grid a fair baseline is tuned over on validation (MMRec's grid);
    #: examples/sweeps/mmrec-vbpr.yaml runs it
    mmrec_grid: dict[str, list[Any]] = {"reg_weight": [2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5]}
    item_local_hooks = True  # h_i^m reaches only e_i, and the loss reads e at the batch's items
    sparse_tables = ("u_embedding", "i_embedding")
    sampled_hook_rows = True  # propagate_batch projects exactly the batch's distinct items, in sorted order

    def __init__(self, data: DatasetHandle, hparams: Mapping[str, Any], features: FeatureTables = None) -> None:
        super().__init__(data, hparams)
        self.reg_weight = float(hparams["reg_weight"])
        d = self.dim
        feats = self.load_features(data, features)
        self.present = tuple(feats)
        self.u_embedding = xavier_uniform(self.n_users, 2 * d)
        self.i_embedding = xavier_uniform(self.n_items, d)
        fan_in = sum(x.shape[1] for x in feats.values())
        std = math.sqrt(2.0 / (fan_in + d))  # xavier-normal of MMRec's single Linear(fan_in -> d)
        self.proj = nn.ParameterDict()
        for m, x in feats.items():
            self.register_buffer(f"feat_{m}", x, persistent=False)  # frozen: not in checkpoints
            self.proj[m] = nn.Parameter(torch.randn(x.shape[1], d) * std)
        self.bias = nn.Parameter(torch.zeros(d))

    def propagate(self) -> Embeddings:
        views: dict[str, Tensor] = {}
        f = self.bias
        theta = self.u_embedding[:, self.dim:]  # the user's content-preference part
        for m in self.present:
            h = self.modality_hook(m, self.modality_input(m, getattr(self, f"feat_{m}")) @ self.proj[m])  # [I, d]
            views[f"item_{m}"] = h
            views[f"user_{m}"] = theta
            f = f + h
        item = torch.cat([self.i_embedding, f.expand(self.n_items, -1) if f.dim() == 1 else f], dim=1)
        columns = {f"user_{m}": (self.dim, 2 * self.dim) for m in self.present}
        return Embeddings(self.u_embedding, item, views, user_columns=columns)

    def propagate_step(self, batch: Batch) -> Embeddings:
        """The full forward's values with the feature projections computed only at the batch's items.

        The other rows of h^m are never read by the loss; they are zeros here. The backward still forms
        W's gradient from the whole (zero-padded) table, because a product over fewer rows sums in another
        order and would move results in the last bits; the forward half of the projection is what is saved.
        A plug-in on the hooks sees every row, so with one installed this is the full forward.
        """
        if self._hooks or not self.training:
            return self.propagate()
        items = torch.unique(batch.pos if batch.neg is None else torch.cat([batch.pos, batch.neg]))
        f = self.bias
        for m in self.present:
            f = f + project_rows(getattr(self, f"feat_{m}"), self.proj[m], items)
        item = torch.cat([self.i_embedding, f], dim=1)
        columns = {f"user_{m}": (self.dim, 2 * self.dim) for m in self.present}
        return Embeddings(self.u_embedding, item, user_columns=columns)

    def propagate_batch(self, batch: Batch, mb: MiniBatch) -> tuple[Embeddings, Batch]:
        """The batch's distinct users and items only: VBPR has no graph, so this is the full model's loss
        exactly (no sampling), at the cost of the batch instead of the catalogue."""
        users = torch.unique(batch.users)
        items = torch.unique(batch.pos if batch.neg is None else torch.cat([batch.pos, batch.neg]))
        theta, own = tables_rows([(self.u_embedding, users), (self.i_embedding, items)])
        f = self.bias
        views: dict[str, Tensor] = {}
        for m in self.present:
            h = self.modality_hook(m, getattr(self, f"feat_{m}").index_select(0, items) @ self.proj[m])
            views[f"item_{m}"], views[f"user_{m}"] = h, theta[:, self.dim:]
            f = f + h
        item = torch.cat([own, f.expand(len(items), -1)], dim=1)
        columns = {f"user_{m}": (self.dim, 2 * self.dim) for m in self.present}
        return Embeddings(theta, item, views, user_columns=columns), local_batch(batch, users, items)

    def loss(self, batch: Batch, emb: Embeddings) -> dict[str, Tensor]:
        u, i, j = emb.rows("user", batch.users), emb.item[batch.pos], emb.item[batch.neg]
        pos, neg = (u * i).sum(-1), (u * j).sum(-1)
        return {"bpr": bpr(pos, neg, MMREC_BPR_EPS), "reg": self.reg_weight * emb_norm_loss(u, i, j)}
