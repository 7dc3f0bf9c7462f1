"""FREEDOM (Zhou & Shen, MM'23): freeze the item-item graph, denoise the user-item graph.

Follows MMRec's ``freedom.py`` (identical to the authors' code).

    S   = w_img * S_v + (1 - w_img) * S_t          frozen binary kNN graphs of the raw features (k = knn_k,
                                                   self included, entries 1/k), built once, never updated
    h   = S^{n_mm_layers} E_i                      ID embeddings propagated over S (features are not)
    E^l = Â_epoch E^{l-1},  [e_u; ê_i] = mean_{l=0..n_ui_layers} E^l      LightGCN
    e_i = ê_i + h
    Â_epoch: degree-sensitive pruned graph resampled every epoch (dropout = share of edges dropped);
             evaluation uses the full D^-1/2 A D^-1/2.
    f_m = Linear(d_m -> d)(X_m)                    modality projections, with bias
    L   = BPR(e_u, e_i+, e_i-) + reg_weight * [BPR(e_u, f_t+, f_t-) + BPR(e_u, f_v+, f_v-)]

``reg_weight`` weights the *modality BPR terms*, not an L2 penalty (as in the code). The raw feature tables
are trainable (``freeze=False`` in the reference) but only receive gradients through those terms; the
kNN graph is built from the raw features before training and stays frozen.

Hook points (docs/mrdib.md): ``image``/``text`` = f_m(X_m), the projected features scored by the
modality BPR terms.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from mrdib_cli.graphs.ops import bipartite_edges
from mrdib_cli.graphs.sampling import CSRGraph, aggregate
from mrdib_cli.graphs.pruning import bipartite_degree_weights, pruned_adjacency
from mrdib_cli.graphs.store import ensure_knn, ensure_norm_adj
from mrdib_cli.models._common import add_graph, dot_bpr, id_embeddings, local_batch, prop, spmm, tables_rows
from mrdib_cli.models.base import Backbone, Batch, Embeddings, FeatureTables, MiniBatch, register
from mrdib_cli.models.lightgcn import sampled_layer_mean


@register("freedom")
class FREEDOM(Backbone):
    modalities = ("image", "text")
    required_modalities = ()
    defaults: dict[str, Any] = {
        "embedding_size": 64,
        "feat_embed_dim": 64,
        "knn_k": 10,
        "mm_image_weight": 0.1,
        "n_mm_layers": 1,
        "n_ui_layers": 2,
        "dropout": 0.8,
        "reg_weight": 1e-3,
    }
    #: the hyper-parameter grid a fair baseline is tuned over on validation (MMRec's grid);
    #: examples/sweeps/mmrec-freedom.yaml runs it
    mmrec_grid: dict[str, list[Any]] = {"dropout": [0.8, 0.9], "reg_weight": [0.0, 1e-5, 1e-4, 1e-3]}
    # the raw feature tables are trainable too: read row by row in sampled mode (an absent modality has none)
    sparse_tables = ("user_embedding.weight", "item_id_embedding.weight", "feat.image", "feat.text")
    sampled_hook_rows = True  # propagate_batch projects exactly the batch's distinct items, in sorted order
    hparam_help = {
        "mm_image_weight": "Weight of the image kNN graph in the mixed item-item graph (text: 1 - it).",
        "dropout": "Fraction of user-item edges pruned each epoch (degree-sensitive).",
        "n_mm_layers": "Propagation layers on the mixed item-item graph.",
    }

    hop_settings = "n_ui_layers or n_mm_layers"

    @classmethod
    def sampled_hops(cls, hparams: Mapping[str, Any], plugin: bool) -> int:
        """The user-item graph's ``n_ui_layers`` hops and the item-item graph's ``n_mm_layers``, each from the
        first fan-out on."""
        return max(int(hparams["n_ui_layers"]), int(hparams["n_mm_layers"]))

    def __init__(self, data: Any, hparams: Mapping[str, Any], features: FeatureTables = None) -> None:
        super().__init__(data, hparams)
        hp, d = self.hp, self.dim
        feats = self.load_features(data, features)
        train = data.csr("train")

        self.user_embedding, self.item_id_embedding = id_embeddings(self.n_users, self.n_items, d)
        self.feat = nn.ParameterDict({m: nn.Parameter(x.clone()) for m, x in feats.items()})
        self.trs = nn.ModuleDict({m: nn.Linear(x.shape[1], hp["feat_embed_dim"]) for m, x in feats.items()})

        # frozen item-item graph from the raw features (cached under <dataset>/graphs/)
        tables = features or {}
        graphs = {m: ensure_knn(data, m, hp["knn_k"], "sym_binary", tables.get(m))[0] for m in feats}
        if len(graphs) == 2:
            w = hp["mm_image_weight"]
            mm_adj = w * graphs["image"] + (1.0 - w) * graphs["text"]
        else:
            mm_adj = next(iter(graphs.values()))
        add_graph(self, "mm_adj", mm_adj)
        add_graph(self, "norm_adj", ensure_norm_adj(data, "sym")[0], symmetric=True)

        users, items = bipartite_edges(train)
        self.register_buffer("edge_users", users, persistent=False)
        self.register_buffer("edge_items", items, persistent=False)
        self.register_buffer("edge_weights", bipartite_degree_weights(users, items, self.n_users, self.n_items),
                             persistent=False)
        self.masked_adj: Tensor | None = None
        self._csr: dict[str, tuple[Tensor, CSRGraph]] = {}  # --minibatch sampled: CSR arrays per graph

    def pre_epoch(self, epoch: int, generator: torch.Generator) -> None:
        """Resample the degree-sensitive pruned user-item graph for this epoch."""
        if self.hp["dropout"] <= 0.0:
            self.masked_adj = None
            return
        self.masked_adj = pruned_adjacency(self.edge_users, self.edge_items, self.edge_weights, self.n_users,
                                           self.n_items, self.hp["dropout"], generator)

    def _forward(self, adj: Tensor) -> tuple[Tensor, Tensor]:
        h = self.item_id_embedding.weight
        for _ in range(self.hp["n_mm_layers"]):
            h = prop(self, "mm_adj", h)
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight], dim=0)
        out = ego
        for _ in range(self.hp["n_ui_layers"]):  # LightGCN layer mean over this epoch's graph
            ego = spmm(adj, ego)  # symmetric: its own transpose
            out = out + ego
        out = out / (self.hp["n_ui_layers"] + 1)
        u, i = torch.split(out, [self.n_users, self.n_items])
        return u, i + h

    def propagate(self) -> Embeddings:
        if self.training and self.masked_adj is None and self.hp["dropout"] > 0.0:
            self.pre_epoch(0, None)  # used outside the trainer: draw a graph with the global RNG
        adj = self.masked_adj if (self.training and self.masked_adj is not None) else self.norm_adj
        u, i = self._forward(adj)
        views = {f"item_{m}": self.modality_hook(m, self.trs[m](self.modality_input(m, self.feat[m])))
                 for m in self.feat}
        return Embeddings(u, i, views)

    def _sampler(self, name: str, m: Tensor) -> CSRGraph:
        """The CSR arrays of graph ``m`` (kept while ``m`` is the same tensor: the pruned graph changes every
        epoch, and building its arrays costs its edges once per epoch, not per step)."""
        hit = self._csr.get(name)
        if hit is None or hit[0] is not m:
            hit = self._csr[name] = (m, CSRGraph(m))
        return hit[1]

    def propagate_batch(self, batch: Batch, mb: MiniBatch) -> tuple[Embeddings, Batch]:
        """The batch's users and items only: the LightGCN part from sampled neighbourhoods of this epoch's
        (pruned) graph, h from sampled hops of the frozen item-item graph, the modality projections at the
        batch's items (docs/scaling.md, "FREEDOM")."""
        if self.training and self.masked_adj is None and self.hp["dropout"] > 0.0:
            self.pre_epoch(0, None)
        adj = self.masked_adj if (self.training and self.masked_adj is not None) else self.norm_adj
        bu = torch.unique(batch.users)
        bi = torch.unique(torch.cat([batch.pos, batch.neg]))
        n_u = self.n_users
        nodes, out, _ = sampled_layer_mean(self._sampler("ui", adj), self.user_embedding.weight,
                                           self.item_id_embedding.weight, torch.cat([bu, bi + n_u]),
                                           mb, self.hp["n_ui_layers"], n_u)
        # nodes = [bu; bi + n_u]: two sorted id sets in disjoint ranges
        items, blocks = mb.neighbourhood(self._sampler("mm", self.mm_adj), bi, self.hp["n_mm_layers"])
        h, *feats = tables_rows([(self.item_id_embedding.weight, items[-1]), *((self.feat[m], bi) for m in self.feat)])
        for block in reversed(blocks):  # S^L E_i: the last layer only, as the full forward
            h = aggregate(block, h)
        views = {f"item_{m}": self.modality_hook(m, self.trs[m](self.modality_input(m, x)))
                 for m, x in zip(self.feat, feats)}
        return Embeddings(out[:len(bu)], out[len(bu):] + h, views), local_batch(batch, bu, bi)

    def loss(self, batch: Batch, emb: Embeddings) -> dict[str, Tensor]:
        u = emb.rows("user", batch.users)
        terms = {"bpr": dot_bpr(u, emb.item[batch.pos], emb.item[batch.neg])}
        for m in self.feat:
            f = emb.views[f"item_{m}"]
            terms[f"bpr_{m}"] = self.hp["reg_weight"] * dot_bpr(u, f[batch.pos], f[batch.neg])
        return terms
