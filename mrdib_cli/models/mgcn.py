"""MGCN (Yu et al., MM'23): multi-view graph convolution with a behaviour-guided purifier.

Follows MMRec's ``mgcn.py`` (identical to the authors' code).

    f_m   = Linear(d_m -> d)(X_m)                          X_m trainable (``freeze=False`` in the code)
    ĩ_m   = E_i ⊙ σ(W_g f_m + b)                          purifier (feature-gated ID embeddings)   <- hook
    C     = mean_{l=0..n_ui_layers} Â^l [E_u; E_i]        "content", Â = D^-1/2 A D^-1/2 (no self loops)
    h_m   = S_m^{n_layers} ĩ_m,   u_m = R̂ h_m            S_m frozen weighted kNN graph (k = knn_k, sym),
    M_m   = [u_m; h_m]                                    R̂ = user x item block of Â
    α     = softmax_m(q(M_m)),  q = Linear -> tanh -> Linear(-> 1, no bias)
    c     = Σ_m α_m M_m,  s_m = (M_m - c) ⊙ σ(W_m C + b_m)
    side  = (s_v + s_t + c) / 3,  E = C + side
    L     = BPR(E) + reg_weight * ½(||u||² + ||i+||² + ||i-||²)/B
            + cl_loss * [InfoNCE(side_i[i+], C_i[i+]) + InfoNCE(side_u[u], C_u[u])]    (τ = 0.2)

Code vs paper: the code's τ is hard-coded 0.2 (an unused ``tau = 0.5`` attribute exists); the regulariser
divides by the configured batch size 2048, here by the actual batch size (identical except on the last,
short batch of an epoch). Learning rate decays as lr * 0.96^(epoch / 50) (``lr_schedule``).

MGCN needs both modalities (the fuser is written for two). Hook points ``image``/``text`` are ĩ_m; the
modality user representations u_m are exposed as ``views["user_<m>"]``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from mrdib_cli.graphs.store import ensure_knn, ensure_norm_adj
from mrdib_cli.models._common import (add_graph, dot_bpr, gated_modality_views, half_sq_reg, info_nce, lightgcn_mean,
                                  id_embeddings)
from mrdib_cli.models.base import Backbone, Batch, Embeddings, FeatureTables, register

MODS = ("image", "text")


def user_item_block(adj: Any, n_users: int) -> Any:
    """The U x I block R̂ of a (U+I)^2 normalised bipartite adjacency (scipy)."""
    return adj.tocsr()[:n_users, n_users:]


def branches(module: Backbone, ui_graph: str,
             feats: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """MGCN's two branches, which SOIL shares: the LightGCN mean over the user-item graph ``ui_graph``
    (content), the gated per-modality views and their attention-fused common part."""
    ego = torch.cat([module.user_embedding.weight, module.item_id_embedding.weight], dim=0)
    content = lightgcn_mean(module, ui_graph, ego, module.hp["n_ui_layers"])
    mm = gated_modality_views(module, feats, module.hp["n_layers"])
    _, common = module.fuser(mm["image"], mm["text"])
    return content, mm, common


def readout(module: Backbone, content: Tensor, side: Tensor, mm: dict[str, Tensor]) -> Embeddings:
    """content + side per node, with the views the contrastive terms and plug-ins read (MGCN and SOIL)."""
    u, i = torch.split(content + side, [module.n_users, module.n_items])
    views = {"side": side, "content": content}
    views.update({f"user_{m}": mm[m][: module.n_users] for m in MODS})
    return Embeddings(u, i, views)


class AttentionFuser(nn.Module):
    """MGCN/SOIL's behaviour-aware fuser: shared query q, softmax over the two modalities."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.query_common = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))

    def forward(self, mv: Tensor, mt: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (α [N, 2], common c = α_v M_v + α_t M_t)."""
        alpha = torch.softmax(torch.cat([self.query_common(mv), self.query_common(mt)], dim=-1), dim=-1)
        return alpha, alpha[:, :1] * mv + alpha[:, 1:] * mt


@register("mgcn")
class MGCN(Backbone):
    modalities = MODS
    required_modalities = MODS
    lr_schedule = (0.96, 50)  # lr * 0.96 ** (epoch / 50), MMRec's LambdaLR
    defaults: dict[str, Any] = {
        "embedding_size": 64,
        "n_ui_layers": 2,
        "n_layers": 1,
        "knn_k": 10,
        "reg_weight": 1e-4,
        "cl_loss": 0.001,  # first point of MMRec's grid {0.001, 0.01, 0.1}, like every grid default here
    }
    #: the hyper-parameter grid a fair baseline is tuned over on validation (MMRec's grid);
    #: examples/sweeps/mmrec-mgcn.yaml runs it
    mmrec_grid: dict[str, list[Any]] = {"cl_loss": [0.001, 0.01, 0.1]}

    def __init__(self, data: Any, hparams: Mapping[str, Any], features: FeatureTables = None) -> None:
        super().__init__(data, hparams)
        hp, d = self.hp, self.dim
        feats = self.load_features(data, features)
        self.user_embedding, self.item_id_embedding = id_embeddings(self.n_users, self.n_items, d)
        self.feat = nn.ParameterDict({m: nn.Parameter(feats[m].clone()) for m in MODS})
        self.trs = nn.ModuleDict({m: nn.Linear(feats[m].shape[1], d) for m in MODS})
        self.gate = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for m in MODS})
        self.gate_prefer = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for m in MODS})
        self.fuser = AttentionFuser(d)

        norm_adj = ensure_norm_adj(data, "sym")[0]  # MGCN uses no degree epsilon: same on every edge
        add_graph(self, "norm_adj", norm_adj, symmetric=True)
        add_graph(self, "R", user_item_block(norm_adj, self.n_users))
        tables = features or {}
        for m in MODS:
            add_graph(self, f"{m}_adj", ensure_knn(data, m, hp["knn_k"], "sym", tables.get(m))[0])

    def propagate(self) -> Embeddings:
        content, mm, common = branches(self, "norm_adj", {m: self.feat[m] for m in MODS})
        sep = {m: (mm[m] - common) * self.gate_prefer[m](content) for m in MODS}
        side = (sep["image"] + sep["text"] + common) / 3
        return readout(self, content, side, mm)

    def loss(self, batch: Batch, emb: Embeddings) -> dict[str, Tensor]:
        u, p, n = emb.rows("user", batch.users), emb.item[batch.pos], emb.item[batch.neg]
        side, content, nu = emb.views["side"], emb.views["content"], self.n_users
        cl = info_nce(side[nu + batch.pos], content[nu + batch.pos], 0.2) \
            + info_nce(side[batch.users], content[batch.users], 0.2)
        return {"bpr": dot_bpr(u, p, n), "reg": self.hp["reg_weight"] * half_sq_reg(u, p, n),
                "cl": self.hp["cl_loss"] * cl}
