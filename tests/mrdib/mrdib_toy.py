"""A toy multimodal backbone (not registered) used by the MRdIB tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrdib_cli.models.base import Backbone, Batch, Embeddings


class ToyMM(Backbone):
    """ID embeddings + separately projected image/text features, concatenated (VBPR-like).

    user = [gamma_u, theta_u, gamma_u]  (3d), item = [gamma_i, h_v, h_t] (3d). It exposes ``user_image``
    (d-dim, matches h_v) but no ``user_text``, so the plug-in must use a linear map for the text unique term.
    """

    modalities = ("image", "text")

    def __init__(self, n_users: int = 40, n_items: int = 60, d: int = 8, f_v: int = 12, f_t: int = 10,
                 seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("feat_v", torch.randn(n_items, f_v, generator=g))
        self.register_buffer("feat_t", torch.randn(n_items, f_t, generator=g))
        self.gamma_u = nn.Parameter(0.1 * torch.randn(n_users, d, generator=g))
        self.theta_u = nn.Parameter(0.1 * torch.randn(n_users, d, generator=g))
        self.gamma_i = nn.Parameter(0.1 * torch.randn(n_items, d, generator=g))
        self.proj_v = nn.Linear(f_v, d)
        self.proj_t = nn.Linear(f_t, d)
        self.dropout = nn.Dropout(0.2)  # so eval determinism is a real property, not an accident

    def propagate(self) -> Embeddings:
        x_v, x_t = self.modality_input("image", self.feat_v), self.modality_input("text", self.feat_t)
        h_v = self.modality_hook("image", self.proj_v(self.dropout(x_v)))
        h_t = self.modality_hook("text", self.proj_t(self.dropout(x_t)))
        user = torch.cat([self.gamma_u, self.theta_u, self.gamma_u], dim=1)
        item = torch.cat([self.gamma_i, h_v, h_t], dim=1)
        return Embeddings(user=user, item=item, views={"user_image": self.theta_u})

    def loss(self, batch: Batch, emb: Embeddings) -> dict[str, Tensor]:
        u = emb.user[batch.users]
        pos = (u * emb.item[batch.pos]).sum(-1)
        neg = (u * emb.item[batch.neg]).sum(-1)
        return {"bpr": F.softplus(neg - pos).mean()}


class NoModality(Backbone):
    """LightGCN-like: ID embeddings only, no hook points."""

    def __init__(self) -> None:
        super().__init__()
        self.u = nn.Parameter(torch.randn(5, 4))
        self.i = nn.Parameter(torch.randn(6, 4))

    def propagate(self) -> Embeddings:
        return Embeddings(self.u, self.i)


NoModality.name = "lightgcn"
ToyMM.name = "toymm"


def make_batch(n_users: int = 40, n_items: int = 60, b: int = 32, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randint(n_users, (b,), generator=g), torch.randint(n_items, (b,), generator=g),
                 torch.randint(n_items, (b,), generator=g))


