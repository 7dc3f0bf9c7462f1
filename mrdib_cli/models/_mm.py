"""Helpers shared by the multimodal backbones: feature loading, the standard loss forms, init.

Kept private (leading underscore: not a backbone module) and tiny. Each loss states the exact form the
reference code uses, because the backbones differ in small ways (log sigma vs log2 sigma, squared vs
unsquared norms) that change results.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrdib_cli.graphs.bipartite import to_torch_sparse
from mrdib_cli.models._common import spmm


def xavier_embedding(n: int, d: int) -> nn.Embedding:
    e = nn.Embedding(n, d)
    nn.init.xavier_uniform_(e.weight)
    return e


def bpr(u: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """-mean log sigma(<u,i+> - <u,i->) (logsigmoid, no epsilon: MMRec's FREEDOM/MGCN/LATTICE form)."""
    return -F.logsigmoid((u * pos).sum(-1) - (u * neg).sum(-1)).mean()


def half_sq_reg(*embs: Tensor) -> Tensor:
    """(1/2 sum ||e||^2) / B over the batch rows: MGCN/LATTICE's ``regularizer``."""
    return sum(0.5 * (e ** 2).sum() for e in embs) / embs[0].shape[0]


def info_nce(view1: Tensor, view2: Tensor, temperature: float) -> Tensor:
    """In-batch InfoNCE: rows are L2-normalised, positives on the diagonal, mean over rows.

    Written with logsumexp (same value as the reference's exp/sum/log form, without its overflow).
    """
    v1, v2 = F.normalize(view1, dim=1), F.normalize(view2, dim=1)
    logits = v1 @ v2.T / temperature
    return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()


def torch_csr(m: Any) -> Tensor:
    """A scipy matrix or torch sparse tensor as a torch CSR tensor (the fastest CPU spmm layout)."""
    if isinstance(m, Tensor):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return m.coalesce().to_sparse_csr() if m.layout == torch.sparse_coo else m
    return to_torch_sparse(m, "csr")


def add_graph(module: nn.Module, name: str, m: Any, symmetric: bool = False) -> None:
    """Register a constant sparse graph (and, unless symmetric, its transpose for the backward pass) as
    non-persistent buffers: they follow ``.to(device)`` but stay out of checkpoints."""
    module.register_buffer(name, torch_csr(m), persistent=False)
    if not symmetric:
        mt = m.t() if isinstance(m, Tensor) else m.T
        module.register_buffer(f"{name}_t", torch_csr(mt), persistent=False)


def prop(module: nn.Module, name: str, x: Tensor) -> Tensor:
    """G x for a graph registered with :func:`add_graph` (precomputed-transpose backward)."""
    return spmm(getattr(module, name), x, getattr(module, f"{name}_t", None))


def lightgcn_mean(module: nn.Module, name: str, ego: Tensor, n_layers: int) -> Tensor:
    """mean_{l=0..L} Â^l E (LightGCN readout, layer 0 included) over the registered graph ``name``."""
    out = [ego]
    for _ in range(n_layers):
        ego = prop(module, name, ego)
        out.append(ego)
    return torch.stack(out, dim=1).mean(dim=1)


def gated_modality_views(module: nn.Module, feats: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    """MGCN's per-modality branch, which SOIL inherits: the item ID embedding gated by the projected feature
    (``module.trs[m]``, ``module.gate[m]``; the MRdIB hook point), ``n_layers`` propagations on the item-item
    graph ``<m>_adj``, users as ``R`` times the items. Returns [users; items] per modality."""
    mm: dict[str, Tensor] = {}
    for m, x in feats.items():
        x = module.modality_input(m, x)
        h = module.modality_hook(m, module.item_id_embedding.weight * module.gate[m](module.trs[m](x)))
        for _ in range(n_layers):
            h = prop(module, f"{m}_adj", h)
        mm[m] = torch.cat([prop(module, "R", h), h], dim=0)
    return mm
