"""LATTICE's item-item graphs: weighted kNN of (raw or projected) features, dense or sparse top-k.

Reference (MMRec ``lattice.py``, notes §3.3, §4.2(b)): W = top-k cosine *values* per row kept in a dense
I x I matrix (zeros elsewhere), L = D^-1/2 W D^-1/2 with D = row sums (inf -> 0). The learned graph is the
same construction on the projected features, differentiable through the kept values.

Two representations with the same mathematics (up to ties in top-k):

* dense (``item_graph="dense"``, parity with the reference): I x I tensors. Their memory is estimated
  before anything is built (:func:`dense_graph_bytes`) and a one-line error is raised when it exceeds
  the limit, instead of exhausting memory.
* sparse (``item_graph="sparse"``): edge lists of I*k entries, built block-wise; the kept values are
  recomputed from the gathered feature rows so gradients flow exactly as through the dense top-k.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mrdib_cli.errors import UsageError
from mrdib_cli.graphs.ops import cosine_topk, l2_normalise

#: I x I float32 matrices alive at once at the peak of LATTICE's dense graph build with autograd
#: (similarity, kNN scatter, modality mix, normalisation, the cached original graphs, saved tensors).
DENSE_MATRICES_AT_PEAK = 14


def dense_graph_bytes(n_items: int, n_matrices: int = DENSE_MATRICES_AT_PEAK) -> int:
    return int(n_items) ** 2 * 4 * n_matrices


def check_dense_budget(n_items: int, limit_gib: float, backbone: str = "lattice") -> None:
    """Raise a one-line UsageError when the dense item graphs would not fit in ``limit_gib``."""
    need = dense_graph_bytes(n_items) / 2**30
    if need > limit_gib:
        raise UsageError(f"{backbone}: dense item-item graphs for {n_items:,} items need ~{need:.1f} GiB "
                         f"(limit {limit_gib:g} GiB); use --set item_graph=sparse (top-k edge lists) or raise "
                         f"--set max_dense_gib=...")


# dense ------------------------------------------------------------------------------------------
def dense_knn(x: Tensor, k: int) -> Tensor:
    """W: top-k cosine values per row of x (self included), zeros elsewhere; differentiable in x."""
    xn = l2_normalise(x)
    sim = xn @ xn.T
    val, idx = torch.topk(sim, k, dim=-1)
    return torch.zeros_like(sim).scatter_(-1, idx, val)


def dense_laplacian(w: Tensor) -> Tensor:
    """D^-1/2 W D^-1/2 with D the row sums (inf -> 0)."""
    d = w.sum(-1).pow(-0.5)
    d = torch.where(torch.isinf(d), torch.zeros_like(d), d)
    return d[:, None] * w * d[None, :]


# sparse -----------------------------------------------------------------------------------------
@dataclass
class EdgeGraph:
    """A weighted graph as an edge list; ``apply`` is h = G E via index_add (differentiable in vals)."""

    rows: Tensor
    cols: Tensor
    vals: Tensor
    n: int

    def apply(self, e: Tensor) -> Tensor:
        out = torch.zeros(self.n, e.shape[1], dtype=e.dtype, device=e.device)
        return out.index_add_(0, self.rows, self.vals[:, None] * e[self.cols])

    def scaled(self, a: Tensor | float) -> EdgeGraph:
        return EdgeGraph(self.rows, self.cols, self.vals * a, self.n)

    def detach(self) -> EdgeGraph:
        return EdgeGraph(self.rows, self.cols, self.vals.detach(), self.n)

    @staticmethod
    def cat(graphs: list[EdgeGraph]) -> EdgeGraph:
        return EdgeGraph(torch.cat([g.rows for g in graphs]), torch.cat([g.cols for g in graphs]),
                         torch.cat([g.vals for g in graphs]), graphs[0].n)

    def laplacian(self) -> EdgeGraph:
        """D^-1/2 W D^-1/2 with D = row sums of W (duplicate edges count as their sum, as in dense)."""
        deg = torch.zeros(self.n, dtype=self.vals.dtype, device=self.vals.device).index_add(0, self.rows,
                                                                                             self.vals)
        d = deg.pow(-0.5)
        d = torch.where(torch.isinf(d), torch.zeros_like(d), d)
        return EdgeGraph(self.rows, self.cols, d[self.rows] * self.vals * d[self.cols], self.n)

    def to_dense(self) -> Tensor:
        out = torch.zeros(self.n, self.n, dtype=self.vals.dtype, device=self.vals.device)
        return out.index_put_((self.rows, self.cols), self.vals, accumulate=True)


def sparse_knn(x: Tensor, k: int) -> EdgeGraph:
    """Top-k cosine edges of x found block-wise without gradient, values recomputed differentiably."""
    _, idx = cosine_topk(x.detach(), k)
    n, kk = idx.shape
    rows = torch.arange(n, device=x.device).repeat_interleave(kk)
    cols = idx.reshape(-1).to(x.device)
    xn = l2_normalise(x)
    vals = (xn[rows] * xn[cols]).sum(-1)
    return EdgeGraph(rows, cols, vals, n)
