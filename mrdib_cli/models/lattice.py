"""LATTICE (Zhang et al., MM'21): mining latent item-item structure.

Follows MMRec's ``lattice.py`` with cf_model = lightgcn.

    Â      = D~^-1 (A + I)                             row-normalised user-item graph with self loops
    S_m^o  = L(kNN_k(X_m))                             original graphs of the raw features (frozen)
    f_m    = Linear(d_m -> d)(X_m)                     projected features (X_m trainable)   <- hook
    w      = softmax(modal_weight),  modal_weight initialised [0.5, 0.5]
    S^l    = L(Σ_m w_m kNN_k(f_m))                     learned graph
    S      = (1 - λ) S^l + λ Σ_m w_m S_m^o             λ = lambda_coeff = 0.9
    h      = S^{n_layers} E_i
    [e_u; ê_i] = mean_{l=0..2} Â^l [E_u; E_i],   e_i = ê_i + normalize(h)
    L      = BPR + reg_weight * ½(||u||² + ||i+||² + ||i-||²) / B
    L(W)   = D^-1/2 W D^-1/2 with D = row sums; kNN_k keeps the top-k cosine values (self included)

As in the code, the learned graph is rebuilt (with gradient) on the first batch of each epoch and reused
detached by the other batches; evaluation rebuilds it. lr decays as lr * 0.96^(epoch / 50).

Memory: the reference keeps several dense I x I matrices. ``item_graph="dense"`` (parity) estimates the
memory first and stops with a one-line error above ``max_dense_gib``; ``item_graph="sparse"`` keeps
top-k edge lists (same mathematics up to ties) and scales to any catalogue.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrdib_cli.errors import UsageError
from mrdib_cli.graphs.latent import EdgeGraph, check_dense_budget, dense_knn, dense_laplacian, sparse_knn
from mrdib_cli.graphs.store import ensure_knn, ensure_norm_adj
from mrdib_cli.models._common import add_graph, dot_bpr, half_sq_reg, id_embeddings, lightgcn_mean
from mrdib_cli.models.base import Backbone, Batch, Embeddings, FeatureTables, register


@register("lattice")
class LATTICE(Backbone):
    modalities = ("image", "text")
    required_modalities = ()
    lr_schedule = (0.96, 50)
    defaults: dict[str, Any] = {
        "embedding_size": 64,
        "feat_embed_dim": 64,
        "n_ui_layers": 2,  # len(weight_size) with weight_size [64, 64]
        "n_layers": 1,
        "knn_k": 10,
        "lambda_coeff": 0.9,
        "reg_weight": 1e-4,
        "item_graph": "dense",
        "max_dense_gib": 8.0,
    }
    #: the hyper-parameter grid a fair baseline is tuned over on validation (MMRec's grid);
    #: examples/sweeps/mmrec-lattice.yaml runs it
    mmrec_grid: dict[str, list[Any]] = {"reg_weight": [0.0, 1e-5, 1e-4, 1e-3], "train.lr": [1e-4, 5e-4, 1e-3, 5e-3]}
    hparam_help = {
        "lambda_coeff": "Weight of the frozen feature graph against the learned one.",
        "item_graph": "dense or sparse item-item graphs.",
        "max_dense_gib": "Refuse dense item graphs larger than this (GiB).",
    }

    def __init__(self, data: Any, hparams: Mapping[str, Any], features: FeatureTables = None) -> None:
        super().__init__(data, hparams)
        hp = self.hp
        if hp["item_graph"] not in ("dense", "sparse"):
            raise UsageError(f"lattice: item_graph must be 'dense' or 'sparse', got {hp['item_graph']!r}")
        self.dense = hp["item_graph"] == "dense"
        if self.dense:
            check_dense_budget(self.n_items, hp["max_dense_gib"])
        d = self.dim
        feats = self.load_features(data, features)
        self.mods = tuple(feats)
        self.user_embedding, self.item_id_embedding = id_embeddings(self.n_users, self.n_items, d)
        self.feat = nn.ParameterDict({m: nn.Parameter(x.clone()) for m, x in feats.items()})
        self.trs = nn.ModuleDict({m: nn.Linear(x.shape[1], hp["feat_embed_dim"]) for m, x in feats.items()})
        self.modal_weight = nn.Parameter(torch.tensor([0.5, 0.5])[: len(feats)])
        add_graph(self, "norm_adj", ensure_norm_adj(data, "rw")[0])  # D~^-1 (A + I), not symmetric
        # original graphs: weighted kNN of the raw features, sym-normalised (cached under <dataset>/graphs/)
        tables = features or {}
        self._original: dict[str, Any] = {}
        for m in self.mods:
            g = ensure_knn(data, m, hp["knn_k"], "sym", tables.get(m))[0].tocoo()
            if self.dense:
                self.register_buffer(f"{m}_original_adj", torch.from_numpy(g.toarray()), persistent=False)
            else:
                self._original[m] = EdgeGraph(torch.from_numpy(g.row.astype("int64")),
                                              torch.from_numpy(g.col.astype("int64")),
                                              torch.from_numpy(g.data), g.shape[0])
        self._item_adj: Any = None
        self._build = True

    # graphs ---------------------------------------------------------------------------------
    def _knn(self, x: Tensor, normalise: bool) -> Any:
        k = self.hp["knn_k"]
        if self.dense:
            w = dense_knn(x, k)
            return dense_laplacian(w) if normalise else w
        g = sparse_knn(x, k)
        return g.laplacian() if normalise else g

    def _original_graph(self, m: str) -> Any:
        if self.dense:
            return getattr(self, f"{m}_original_adj")
        g = self._original[m]
        dev = self.item_id_embedding.weight.device
        if g.rows.device != dev:
            g = self._original[m] = EdgeGraph(g.rows.to(dev), g.cols.to(dev), g.vals.to(dev), g.n)
        return g

    def _build_item_graph(self, feats: dict[str, Tensor]) -> Any:
        w = torch.softmax(self.modal_weight, dim=0)
        lam = self.hp["lambda_coeff"]
        learned = [self._knn(f, normalise=False) for f in feats.values()]
        original = [self._original_graph(m) for m in self.mods]
        if self.dense:
            l_mix = sum(w[j] * g for j, g in enumerate(learned))
            o_mix = sum(w[j] * g for j, g in enumerate(original))
            return (1 - lam) * dense_laplacian(l_mix) + lam * o_mix
        l_mix = EdgeGraph.cat([g.scaled(w[j]) for j, g in enumerate(learned)]).laplacian()
        o_mix = EdgeGraph.cat([g.scaled(w[j]) for j, g in enumerate(original)])
        return EdgeGraph.cat([l_mix.scaled(1 - lam), o_mix.scaled(lam)])

    def pre_epoch(self, epoch: int, generator: torch.Generator) -> None:
        self._build = True

    # forward --------------------------------------------------------------------------------
    def propagate(self) -> Embeddings:
        feats = {m: self.modality_hook(m, self.trs[m](self.modality_input(m, self.feat[m]))) for m in self.mods}
        if self._build or not self.training or self._item_adj is None:
            item_adj = self._build_item_graph(feats)
            if self.training:
                self._build = False
                self._item_adj = item_adj.detach()
        else:
            item_adj = self._item_adj
        h = self.item_id_embedding.weight
        for _ in range(self.hp["n_layers"]):
            h = item_adj @ h if self.dense else item_adj.apply(h)
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight], dim=0)
        out = lightgcn_mean(self, "norm_adj", ego, self.hp["n_ui_layers"])
        u, i = torch.split(out, [self.n_users, self.n_items])
        views = {f"item_{m}": f for m, f in feats.items()}
        return Embeddings(u, i + F.normalize(h, p=2, dim=1), views)

    def loss(self, batch: Batch, emb: Embeddings) -> dict[str, Tensor]:
        u, p, n = emb.rows("user", batch.users), emb.item[batch.pos], emb.item[batch.neg]
        return {"bpr": dot_bpr(u, p, n), "reg": self.hp["reg_weight"] * half_sq_reg(u, p, n)}
