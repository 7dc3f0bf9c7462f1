"""FREEDOM's degree-sensitive edge pruning of the user-item graph.

1. every train edge (u, i) gets w_ui = 1 / sqrt(d_u d_i) (degrees of the full train matrix, +1e-7);
2. each epoch, m = floor(|E| (1 - p)) edges are drawn **without replacement** with probability ∝ w_ui
   (edges touching high-degree nodes are the most likely to be dropped);
3. the kept U x I subgraph is re-normalised with its own degrees, 1 / sqrt(d'_u d'_i), and mirrored into
   the (U+I) x (U+I) adjacency used for that epoch's training (inference uses the full graph).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mrdib_cli.graphs.ops import to_sparse


def bipartite_degree_weights(users: Tensor, items: Tensor, n_users: int, n_items: int) -> Tensor:
    """w_e = 1 / sqrt((d_u + 1e-7)(d_i + 1e-7)) for each edge, degrees counted on the given edge list."""
    ones = torch.ones(users.numel(), dtype=torch.float32, device=users.device)
    du = torch.zeros(n_users, device=users.device).index_add_(0, users, ones) + 1e-7
    di = torch.zeros(n_items, device=users.device).index_add_(0, items, ones) + 1e-7
    return du.pow(-0.5)[users] * di.pow(-0.5)[items]


def pruned_adjacency(users: Tensor, items: Tensor, weights: Tensor, n_users: int, n_items: int,
                     drop_ratio: float, generator: torch.Generator | None = None) -> Tensor:
    """One epoch's pruned, re-normalised (U+I)^2 adjacency (steps 2-3 above)."""
    m = int(users.numel() * (1.0 - drop_ratio))
    w = weights if generator is None or generator.device == weights.device else weights.to(generator.device)
    keep = torch.multinomial(w, m, replacement=False, generator=generator).to(users.device)
    ku, ki = users[keep], items[keep]
    vals = bipartite_degree_weights(ku, ki, n_users, n_items)
    n = n_users + n_items
    rows = torch.cat([ku, ki + n_users])
    cols = torch.cat([ki + n_users, ku])
    return to_sparse(rows, cols, torch.cat([vals, vals]), (n, n))
