"""Small pieces shared by the backbones: MMRec's loss forms, feature loading, sparse buffers."""

from __future__ import annotations

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
    total = sum(torch.linalg.norm(e) for e in embs)
    return total / embs[-1].shape[0]


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
