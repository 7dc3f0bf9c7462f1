"""LGMRec (Guo et al., AAAI'24): local and global graph learning.

Notation: R ∈ {0,1}^{U×I} train interactions, Â = D^-1/2 A D^-1/2 (D = deg + 1e-7), X_m frozen features,
τ = 0.2, norm(·) row-wise L2 normalisation, d = embedding_size.

Forward (recomputed for every training batch, as in the reference)::

    C    = mean_{l=0..L_ui} Â^l [E_u^0; E_i^0]                         collaborative graph embedding (CGE)
    F_i^m = X_m W_m                          (hook point "image"/"text": the plug-in may replace it by z_m)
    F_u^m = diag(1/(deg_u + 1e-7)) R F_i^m                             users = mean of their train items
    M^m  = Â^{L_mm} [F_u^m; F_i^m]                                     modality graph embedding (last layer)
    L    = C + norm(M^v) + norm(M^t)                                   local embedding
    Z_i^m = X_m H_m,  Z_u^m = R Z_i^m                                  hyperedge logits (I×H, U×H)
    H_·^m = GumbelSoftmax(Z_·^m, τ), dropout(1 - keep_rate) in training
    repeat n_hyper_layer times:  Λ = H_i^mᵀ E_I ;  E_I ← H_i^m Λ ;  G_u^m = H_u^m Λ    (E_I starts at C_items)
    Γ    = [G_u^v; G_i^v] + [G_u^t; G_i^t]                             global embedding (GHE)
    Z    = L + α · norm(Γ)                                             ŷ_ui = z_u · z_i

Loss::

    L_bpr = -mean logsigmoid(ŷ_ui - ŷ_uj)
    L_hcl = Σ_b -log softmax_{u'}(cos(G_u^v[u_b], G_u^t[u'])/τ)[u_b] + same for items (pos) over all items
            (computed exactly through the rank-H factors G^t = H^t Λ^t, see info_nce_sum_lowrank)
    L_reg = (‖Z_u[batch]‖_F + ‖Z_i[pos]‖_F + ‖Z_i[neg]‖_F) / B
    L     = L_bpr + cl_weight · L_hcl + reg_weight · L_reg

Evaluation: the reference samples Gumbel noise at evaluation time too (predictions are stochastic). By
default we evaluate deterministically with the noise-free soft assignment softmax(Z/τ); ``eval_gumbel=True``
samples the noise once per evaluation pass (the reference resamples per 4096-user evaluation batch).
Missing modalities are refused: the reference's fallback (Z = C) cannot train because its loss needs both
hypergraph outputs.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.graphs import ensure_norm_adj, to_torch_sparse
from mrdib_cli.graphs.sampling import CSRGraph, aggregate, extend, positions, uniform_sample
from mrdib_cli.models._common import bpr, emb_norm_loss, local_batch, spmm, xavier_uniform
from mrdib_cli.models.base import Backbone, Batch, Embeddings, FeatureTables, MiniBatch, register
from mrdib_cli.models.lightgcn import light_propagate, sampled_layer_mean

TAU = 0.2
#: ``--minibatch sampled``: items (and users) drawn uniformly per step to estimate the sums over the whole
#: catalogue that the hypergraph part needs (Λ = H_iᵀ E_I and the contrastive denominators); a catalogue
#: this small or smaller is used whole, and then those sums are exact
GLOBAL_SAMPLE = 1024


def info_nce_sum(anchor: Tensor, positive: Tensor, all_candidates: Tensor, tau: float = TAU) -> Tensor:
    """Σ_b -log( exp(cos(a_b, p_b)/τ) / Σ_c exp(cos(a_b, c)/τ) ), candidates = a whole table.

    The plain form (a B x N similarity matrix); :func:`info_nce_sum_lowrank` computes the same value faster.
    """
    a, p, c = F.normalize(anchor, dim=1), F.normalize(positive, dim=1), F.normalize(all_candidates, dim=1)
    pos = (a * p).sum(-1) / tau
    return (torch.logsumexp(a @ c.T / tau, dim=1) - pos).sum()


def info_nce_sum_lowrank(ids: Tensor, anchor_all: Tensor, pos_all: Tensor, assign: Tensor, lam: Tensor,
                         tau: float = TAU) -> Tensor:
    """The same sum as :func:`info_nce_sum` for anchors ``anchor_all[ids]``, positives ``pos_all[ids]`` and
    candidates ``pos_all = assign @ lam`` (a hypergraph output: rank <= H, the number of hyperedges).

    Two exact rewrites make it cheap:
    * cos(a, c_n) = (a Λᵀ) · (assign_n / ‖c_n‖): the B x N similarity costs B·N·H instead of B·N·d flops
      (H = 4 against d = 64 on Baby);
    * every term depends only on the anchor's id, so repeated ids (popular items in a batch) are computed
      once and weighted by their count.
    """
    uniq, counts = torch.unique(ids, return_counts=True)
    a = F.normalize(anchor_all[uniq], dim=1)  # [b, d]
    c_norm = torch.linalg.vector_norm(pos_all, dim=1).clamp_min(1e-12)  # as F.normalize's eps
    pos = (a * pos_all[uniq]).sum(-1) / c_norm[uniq] / tau
    lse = _LowRankLogSumExp.apply((a @ lam.T) / tau, assign / c_norm[:, None])  # 1/τ folded in the factor
    return ((lse - pos) * counts).sum()


def info_nce_sum_sampled(ids: Tensor, anchor: Tensor, positive: Tensor, cand_assign: Tensor, lam: Tensor,
                         n_total: int, tau: float = TAU) -> Tensor:
    """:func:`info_nce_sum_lowrank` with the candidates ``cand_assign @ lam`` drawn uniformly from a table of
    ``n_total`` rows (``--minibatch sampled``); ``anchor``/``positive`` hold the rows ``ids`` index.

    The denominator's sum over the other n_total - 1 rows is estimated by (n_total - 1) / S times its sum
    over the S drawn rows, and the positive is added once, as in the full sum. With every row drawn
    (S = n_total) it is the full sum itself.
    """
    uniq, counts = torch.unique(ids, return_counts=True)
    a = F.normalize(anchor[uniq], dim=1)
    p = positive[uniq]
    pos = (a * p).sum(-1) / torch.linalg.vector_norm(p, dim=1).clamp_min(1e-12) / tau
    c_norm = torch.linalg.vector_norm(cand_assign @ lam, dim=1).clamp_min(1e-12)
    lse = _LowRankLogSumExp.apply((a @ lam.T) / tau, cand_assign / c_norm[:, None])
    if len(cand_assign) < n_total:
        lse = torch.logaddexp(pos, lse + math.log((n_total - 1) / len(cand_assign)))
    return ((lse - pos) * counts).sum()


class _LowRankLogSumExp(torch.autograd.Function):
    """logsumexp over rows of left @ rightᵀ ([b, H] x [N, H] -> [b]) with few passes over the b x N matrix.

    The b x N matrix is the only large object; plain autograd walks it ~10 times (scale, max, subtract, exp,
    sum, and again in the backward). Here: one matmul, one max, one in-place exp, one sum; the backward
    reuses the stored exponentials in place (softmax = P / S) and does two matmuls.
    """

    @staticmethod
    def forward(ctx, left: Tensor, right: Tensor) -> Tensor:  # type: ignore[override]
        p = left @ right.T  # [b, N]
        m = p.amax(dim=1, keepdim=True)
        p.sub_(m).exp_()
        s = p.sum(dim=1, keepdim=True)
        ctx.save_for_backward(left, right, p, s)
        return (m + s.log()).squeeze(1)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        left, right, p, s = ctx.saved_tensors
        g = p.mul_(grad[:, None] / s)  # d lse_b / d logits_bn = softmax_bn; P is not needed afterwards
        return g @ right, g.T @ left


@register("lgmrec")
class LGMRec(Backbone):
    batch_sum_terms = ("hcl",)  # MMRec's hypergraph InfoNCE is a sum over the batch, not a mean
    modalities = ("image", "text")
    required_modalities = ("image", "text")
    defaults: dict[str, Any] = {
        "embedding_size": 64, "n_ui_layers": 2, "n_mm_layers": 2, "n_hyper_layer": 1, "hyper_num": 4,
        "keep_rate": 0.5, "alpha": 0.3, "cl_weight": 1e-4, "reg_weight": 1e-6, "eval_gumbel": False,
    }
    #: the hyper-parameter grid a fair baseline is tuned over on validation (LGMRec's own search space for its
    #: two loss weights: MMRec's LGMRec grid is a single point);
    #: examples/sweeps/mmrec-lgmrec.yaml runs it
    mmrec_grid: dict[str, list[Any]] = {"cl_weight": [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1],
                                          "reg_weight": [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1]}
    sparse_tables = ("user_embedding", "item_id_embedding")
    sampled_hook_rows = True
    hparam_help = {
        "n_hyper_layer": "Hypergraph propagation layers.",
        "hyper_num": "Number of hyperedges.",
        "keep_rate": "Dropout keep rate on the hypergraph embeddings.",
        "alpha": "Weight of the global (hypergraph) embeddings added to the local ones.",
        "eval_gumbel": "Sample Gumbel noise at evaluation as the reference does (stochastic).",
    }
    dataset_defaults = {
        # the official Sports log (the only source tied to reported numbers)
        "sports": {"n_ui_layers": 2, "n_mm_layers": 2, "n_hyper_layer": 4, "hyper_num": 4,
                   "keep_rate": 0.4, "alpha": 0.6},
        "clothing": {"n_ui_layers": 2, "n_mm_layers": 2, "n_hyper_layer": 2, "hyper_num": 64,
                     "keep_rate": 0.2, "alpha": 0.2},
    }

    hop_settings = "n_ui_layers (or n_mm_layers, with a plug-in)"

    @classmethod
    def sampled_hops(cls, hparams: Mapping[str, Any], plugin: bool) -> int:
        """``n_ui_layers`` hops; with a plug-in at the modality hooks also ``n_mm_layers`` hops and, after
        them, the users' sampled items (_mge_hops)."""
        return max(int(hparams["n_ui_layers"]), int(hparams["n_mm_layers"]) + 1 if plugin else 0)

    def __init__(self, data: DatasetHandle, hparams: Mapping[str, Any], features: FeatureTables = None) -> None:
        super().__init__(data, hparams)
        h = hparams
        self.n_ui_layers, self.n_mm_layers = int(h["n_ui_layers"]), int(h["n_mm_layers"])
        self.n_hyper_layer, self.hyper_num = int(h["n_hyper_layer"]), int(h["hyper_num"])
        self.keep_rate, self.alpha = float(h["keep_rate"]), float(h["alpha"])
        self.cl_weight, self.reg_weight = float(h["cl_weight"]), float(h["reg_weight"])
        self.eval_gumbel = bool(h["eval_gumbel"])
        d = self.dim
        feats = self.load_features(data, features)

        adj, _ = ensure_norm_adj(data, "sym")
        r = data.csr("train")
        inv_deg = 1.0 / (np.asarray(r.sum(axis=1)).ravel() + 1e-7)
        self.register_buffer("norm_adj", to_torch_sparse(adj), persistent=False)
        self.register_buffer("r", to_torch_sparse(r), persistent=False)  # U x I binary
        self.register_buffer("r_t", to_torch_sparse(r.T.tocsr()), persistent=False)
        self.register_buffer("inv_deg_u", torch.from_numpy(inv_deg.astype(np.float32))[:, None],
                             persistent=False)
        self.user_embedding = xavier_uniform(self.n_users, d)
        self.item_id_embedding = xavier_uniform(self.n_items, d)
        self.trs = nn.ParameterDict()   # W_m: d_m x d, no bias
        self.hyper = nn.ParameterDict()  # V_h / T_h: d_m x H
        for m, x in feats.items():
            self.register_buffer(f"feat_{m}", x, persistent=False)
            self.trs[m] = xavier_uniform(x.shape[1], d)
            self.hyper[m] = xavier_uniform(x.shape[1], self.hyper_num)
        self.drop = nn.Dropout(p=1.0 - self.keep_rate)
        self._csr: tuple[CSRGraph, CSRGraph] | None = None  # (Â, R) for --minibatch sampled, built on first use
        #: --minibatch sampled: per modality, the propagated features Â^L_mm [R̄ X; X] and the sums R X
        #: (computed on first use; see _feature_sums)
        self._sums: dict[str, tuple[Tensor, Tensor]] = {}

    # ------------------------------------------------------------------------------ parts
    def _mge(self, m: str) -> tuple[Tensor, Tensor]:
        """Modality graph embedding M^m (last layer) and the user mean F_u^m."""
        f_i = self.modality_hook(m, self.modality_input(m, getattr(self, f"feat_{m}")) @ self.trs[m])  # [I, d]
        f_u = spmm(self.r, f_i, self.r_t) * self.inv_deg_u  # [U, d]
        h = torch.cat([f_u, f_i], dim=0)
        for _ in range(self.n_mm_layers):
            h = spmm(self.norm_adj, h)
        return h, f_u

    def _assign(self, logits: Tensor) -> Tensor:
        if self.training or self.eval_gumbel:
            return F.gumbel_softmax(logits, tau=TAU, hard=False, dim=1)
        return torch.softmax(logits / TAU, dim=1)  # the noise-free soft assignment

    def _ghe(self, m: str, c_items: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Global hypergraph embedding (G_u^m, G_i^m) and its factors (H_u^m, H_i^m, last Λ^m)."""
        z_i = getattr(self, f"feat_{m}") @ self.hyper[m]  # [I, H]
        z_u = spmm(self.r, z_i, self.r_t)  # [U, H] sum over the user's items
        h_i, h_u = self._assign(z_i), self._assign(z_u)
        h_i, h_u = self.drop(h_i), self.drop(h_u)  # identity in eval mode
        e_i = c_items
        for _ in range(self.n_hyper_layer):
            lam = h_i.T @ e_i  # [H, d]
            e_i = h_i @ lam
        g_u = h_u @ lam
        return g_u, e_i, h_u, h_i, lam

    # ------------------------------------------------------------------------------ interface
    def propagate(self) -> Embeddings:
        ego = torch.cat([self.user_embedding, self.item_id_embedding], dim=0)
        c = light_propagate(self.norm_adj, ego, self.n_ui_layers)
        local, ghe, views = c, 0.0, {}
        for m in self.modalities:
            mm, f_u = self._mge(m)
            local = local + F.normalize(mm, dim=1)
            g_u, g_i, h_u, h_i, lam = self._ghe(m, c[self.n_users:])
            views[f"user_{m}"] = f_u
            views[f"ghe_user_{m}"], views[f"ghe_item_{m}"] = g_u, g_i
            views[f"hyper_user_{m}"], views[f"hyper_item_{m}"], views[f"hyper_lambda_{m}"] = h_u, h_i, lam
            ghe = ghe + torch.cat([g_u, g_i], dim=0)
        z = local + self.alpha * F.normalize(ghe, dim=1)
        user, item = torch.split(z, [self.n_users, self.n_items])
        return Embeddings(user, item, views)

    # ------------------------------------------------------------------------------ --minibatch sampled
    def propagate_batch(self, batch: Batch, mb: MiniBatch) -> tuple[Embeddings, Batch]:
        """z at the batch's users and items only (docs/scaling.md, "LGMRec").

        * C: LightGCN's readout from sampled ``n_ui_layers``-hop neighbourhoods (also at a uniform item sample,
          which the hypergraph's Λ reads);
        * M^m: exact, from the rows of Â^L_mm [R̄ X; X] projected by W (linear in W, see _feature_sums); with a
          plug-in at the modality hook (not linear), ``n_mm_layers`` sampled hops of Â instead (_mge_hops);
        * Γ: Λ = H_iᵀ E_I estimated on the uniform item sample (I/S times the sample's sum); a user's hyperedge
          logits Z_u = (R X) V exact; the contrastive denominators from uniform samples.
        """
        if self._csr is None:
            self._csr = (CSRGraph(self.norm_adj), CSRGraph(self.r))
        adj, r = self._csr
        gen, n_u = mb.generator, self.n_users
        bu = torch.unique(batch.users)
        bi = torch.unique(torch.cat([batch.pos, batch.neg]))
        dev = bu.device
        gi = uniform_sample(self.n_items, mb.share(GLOBAL_SAMPLE), gen, dev)
        gu = uniform_sample(n_u, mb.share(GLOBAL_SAMPLE), gen, dev)
        nodes, c, _ = sampled_layer_mean(adj, self.user_embedding, self.item_id_embedding,
                                         torch.cat([bu, bi + n_u, gi + n_u]), mb, self.n_ui_layers, n_u)
        c_u, c_i, c_g = (c[torch.searchsorted(nodes, ids)] for ids in (bu, bi + n_u, gi + n_u))
        mge = self._mge_sampled(bu, bi, mb)
        ghe = self._ghe_sampled(torch.cat([bu, gu]), bi, gi, c_g)
        local_u, local_i, g_u, g_i, views = c_u, c_i, 0.0, 0.0, {}
        for m in self.modalities:
            mm, f_u = mge[m]
            local_u = local_u + F.normalize(mm[:len(bu)], dim=1)
            local_i = local_i + F.normalize(mm[len(bu):], dim=1)
            h_users, h_bi, h_gi, lam = ghe[m]
            views[f"user_{m}"] = f_u
            views[f"ghe_user_{m}"], views[f"ghe_item_{m}"] = h_users[:len(bu)] @ lam, h_bi @ lam
            views[f"cand_user_{m}"], views[f"cand_item_{m}"], views[f"hyper_lambda_{m}"] = h_users[len(bu):], h_gi, lam
            g_u, g_i = g_u + views[f"ghe_user_{m}"], g_i + views[f"ghe_item_{m}"]
        user = local_u + self.alpha * F.normalize(g_u, dim=1)
        item = local_i + self.alpha * F.normalize(g_i, dim=1)
        return Embeddings(user, item, views), local_batch(batch, bu, bi)

    def _feature_sums(self, m: str) -> tuple[Tensor, Tensor]:
        """(Â^L_mm [R̄ X_m; X_m], R X_m), computed once: the frozen features' share of M^m and of Z_u.

        M^m = Â^L_mm [R̄ X W; X W] = (Â^L_mm [R̄ X; X]) W and Z_u = R (X V) = (R X) V, so a step that reads
        these rows and projects them gets M^m and Z_u exactly, at the cost of its batch: the neighbourhood of
        ``n_mm_layers`` hops, which covers most of the graph from two hops on, is never sampled. Memory: one
        (users + items) x d_m and one users x d_m table per modality (docs/scaling.md)."""
        if m not in self._sums:
            with torch.no_grad():
                x = getattr(self, f"feat_{m}")
                rx = spmm(self.r, x, self.r_t)
                h = torch.cat([rx * self.inv_deg_u, x], dim=0)
                for _ in range(self.n_mm_layers):
                    h = spmm(self.norm_adj, h)
            self._sums[m] = (h, rx)
        return self._sums[m]

    def _mge_sampled(self, bu: Tensor, bi: Tensor, mb: MiniBatch) -> dict[str, tuple[Tensor, Tensor]]:
        """Per modality: M^m at [bu; bi] (rows in that order) and F_u^m at bu."""
        if any(m in self._hooks or m in self._input_hooks for m in self.modalities):
            return self._mge_hops(bu, bi, mb)
        out: dict[str, tuple[Tensor, Tensor]] = {}
        for m in self.modalities:
            h, rx = self._feature_sums(m)
            # constant tables: index_select, several times cheaper than x[ids] on the CPU
            rows = h.index_select(0, torch.cat([bu, bi + self.n_users]))
            out[m] = (rows @ self.trs[m], (rx.index_select(0, bu) * self.inv_deg_u.index_select(0, bu)) @ self.trs[m])
        return out

    def _mge_hops(self, bu: Tensor, bi: Tensor, mb: MiniBatch) -> dict[str, tuple[Tensor, Tensor]]:
        """M^m and F_u^m as in :meth:`_mge_sampled` when a plug-in transforms F_i^m: from one neighbourhood
        sample of ``n_mm_layers`` hops shared by the modalities; at the last hop an item's F_i^m is its
        projected feature (the hook) and a user's F_u^m the mean of its sampled items' (unbiased; exact when
        the fan-out covers it). The hooks see the needed items' rows, the batch's items ``bi`` first."""
        adj, r = self._csr
        gen, n_u = mb.generator, self.n_users
        nodes, blocks = mb.neighbourhood(adj, torch.cat([bu, bi + n_u]), self.n_mm_layers)
        front = nodes[-1]  # starts with [bu; bi + n_u], as every node set does
        is_user = front < n_u
        f_users = front[is_user]
        owner, nbr, w = r.sample(f_users, mb.hops(self.n_mm_layers + 1)[-1], gen)
        w = w * self.inv_deg_u[f_users[owner], 0]  # a sum estimate of R's row, divided by the degree: a mean
        items = extend(bi, torch.cat([front[~is_user] - n_u, nbr]))
        at_item, at_nbr = positions(items, front[~is_user] - n_u), positions(items, nbr)
        out: dict[str, tuple[Tensor, Tensor]] = {}
        for m in self.modalities:
            x = self.modality_input(m, getattr(self, f"feat_{m}").index_select(0, items))
            f_i = self.modality_hook(m, x @ self.trs[m])  # [items, d]
            f_u = torch.zeros(len(f_users), f_i.shape[1], dtype=f_i.dtype, device=f_i.device)
            f_u = f_u.index_add(0, owner, f_i[at_nbr] * w[:, None].to(f_i.dtype))
            h = torch.empty(len(front), f_i.shape[1], dtype=f_i.dtype, device=f_i.device)
            h = h.index_put((is_user.nonzero().squeeze(1),), f_u)
            h = h.index_put(((~is_user).nonzero().squeeze(1),), f_i[at_item])
            for block in reversed(blocks):  # M is the last layer only (no layer mean)
                h = aggregate(block, h)
            out[m] = (h, f_u[:len(bu)])  # the first users of the frontier are bu
        return out

    def _ghe_sampled(self, users: Tensor, bi: Tensor, gi: Tensor, c_g: Tensor
                     ) -> dict[str, tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Per modality: hyperedge assignments of ``users``, of ``bi`` and of the uniform item sample ``gi``,
        and the last Λ, estimated on ``gi`` (whose C rows are ``c_g``)."""
        items = torch.unique(torch.cat([bi, gi]))
        at_bi, at_gi = positions(items, bi), positions(items, gi)
        scale = self.n_items / len(gi)
        out: dict[str, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
        for m in self.modalities:
            z_i = getattr(self, f"feat_{m}").index_select(0, items) @ self.hyper[m]  # [items, H]
            z_u = self._feature_sums(m)[1].index_select(0, users) @ self.hyper[m]  # Z_u = (R X) V
            h_i, h_u = self.drop(self._assign(z_i)), self.drop(self._assign(z_u))
            h_g, e = h_i[at_gi], c_g
            for _ in range(self.n_hyper_layer):
                lam = scale * (h_g.T @ e)
                e = h_g @ lam
            out[m] = (h_u, h_i[at_bi], h_g, lam)
        return out

    def loss(self, batch: Batch, emb: Embeddings) -> dict[str, Tensor]:
        u, i, j = emb.rows("user", batch.users), emb.item[batch.pos], emb.item[batch.neg]
        bpr_ = bpr((u * i).sum(-1), (u * j).sum(-1))
        v = emb.views
        if "cand_user_text" in v:  # --minibatch sampled: uniform candidates (propagate_batch)
            hcl = (info_nce_sum_sampled(batch.users, v["ghe_user_image"], v["ghe_user_text"], v["cand_user_text"],
                                        v["hyper_lambda_text"], self.n_users)
                   + info_nce_sum_sampled(batch.pos, v["ghe_item_image"], v["ghe_item_text"], v["cand_item_text"],
                                          v["hyper_lambda_text"], self.n_items))
            return {"bpr": bpr_, "hcl": self.cl_weight * hcl, "reg": self.reg_weight * emb_norm_loss(u, i, j)}
        # = info_nce_sum(G_u^v[u], G_u^t[u], G_u^t) + info_nce_sum(G_i^v[i], G_i^t[i], G_i^t), computed
        # through the rank-H factors G^t = H^t Λ^t (same value, ~H/d of the flops)
        hcl = (info_nce_sum_lowrank(batch.users, v["ghe_user_image"], v["ghe_user_text"],
                                    v["hyper_user_text"], v["hyper_lambda_text"])
               + info_nce_sum_lowrank(batch.pos, v["ghe_item_image"], v["ghe_item_text"],
                                      v["hyper_item_text"], v["hyper_lambda_text"]))
        return {"bpr": bpr_, "hcl": self.cl_weight * hcl, "reg": self.reg_weight * emb_norm_loss(u, i, j)}
