"""DualGNN (Wang et al., TMM'21): dual graph neural network with a user co-occurrence graph.

Follows MMRec's ``dualgnn.py``.

Per modality m:
    g_m  = Linear(256 -> 64)(leaky(Linear(d_m -> 256)(X_m)))                        <- hook
    x    = normalize([P_m; g_m])        P_m trainable user preference [U x 64]
    x_m  = x + Âx + Â²x                 Â = D^-1/2 A D^-1/2 on the U-I edge list (no self loops)
Fusion ('weighted_sum'), with the code's in-place quirk (v_rep += t_rep also changes the user input):
    user = w_{u,v} (v_u + t_u) + w_{u,t} t_u,   item = v_i + t_i,   w_u [U x 2] softmax-initialised
User co-occurrence graph (resampled every epoch):
    user ← user + Σ_{k<40} softmax(c_u)_k user_{nbr_k}
    nbr/c: the 40 users sharing most train items (counts c); users with fewer are padded by re-drawing
    their own neighbours at random (padded copies keep their count), users with none get zero weights.
Loss: -mean log2 σ(s⁺ - s⁻) + reg_weight (mean(P_v[u]²) + mean(P_t[u]²) + mean(w_u²) + mean(w_i²))

The user-user graph comes from ``graphs/cooccurrence.py`` (sparse R R^T on the train split, top-200 per
user, cached as plain arrays by ``build-graph``/``train``), never from a pickled ``user_graph_dict.npy``. Evaluation recomputes the forward instead of reusing the last
training batch's cached result (same values: the forward is deterministic within an epoch).
"""

from __future__ import annotations

from typing import Any, Mapping

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrdib_cli.graphs.store import ensure_cooccurrence, ensure_norm_adj
from mrdib_cli.models._common import add_graph, dot_bpr, spmm
from mrdib_cli.models.base import Backbone, Batch, Embeddings, FeatureTables, register

MODS = ("image", "text")


