"""Graphs: user-item adjacency (bipartite), item-item kNN (knn), user-user co-occurrence; cached (store)."""

from mrdib_cli.graphs.bipartite import (bipartite_adjacency, norm_adj_random_walk, norm_adj_symmetric,
                                        to_torch_sparse)
from mrdib_cli.graphs.cooccurrence import user_cooccurrence
from mrdib_cli.graphs.knn import knn_graph, topk_cosine
from mrdib_cli.graphs.store import (GraphInfo, build_graphs, ensure_cooccurrence, ensure_knn,
                                    ensure_norm_adj)

__all__ = ["bipartite_adjacency", "norm_adj_symmetric", "norm_adj_random_walk", "to_torch_sparse",
           "user_cooccurrence", "knn_graph", "topk_cosine", "GraphInfo", "build_graphs",
           "ensure_norm_adj", "ensure_knn", "ensure_cooccurrence"]
