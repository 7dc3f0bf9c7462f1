"""BM3 (Zhou et al., WWW'23): bootstrapped multimodal latent representations, no negative sampling.

Follows MMRec's ``bm3.py`` (identical to the authors' code).

    [e_u; ê_i] = mean_{l=0..n_layers} Â^l [E_u; E_i],   e_i = ê_i + E_i         (LightGCN + ego item)
    f_m  = Linear(d_m -> d)(X_m)  (xavier_normal weights; X_m trainable)               <- hook
    p(.) = Linear(d, d), shared predictor (xavier_normal)
    tgt(x) = dropout_{p_d}(stopgrad(x))        target views (dropout always on, as F.dropout in the code)
    L_ui = 1 - cos(p(e_u), tgt(e_i)),  L_iu = 1 - cos(p(e_i), tgt(e_u))
    L_m  = 1 - cos(p(f_m), tgt(e_i)),  L_mm = 1 - cos(p(f_m), tgt(f_m))       (batch means)
    L    = L_ui + L_iu + reg_weight * (Σ ||E_full||_F) / n_items + cl_weight * Σ_m (L_m + L_mm)
    score(u, i) = <p(e_u), p(e_i)>

The regulariser is MMRec's ``EmbLoss`` on the *full* user and item tables (sum of unsquared Frobenius
norms divided by the row count of the last argument, n_items). Batches are (user, item) pairs only:
``training_mode = "pairs"``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrdib_cli.graphs.store import ensure_norm_adj
from mrdib_cli.models._common import add_graph, id_embeddings, lightgcn_mean
from mrdib_cli.models.base import Backbone, Batch, Embeddings, FeatureTables, register


def neg_cos(a: Tensor, b: Tensor) -> Tensor:
    return 1.0 - F.cosine_similarity(a, b, dim=-1).mean()


@register("bm3")
class BM3(Backbone):
    modalities = ("image", "text")
    required_modalities = ()
    training_mode = "pairs"
    defaults: dict[str, Any] = {
        "embedding_size": 64,
        "feat_embed_dim": 64,
        "n_layers": 1,
        "dropout": 0.5,
        "reg_weight": 0.1,
        "cl_weight": 2.0,
    }
    #: the hyper-parameter grid a fair baseline is tuned over on validation (MMRec's grid);
    #: examples/sweeps/mmrec-bm3.yaml runs it
    mmrec_grid: dict[str, list[Any]] = {"n_layers": [1, 2], "reg_weight": [0.1, 0.01], "dropout": [0.3, 0.5]}
    hparam_help = {"dropout": "Dropout rate of the contrastive views."}

    def __init__(self, data: Any, hparams: Mapping[str, Any], features: FeatureTables = None) -> None:
        super().__init__(data, hparams)
        hp, d = self.hp, self.dim
        feats = self.load_features(data, features)
        self.user_embedding, self.item_id_embedding = id_embeddings(self.n_users, self.n_items, d)
        self.predictor = nn.Linear(d, d)
        nn.init.xavier_normal_(self.predictor.weight)
        self.feat = nn.ParameterDict({m: nn.Parameter(x.clone()) for m, x in feats.items()})
        self.trs = nn.ModuleDict({m: nn.Linear(x.shape[1], hp["feat_embed_dim"]) for m, x in feats.items()})
        for lin in self.trs.values():
            nn.init.xavier_normal_(lin.weight)
        add_graph(self, "norm_adj", ensure_norm_adj(data, "sym")[0], symmetric=True)

    def _online(self) -> tuple[Tensor, Tensor]:
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight], dim=0)
        out = lightgcn_mean(self, "norm_adj", ego, self.hp["n_layers"])
        u, i = torch.split(out, [self.n_users, self.n_items])
        return u, i + self.item_id_embedding.weight

    def propagate(self) -> Embeddings:
        """user/item are the *scoring* embeddings p(e_u), p(e_i); the online ones are in views."""
        u_on, i_on = self._online()
        views = {"u_online": u_on, "i_online": i_on}
        for m in self.feat:
            views[f"item_{m}"] = self.modality_hook(m, self.trs[m](self.modality_input(m, self.feat[m])))
        return Embeddings(self.predictor(u_on), self.predictor(i_on), views)

    def loss(self, batch: Batch, emb: Embeddings) -> dict[str, Tensor]:
        p_d = self.hp["dropout"]
        u_on, i_on = emb.views["u_online"], emb.views["i_online"]
        with torch.no_grad():
            u_tgt = F.dropout(u_on.detach()[batch.users], p_d)
            i_tgt = F.dropout(i_on.detach()[batch.pos], p_d)
        terms = {"ui": neg_cos(emb.rows("user", batch.users), i_tgt) + neg_cos(emb.item[batch.pos], u_tgt),
                 "reg": self.hp["reg_weight"] * (u_on.norm() + i_on.norm()) / i_on.shape[0]}
        cl = torch.zeros((), device=u_on.device)
        for m in self.feat:
            f = emb.views[f"item_{m}"][batch.pos]
            with torch.no_grad():
                f_tgt = F.dropout(f.detach(), p_d)
            p_f = self.predictor(f)
            cl = cl + neg_cos(p_f, i_tgt) + neg_cos(p_f, f_tgt)
        terms["cl"] = self.hp["cl_weight"] * cl
        return terms
