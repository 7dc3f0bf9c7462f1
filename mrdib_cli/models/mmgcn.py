"""MMGCN (Wei et al., MM'19): multimodal graph convolution, one GCN per modality.

Follows MMRec's ``mmgcn.py``.

Per modality m (image: MLP to 256, text: raw 384-d):
    x⁰   = normalize([P_m; g_m(X_m)])       P_m user preference [U x d_m], g_m = Linear(4096->256) or identity
                                            g_m(X_m) is the hook point
    for l = 1..3 (hard-coded 3 layers; the yaml's n_layers is ignored by the code):
      h    = leaky(mean_{j∈N(n)} x_j W_l)                       mean aggregation over the U-I edge list
      x̂    = leaky(Linear_l(x)) + E_id                          E_id [(U+I) x 64] ID embedding
      x    = leaky(G_l([h; x̂]))                                concat branch ('False' is a truthy string)
    rep  = mean_m x_m  (users and items),  score = dot product
    L    = -mean log σ(s⁺ - s⁻) + reg_weight * [mean(E_id[u]² + E_id[i]²) + Σ_m mean(P_m²)]

Quirk of the code kept for parity: E_id and P_m are plain tensors, not parameters, so they are **not
trained** (``train_id_embeddings=False``); set it to True to train them as the paper intends. Evaluation
recomputes the (deterministic) forward instead of reusing the last training batch's cached result.
All weights use xavier_normal init, as in the code.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrdib_cli.graphs.ops import mean_adjacency
from mrdib_cli.models._common import add_graph, dot_bpr, prop
from mrdib_cli.models.base import Backbone, Batch, Embeddings, FeatureTables, register


def _xavier_linear(d_in: int, d_out: int) -> nn.Linear:
    lin = nn.Linear(d_in, d_out)
    nn.init.xavier_normal_(lin.weight)
    return lin


class ModalGCN(nn.Module):
    """One modality's 3-layer GCN of MMGCN (concat combination, mean aggregation)."""

    def __init__(self, n_users: int, dim_feat: int, dim_id: int, dim_latent: int | None, trainable: bool) -> None:
        super().__init__()
        d = dim_latent or dim_feat
        self.mlp = _xavier_linear(dim_feat, dim_latent) if dim_latent else None
        pref = nn.init.xavier_normal_(torch.rand(n_users, d))
        if trainable:
            self.preference = nn.Parameter(pref)
        else:
            self.register_buffer("preference", pref)
        dims = [d, dim_id, dim_id]
        self.conv = nn.ParameterList([nn.Parameter(nn.init.xavier_normal_(torch.empty(k, k))) for k in dims])
        self.linear = nn.ModuleList([_xavier_linear(k, dim_id) for k in dims])
        self.g = nn.ModuleList([_xavier_linear(k + dim_id, dim_id) for k in dims])

    def project(self, feat: Tensor) -> Tensor:
        return self.mlp(feat) if self.mlp is not None else feat

    def forward(self, item_repr: Tensor, id_embedding: Tensor, mean_adj: Any) -> Tensor:
        """``mean_adj``: x -> D^-1 A x (a callable, so the graph's precomputed transpose is used)."""
        x = F.normalize(torch.cat([self.preference, item_repr], dim=0))
        for w, lin, g in zip(self.conv, self.linear, self.g):
            h = F.leaky_relu(mean_adj(x @ w))
            x_hat = F.leaky_relu(lin(x)) + id_embedding
            x = F.leaky_relu(g(torch.cat([h, x_hat], dim=1)))
        return x


@register("mmgcn")
class MMGCN(Backbone):
    modalities = ("image", "text")
    required_modalities = ()
    defaults: dict[str, Any] = {
        "embedding_size": 64,
        "dim_latent_image": 256,
        "reg_weight": 1e-4,
        "train_id_embeddings": False,
    }
    #: the hyper-parameter grid a fair baseline is tuned over on validation (MMRec's grid);
    #: examples/sweeps/mmrec-mmgcn.yaml runs it
    mmrec_grid: dict[str, list[Any]] = {"reg_weight": [0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
                                          "train.lr": [1e-4, 5e-4, 1e-3, 5e-3, 1e-2]}
    hparam_help = {
        "dim_latent_image": "Width of the image projection before the graph layers.",
        "train_id_embeddings": "Train the ID embeddings (the reference keeps them frozen).",
    }

    def __init__(self, data: Any, hparams: Mapping[str, Any], features: FeatureTables = None) -> None:
        super().__init__(data, hparams)
        feats = self.load_features(data, features)
        hp, d = self.hp, self.dim
        self.mods = tuple(feats)
        for m, x in feats.items():
            self.register_buffer(f"{m}_feat", x, persistent=False)
        trainable = hp["train_id_embeddings"]
        self.gcn = nn.ModuleDict({
            m: ModalGCN(self.n_users, x.shape[1], d, hp["dim_latent_image"] if m == "image" else None, trainable)
            for m, x in feats.items()})
        id_emb = nn.init.xavier_normal_(torch.rand(self.n_users + self.n_items, d))
        if trainable:
            self.id_embedding = nn.Parameter(id_emb)
        else:
            self.register_buffer("id_embedding", id_emb)
        add_graph(self, "mean_adj", mean_adjacency(data.csr("train")))

    def propagate(self) -> Embeddings:
        reps = {}
        for m in self.mods:
            item_repr = self.modality_hook(m, self.gcn[m].project(self.modality_input(m, getattr(self, f"{m}_feat"))))
            reps[m] = self.gcn[m](item_repr, self.id_embedding, lambda x: prop(self, "mean_adj", x))
        rep = sum(reps.values()) / len(reps)
        u, i = torch.split(rep, [self.n_users, self.n_items])
        return Embeddings(u, i, {f"user_{m}": r[: self.n_users] for m, r in reps.items()})

    def loss(self, batch: Batch, emb: Embeddings) -> dict[str, Tensor]:
        u = emb.rows("user", batch.users)
        score = dot_bpr(u, emb.item[batch.pos], emb.item[batch.neg])
        idu = self.id_embedding[batch.users]
        reg = 0.5 * ((idu ** 2 + self.id_embedding[self.n_users + batch.pos] ** 2).mean()
                     + (idu ** 2 + self.id_embedding[self.n_users + batch.neg] ** 2).mean())
        for m in self.mods:
            reg = reg + (self.gcn[m].preference ** 2).mean()
        return {"bpr": score, "reg": self.hp["reg_weight"] * reg}
