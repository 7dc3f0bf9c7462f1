"""Small pieces shared by the backbones: MMRec's loss forms, feature loading, sparse buffers."""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.errors import MissingInputError


def bpr_loss(pos: Tensor, neg: Tensor, gamma: float = 1e-10) -> Tensor:
    """MMRec's ``BPRLoss``: -mean log(gamma + sigmoid(s+ - s-)) (LightGCN, VBPR)."""
    return -torch.log(gamma + torch.sigmoid(pos - neg)).mean()


def bpr_logsigmoid(pos: Tensor, neg: Tensor) -> Tensor:
    """LGMRec's BPR: -mean logsigmoid(s+ - s-) (no epsilon)."""
    return -torch.nn.functional.logsigmoid(pos - neg).mean()


def emb_norm_loss(*embs: Tensor) -> Tensor:
    """MMRec's ``EmbLoss``: sum of Frobenius norms (**not** squared) divided by the batch size."""
    total = sum(batch_norm(e) for e in embs)
    return total / embs[-1].shape[0]


class _BatchSplit:
    """Set by the distributed trainer while this process computes the loss of its slice of the global batch."""

    active = False
    contributes = True  # False for a rank that only holds a zero-weight filler row (tail batch)


@contextlib.contextmanager
def batch_split_across_ranks(contributes: bool = True) -> Iterator[None]:
    """Within this block, :func:`batch_norm` returns this rank's share of the global batch's norm."""
    _BatchSplit.active, _BatchSplit.contributes = True, contributes
    try:
        yield
    finally:
        _BatchSplit.active, _BatchSplit.contributes = False, True


def batch_norm(e: Tensor) -> Tensor:
    """Frobenius norm of batch rows ``e``, as if the whole global batch were here.

    Why: under DDP each rank holds a slice e_r of the batch E, and ||E|| is not a sum of per-rank parts
    (sum_r ||e_r|| > ||E||), so MMRec's EmbLoss would be stronger than in one process. The share returned
    here is ||e_r||^2 / ||E|| (||E|| from one all-reduce of the squared norms): over the ranks it adds up to
    ||E||, and its gradient e_r / ||E|| is exactly e_r's part of the gradient of ||E||.
    """
    if not _BatchSplit.active:
        return torch.linalg.norm(e)
    import torch.distributed as dist

    sq = e.pow(2).sum()
    total = sq.detach() * (1.0 if _BatchSplit.contributes else 0.0)
    dist.all_reduce(total)
    half = sq / (2.0 * total.sqrt().clamp_min(1e-12))  # gradient e_r / ||E||
    return half + half.detach()  # value ||e_r||^2 / ||E||


def load_modalities(data: DatasetHandle, wanted: tuple[str, ...], required: tuple[str, ...],
                    tables: dict[str, str | None] | None, backbone: str) -> dict[str, Tensor]:
    """Feature matrices (float32 tensors) of the wanted modalities that the dataset has.

    A required modality that is missing is a one-line MissingInputError naming the fix; an optional one is
    simply absent from the result (the backbone then runs on the others, as MMRec does). ``tables`` picks
    a named feature table per modality (default: the newest).
    """
    tables = tables or {}
    out: dict[str, Tensor] = {}
    for m in wanted:
        if data.feature_path(m, tables.get(m)) is None:
            if m in required:
                raise MissingInputError(f"{backbone} needs {m} features but dataset '{data.name}' has none; "
                                        f"run 'mrdib extract-features --modality {m}' first")
            continue
        out[m] = torch.from_numpy(np.array(data.features(m, tables.get(m)).vectors, dtype=np.float32))
    if not out:
        raise MissingInputError(f"{backbone} needs image and/or text features but dataset '{data.name}' "
                                "has none; run 'mrdib extract-features' first")
    return out


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