def sample_user_graph(nbr: Tensor, cnt: Tensor, n: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """One epoch's (index [U, k], weight [U, k]) of DualGNN's ``topk_sample``, vectorised.

    Slots beyond a user's n real neighbours are filled with uniformly drawn copies of its own neighbours
    (index and count); weights are the softmax of the counts; users with no neighbour get index 0 and
    weight 0.
    """
    u, k = nbr.shape
    slot = torch.arange(k, device=nbr.device).expand(u, k)
    draw = torch.rand(u, k, generator=generator, device=generator.device if generator is not None else None)
    draw = draw.to(nbr.device)
    pick = torch.where(slot < n[:, None], slot, (draw * n.clamp_min(1)[:, None]).long())
    idx = nbr.gather(1, pick)
    c = cnt.gather(1, pick)
    w = torch.softmax(c, dim=1) * (n > 0)[:, None]
    return idx, w


class DualGCN(nn.Module):
    """The per-modality 2-hop GCN shared by DualGNN and DRAGON (x + Âx + Â²x)."""

    def __init__(self, n_users: int, dim_feat: int, dim_latent: int = 64) -> None:
        super().__init__()
        self.preference = nn.Parameter(nn.init.xavier_normal_(torch.randn(n_users, dim_latent), gain=1))
        self.mlp = nn.Linear(dim_feat, 4 * dim_latent)
        self.mlp_1 = nn.Linear(4 * dim_latent, dim_latent)

    def project(self, feat: Tensor) -> Tensor:
        return self.mlp_1(F.leaky_relu(self.mlp(feat)))

    def forward(self, item_repr: Tensor, adj: Tensor) -> Tensor:
        """x + Âx + Â²x with Â symmetric (its own transpose in the backward pass)."""
        x = F.normalize(torch.cat([self.preference, item_repr], dim=0))
        h = spmm(adj, x)
        return h + x + spmm(adj, h)


@register("dualgnn")
class DualGNN(Backbone):
    modalities = MODS
    required_modalities = MODS
    defaults: dict[str, Any] = {
        "embedding_size": 64,
        "k": 40,
        "reg_weight": 1e-4,
    }
    #: the hyper-parameter grid a fair baseline is tuned over on validation (MMRec's grid);
    #: examples/sweeps/mmrec-dualgnn.yaml runs it
    mmrec_grid: dict[str, list[Any]] = {"train.lr": [1e-1, 1e-2, 1e-3, 1e-4, 1e-5],
                                          "reg_weight": [1e-1, 1e-2, 1e-3, 1e-4, 1e-5]}
    hparam_help = {"k": "User-user co-occurrence neighbours per user."}

    def __init__(self, data: Any, hparams: Mapping[str, Any], features: FeatureTables = None) -> None:
        super().__init__(data, hparams)
        hp, d = self.hp, self.dim
        feats = self.load_features(data, features)
        for m in MODS:
            self.register_buffer(f"{m}_feat", feats[m], persistent=False)
        self.gcn = nn.ModuleDict({m: DualGCN(self.n_users, feats[m].shape[1], d) for m in MODS})
        self.weight_u = nn.Parameter(torch.softmax(nn.init.xavier_normal_(torch.randn(self.n_users, 2, 1)), dim=1))
        self.weight_i = nn.Parameter(torch.softmax(nn.init.xavier_normal_(torch.randn(self.n_items, 2, 1)), dim=1))
        add_graph(self, "adj", ensure_norm_adj(data, "sym")[0], symmetric=True)
        # top-200 co-occurrence neighbours (as MMRec's user_graph_dict), the first k = 40 are used
        (nb, ct), _ = ensure_cooccurrence(data, max(200, hp["k"]))
        nb, ct = nb[:, : hp["k"]], ct[:, : hp["k"]]
        self.register_buffer("nbr", torch.from_numpy(np.where(nb >= 0, nb, 0)), persistent=False)
        self.register_buffer("nbr_count", torch.from_numpy(np.ascontiguousarray(ct)), persistent=False)
        self.register_buffer("n_nbr", torch.from_numpy((nb >= 0).sum(1).astype(np.int64)), persistent=False)
        self._graph: Tensor | None = None

    def pre_epoch(self, epoch: int, generator: torch.Generator) -> None:
        """Resample this epoch's user-user graph, kept as a sparse U x U matrix of softmax weights."""
        idx, w = sample_user_graph(self.nbr, self.nbr_count, self.n_nbr, generator)
        rows = torch.arange(self.n_users, device=idx.device).repeat_interleave(idx.shape[1])
        self._graph = torch.sparse_coo_tensor(torch.stack([rows, idx.reshape(-1)]), w.reshape(-1),
                                              (self.n_users, self.n_users), check_invariants=False).coalesce()

    def propagate(self) -> Embeddings:
        if self._graph is None or self._graph.device != self.nbr.device:
            self.pre_epoch(0, None)
        reps = {}
        for m in MODS:
            item_repr = self.modality_hook(m, self.gcn[m].project(self.modality_input(m, getattr(self, f"{m}_feat"))))
            reps[m] = self.gcn[m](item_repr, self.adj)
        v, t = reps["image"], reps["text"]
        nu = self.n_users
        both = v + t
        user = torch.cat([both[:nu, :, None], t[:nu, :, None]], dim=2) @ self.weight_u  # [U, d, 1]
        user = user.squeeze(-1)
        user = user + torch.sparse.mm(self._graph, user)
        return Embeddings(user, both[nu:], {"user_image": v[:nu], "user_text": t[:nu]})

    def loss(self, batch: Batch, emb: Embeddings) -> dict[str, Tensor]:
        u = emb.rows("user", batch.users)
        reg = sum((self.gcn[m].preference[batch.users] ** 2).mean() for m in MODS) \
            + (self.weight_u ** 2).mean() + (self.weight_i ** 2).mean()
        # DualGNN's reference takes log2 of the sigmoid: the natural-log BPR over ln 2
        return {"bpr": dot_bpr(u, emb.item[batch.pos], emb.item[batch.neg]) / math.log(2.0), "reg": self.hp["reg_weight"] * reg}
