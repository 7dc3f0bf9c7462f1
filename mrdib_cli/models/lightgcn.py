"""LightGCN (He et al., SIGIR'20), ID only, as in MMRec.

    E^0 = [E_u^0; E_i^0]                       (U+I) x d, xavier-uniform
    E^{l+1} = Â E^l,  l = 0..L-1               Â = D^-1/2 A D^-1/2 of the train graph (+1e-7 on degrees)
    E = mean_{l=0..L} E^l                      split into users and items
    ŷ_ui = e_u · e_i
    L = -mean log(1e-10 + σ(ŷ_ui - ŷ_uj)) + reg_weight · (‖e_u^0‖_F + ‖e_i^0‖_F + ‖e_j^0‖_F) / B

The regulariser acts on the **ego** (layer-0) embeddings of the batch, with non-squared Frobenius norms,
as MMRec's ``EmbLoss``. MMRec recomputes the full propagation for every batch; so do we (one CSR sparse
matmul per layer, cheap on CPU). Defaults are the first point of MMRec's grid (n_layers 1, reg 1e-2).
No modality, so no hook points: the MRdIB plug-in refuses LightGCN.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.graphs import ensure_norm_adj, to_torch_sparse
from mrdib_cli.graphs.sampling import CSRGraph, horner_mean
from mrdib_cli.models._common import (MMREC_BPR_EPS, bpr, emb_norm_loss, local_batch, spmm, tables_rows,
                                      xavier_uniform)
from mrdib_cli.models.base import Backbone, Batch, Embeddings, FeatureTables, MiniBatch, register


def light_propagate(adj: Tensor, ego: Tensor, n_layers: int) -> Tensor:
    """mean_{l=0..L} Â^l E^0: LightGCN's layer-mean readout (Â symmetric)."""
    acc, h = ego, ego
    for _ in range(n_layers):
        h = spmm(adj, h)
        acc = acc + h
    return acc / (n_layers + 1)


def node_rows(user_table: Tensor, item_table: Tensor, nodes: Tensor, n_users: int) -> Tensor:
    """Rows of the joint node table [users; items] at ``nodes``, read with sparse gradients (``n_users`` given:
    a sharded table holds only some of its rows)."""
    is_user = nodes < n_users
    ego = torch.empty(len(nodes), user_table.shape[1], dtype=user_table.dtype, device=nodes.device)
    users, items = tables_rows([(user_table, nodes[is_user]), (item_table, nodes[~is_user] - n_users)])
    ego = ego.index_put((is_user.nonzero().squeeze(1),), users)
    return ego.index_put(((~is_user).nonzero().squeeze(1),), items)


def sampled_layer_mean(graph: CSRGraph, user_table: Tensor, item_table: Tensor, seeds: Tensor, mb: MiniBatch,
                       n_layers: int, n_users: int) -> tuple[Tensor, Tensor, Tensor]:
    """LightGCN's readout mean_l Â^l E at the distinct ``seeds`` (ids of the joint node table, ``n_users``
    users first), from sampled neighbourhoods: (those ids, sorted; their readout rows; their ego rows)."""
    nodes, blocks = mb.neighbourhood(graph, seeds, n_layers)
    ego = node_rows(user_table, item_table, nodes[-1], n_users)
    return nodes[0], horner_mean(blocks, ego), ego[:len(nodes[0])]


@register("lightgcn")
class LightGCN(Backbone):
    modalities = ()
    defaults: dict[str, Any] = {"embedding_size": 64, "n_layers": 1, "reg_weight": 1e-2}
    #: the hyper-parameter grid a fair baseline is tuned over on validation (MMRec's grid);
    #: examples/sweeps/mmrec-lightgcn.yaml runs it
    mmrec_grid: dict[str, list[Any]] = {"n_layers": [1, 2, 3, 4], "reg_weight": [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]}
    sparse_tables = ("user_embedding", "item_embedding")

    hop_settings = "n_layers"

    @classmethod
    def sampled_hops(cls, hparams: Mapping[str, Any], plugin: bool) -> int:
        return int(hparams["n_layers"])

    def __init__(self, data: DatasetHandle, hparams: Mapping[str, Any], features: FeatureTables = None) -> None:
        super().__init__(data, hparams)
        self.n_layers = int(hparams["n_layers"])
        self.reg_weight = float(hparams["reg_weight"])
        d = self.dim
        adj, _ = ensure_norm_adj(data, "sym")
        self.register_buffer("norm_adj", to_torch_sparse(adj), persistent=False)
        self.user_embedding = xavier_uniform(self.n_users, d)
        self.item_embedding = xavier_uniform(self.n_items, d)

    def propagate(self) -> Embeddings:
        ego = torch.cat([self.user_embedding, self.item_embedding], dim=0)
        out = light_propagate(self.norm_adj, ego, self.n_layers)
        user, item = torch.split(out, [self.n_users, self.n_items])
        return Embeddings(user, item, {"ego_user": self.user_embedding, "ego_item": self.item_embedding})

    def propagate_batch(self, batch: Batch, mb: MiniBatch) -> tuple[Embeddings, Batch]:
        """The batch's users and items from sampled ``n_layers``-hop neighbourhoods of Â (one node table:
        users first, items after them, as in the full forward)."""
        if getattr(self, "_csr", None) is None:
            self._csr = CSRGraph(self.norm_adj)
        u = self.n_users
        seeds = torch.cat([batch.users, batch.pos + u, batch.neg + u])
        nodes, out, ego0 = sampled_layer_mean(self._csr, self.user_embedding, self.item_embedding, seeds, mb,
                                              self.n_layers, u)
        return Embeddings(out, out, {"ego_user": ego0, "ego_item": ego0}), local_batch(batch, nodes, nodes, u)

    def loss(self, batch: Batch, emb: Embeddings) -> dict[str, Tensor]:
        u, i, j = emb.rows("user", batch.users), emb.item[batch.pos], emb.item[batch.neg]
        pos, neg = (u * i).sum(-1), (u * j).sum(-1)
        ego_u, ego_i = emb.views["ego_user"], emb.views["ego_item"]
        reg = emb_norm_loss(ego_u[batch.users], ego_i[batch.pos], ego_i[batch.neg])
        return {"bpr": bpr(pos, neg, MMREC_BPR_EPS), "reg": self.reg_weight * reg}
