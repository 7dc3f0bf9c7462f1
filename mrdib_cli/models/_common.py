"""The backbones' shared helpers: MMRec's loss forms, feature loading, init, sparse graph buffers.

Private (leading underscore: not a backbone module). Each loss states the exact form the reference code
uses, because the backbones differ in small ways (log sigma vs log(eps + sigma), squared vs unsquared
norms) that change results.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.errors import MissingInputError
from mrdib_cli.graphs.bipartite import to_torch_sparse
from mrdib_cli.launch import sum_across_ranks


#: epsilon of MMRec's ``BPRLoss`` (LightGCN, VBPR)
MMREC_BPR_EPS = 1e-10


def bpr(pos: Tensor, neg: Tensor, eps: float | None = None) -> Tensor:
    """BPR on scores: -mean log sigmoid(s+ - s-), the one form every backbone uses.

    ``eps=None`` is the logsigmoid form without epsilon (FREEDOM, MGCN, LATTICE, SOIL, LGMRec, MMGCN,
    DualGNN); ``eps=MMREC_BPR_EPS`` is MMRec's ``BPRLoss``, -mean log(eps + sigmoid(s+ - s-)) (LightGCN, VBPR). The
    two differ in the last bits, which is why each backbone keeps the one its reference uses.
    """
    diff = pos - neg
    if eps is None:
        return -F.logsigmoid(diff).mean()
    return -torch.log(eps + torch.sigmoid(diff)).mean()


def dot_bpr(u: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """:func:`bpr` of inner-product scores <u,i+> and <u,i->."""
    return bpr((u * pos).sum(-1), (u * neg).sum(-1))


def emb_norm_loss(*embs: Tensor) -> Tensor:
    """MMRec's ``EmbLoss``: sum of Frobenius norms (**not** squared) divided by the batch size."""
    total = sum(batch_norms(*embs))
    return total / embs[-1].shape[0]


class _BatchSplit:
    """Set by the distributed trainer while this process computes the loss of its slice of the global batch."""

    active = False
    contributes = True  # False for a rank that only holds a zero-weight filler row (tail batch)


@contextlib.contextmanager
def batch_split_across_ranks(contributes: bool = True) -> Iterator[None]:
    """Within this block, :func:`batch_norms` returns this rank's share of the global batch's norm."""
    _BatchSplit.active, _BatchSplit.contributes = True, contributes
    try:
        yield
    finally:
        _BatchSplit.active, _BatchSplit.contributes = False, True


def batch_norms(*embs: Tensor) -> list[Tensor]:
    """Frobenius norm of each tensor of batch rows, as if the whole global batch were here.

    Why: under DDP each rank holds a slice e_r of the batch E, and ||E|| is not a sum of per-rank parts
    (sum_r ||e_r|| > ||E||), so MMRec's EmbLoss would be stronger than in one process. The share returned
    here is ||e_r||^2 / ||E|| (||E|| from an all-reduce of the squared norms, one for all the tensors): over
    the ranks it adds up to ||E||, and its gradient e_r / ||E|| is exactly e_r's part of the gradient of ||E||.
    """
    if not _BatchSplit.active:
        return [torch.linalg.norm(e) for e in embs]
    sq = torch.stack([e.pow(2).sum() for e in embs])
    total = sq.detach() * (1.0 if _BatchSplit.contributes else 0.0)
    sum_across_ranks(total)
    half = sq / (2.0 * total.sqrt().clamp_min(1e-12))  # gradient e_r / ||E||
    return list((half + half.detach()).unbind())  # value ||e_r||^2 / ||E||


def select_modalities(data: DatasetHandle, wanted: tuple[str, ...], required: tuple[str, ...],
                      tables: dict[str, str | None] | None, backbone: str) -> dict[str, Path]:
    """The feature table of each wanted modality that the dataset has (``tables`` names one per modality,
    default the newest). A required modality that is missing, or none at all, is a one-line MissingInputError
    naming the fix; an optional one is simply absent (the backbone then runs on the others, as MMRec does)."""
    tables = tables or {}
    out: dict[str, Path] = {}
    for m in wanted:
        path = data.feature_path(m, tables.get(m))
        if path is None:
            if m in required:
                raise MissingInputError(f"{backbone} needs {m} features but dataset '{data.name}' has none; "
                                        f"run 'mrdib extract-features --modality {m}' first")
            continue
        out[m] = path
    if wanted and not out:
        raise MissingInputError(f"{backbone} needs image and/or text features but dataset '{data.name}' "
                                "has none; run 'mrdib extract-features' first")
    return out


def load_modalities(data: DatasetHandle, wanted: tuple[str, ...], required: tuple[str, ...],
                    tables: dict[str, str | None] | None, backbone: str) -> dict[str, Tensor]:
    """Feature matrices (float32 tensors) of the tables :func:`select_modalities` picks."""
    tables = tables or {}
    return {m: torch.from_numpy(np.array(data.features(m, tables.get(m)).vectors, dtype=np.float32))
            for m in select_modalities(data, wanted, required, tables, backbone)}


def xavier_uniform(*shape: int) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(*shape)))


class _SpMM(torch.autograd.Function):
    """y = A x with a precomputed Aᵀ for the backward pass.

    torch's own backward of ``sparse.mm`` on CSR re-derives the transpose (a sort) on every call; the
    graphs are constant, so we build Aᵀ once (and for the symmetric Â, Aᵀ is Â itself).
    """

    @staticmethod
    def forward(ctx, a: Tensor, a_t: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.a_t = a_t
        return torch.sparse.mm(a, x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return None, None, torch.sparse.mm(ctx.a_t, grad)


def spmm(a: Tensor, x: Tensor, a_t: Tensor | None = None) -> Tensor:
    """Sparse (constant) times dense; ``a_t`` defaults to ``a`` (a symmetric matrix)."""
    if not x.requires_grad:
        return torch.sparse.mm(a, x)
    return _SpMM.apply(a, a if a_t is None else a_t, x)


def xavier_embedding(n: int, d: int) -> nn.Embedding:
    e = nn.Embedding(n, d)
    nn.init.xavier_uniform_(e.weight)
    return e


def id_embeddings(n_users: int, n_items: int, d: int) -> tuple[nn.Embedding, nn.Embedding]:
    """User and item ID tables, xavier-uniform, drawn in that order (the order fixes a seed's values)."""
    return xavier_embedding(n_users, d), xavier_embedding(n_items, d)


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


class RowSource:
    """Where a sharded table's rows come from (see :data:`ROW_SOURCES`)."""

    def fetch(self, reads: list[tuple[str, Tensor]]) -> list[Tensor]:
        """The rows ``ids`` of each (table name, ids), read together (a collective)."""
        raise NotImplementedError


#: tables whose rows are held by other processes (a distributed ``--minibatch sampled`` job on GPUs or several
#: machines shards them): ``id(table)`` -> (its source, its name there). The training layer registers them;
#: every sampled forward reads its tables through :func:`tables_rows`, so a backbone needs
#: no code of its own for sharded tables.
ROW_SOURCES: dict[int, tuple[RowSource, str]] = {}


def tables_rows(reads: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
    """Rows ``ids`` of each (embedding table, ids), with *sparse* gradients (``--minibatch sampled``): the
    backward and the lazy Adam step then touch only these rows instead of the whole table. Read together,
    sharded tables cost one exchange, not one per table."""
    sources = [ROW_SOURCES.get(id(table)) for table, _ in reads]
    if not any(sources):
        return [F.embedding(ids, table, sparse=True) for table, ids in reads]
    source = sources[0][0] if sources[0] else None
    if any(s is None or s[0] is not source for s in sources):
        raise ValueError("tables_rows reads sharded tables of one source only")
    return source.fetch([(s[1], ids) for s, (_, ids) in zip(sources, reads)])


def local_batch(batch: Any, users_ix: Tensor, items_ix: Tensor, item_offset: int = 0) -> Any:
    """``batch`` re-indexed into compact tables: users by position in the sorted ``users_ix``, items (their ids
    plus ``item_offset``, for a table holding users first) by position in the sorted ``items_ix``."""
    from mrdib_cli.models.base import Batch

    def at(ix: Tensor, ids: Tensor) -> Tensor:
        return torch.searchsorted(ix, ids)

    return Batch(at(users_ix, batch.users), at(items_ix, batch.pos + item_offset),
                 None if batch.neg is None else at(items_ix, batch.neg + item_offset))
