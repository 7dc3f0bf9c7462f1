"""MINE: the Donsker-Varadhan (DV) lower bound of the mutual information I(X; Y), with a learned critic.

    I(X; Y) >= E_{p(x,y)}[T(x, y)] - log E_{p(x)p(y)}[exp T(x, y)]

Joint pairs are rows (x_i, y_i). Marginal pairs pair x_i with another row's y: with a concatenation critic
one shuffle of y within the batch (a permutation without fixed points); with a *separable* critic
T(x, y) = g(x)^T h(y) (Poole et al., 2019) all n(n-1) off-diagonal pairs at the cost of one [n, n] matrix
product, which is both cheaper and lower-variance. The log-mean-exp is ``logsumexp(T) - log(#pairs)``, so
large critic outputs never overflow.

MRdIB uses it as the redundancy term L_R between the two compressed modalities (docs/mrdib.md): the
critic *maximises* the bound (a tight estimate), the encoders *minimise* it. The min-max is explicit, in one
of two ways (:func:`dv_bound`'s ``critic_grad``):

- ``"reverse"``: the critic's parameters enter through a gradient-reversal layer, so one backward pass gives
  the encoders the gradient of +bound and the critic the gradient of -bound (ascent), both applied by the
  trainer's optimiser;
- ``"detach"`` + :class:`CriticTrainer`: the encoder term uses the critic as a constant and the critic takes
  its own optimiser step on detached inputs (twice the critic cost; kept as an option and for tests).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call


def _mlp(sizes: list[int], last_gain: float = 1.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b)
        nn.init.xavier_uniform_(lin.weight, gain=last_gain if i == len(sizes) - 2 else 1.0)
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MineCritic(nn.Module):
    """T(x, y): a small MLP on the concatenation [x, y] -> scalar (the original MINE critic)."""

    separable = False

    def __init__(self, x_dim: int, y_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = _mlp([x_dim + y_dim, hidden, hidden, 1], last_gain=0.1)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.net(torch.cat([x, y], dim=-1)).squeeze(-1)


class SeparableCritic(nn.Module):
    """T(x, y) = g(x)^T h(y) with one-hidden-layer MLPs g, h: scores every (x_i, y_j) pair at once."""

    separable = True

    def __init__(self, x_dim: int, y_dim: int, hidden: int = 128, out: int = 32) -> None:
        super().__init__()
        # small output layers: T ~ 0 at the start, so the bound starts near 0 instead of at -Var(T)/2
        self.g = _mlp([x_dim, hidden, out], last_gain=0.3)
        self.h = _mlp([y_dim, hidden, out], last_gain=0.3)

    def forward(self, x: Tensor, y: Tensor, all_pairs: bool = False, embed: bool = False) -> Any:
        """T(x_i, y_i) per row, with ``all_pairs`` the [n, n] matrix of T(x_i, y_j), with ``embed`` the pair
        (g(x), h(y)) itself (T = their inner products; :func:`dv_bound` fuses the rest)."""
        gx, hy = self.g(x), self.h(y)
        if embed:
            return gx, hy
        return gx @ hy.T if all_pairs else (gx * hy).sum(-1)


def make_critic(kind: str, x_dim: int, y_dim: int, hidden: int) -> nn.Module:
    if kind == "separable":
        return SeparableCritic(x_dim, y_dim, hidden)
    if kind == "concat":
        return MineCritic(x_dim, y_dim, hidden)
    raise ValueError(f"unknown critic kind {kind!r} (separable, concat)")


class _ReverseGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by -scale (gradient-reversal layer)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return -ctx.scale * grad, None


class _GradGate(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``holder["gate"]``, which may be set after the
    forward pass (so a gradient can be switched off depending on a value computed from this input)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, holder: dict[str, Any]) -> Tensor:  # type: ignore[override]
        ctx.holder = holder
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.holder["gate"], None


class _Standardise(torch.autograd.Function):
    """(z - mean) / sqrt(var + eps) per column, with the backward written out (6 operations instead of ~15;
    it runs on every MRdIB step for both modalities)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        var, mean = torch.var_mean(z, dim=0, correction=0, keepdim=True)
        r = (var + eps).rsqrt_()
        y = (z - mean).mul_(r)
        ctx.save_for_backward(y, r)
        return y

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        y, r = ctx.saved_tensors
        # d/dz of (z - mean) * r: r * (g - mean(g) - y * mean(g * y)), column-wise
        gy = torch.mean(g * y, dim=0, keepdim=True)
        return (g - g.mean(0, keepdim=True)).sub_(y * gy).mul_(r), None


def standardise(z: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-dimension standardisation over the rows, differentiable through the statistics.

    MI is invariant to per-dimension affine maps, so this changes nothing the critic should measure, but it
    removes the cheapest way for the encoders to fool a lagging critic: blowing up or shrinking the scale.
    """
    return _Standardise.apply(z, eps)


class _SeparableDV(torch.autograd.Function):
    """The DV bound of a separable critic from its embeddings: mean_i <a_i, b_i> - log mean_{i != j} exp <a_i, b_j>.

    One pass each way with the [n, n] score matrix worked on in place (masking the diagonal, the stable
    log-sum-exp and its gradient are otherwise ~20 operations over the matrix). Equal to the composed form
    (tests/mrdib/test_mrdib_mine.py).
    """

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        n = a.shape[0]
        s = a @ b.T
        joint = torch.linalg.vecdot(a, b).mean()
        s.diagonal().fill_(float("-inf"))
        top = s.max()
        p = s.sub_(top).exp_()  # exp(s - max); 0 on the diagonal
        z = p.sum()
        ctx.save_for_backward(a, b, p, z)
        return joint - (z.log() + top - math.log(n * (n - 1)))

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        a, b, p, z = ctx.saved_tensors
        n = a.shape[0]
        w = p * (-g / z)  # d bound / d s_ij = -softmax_ij over the off-diagonal pairs
        gj = g / n  # d bound / d <a_i, b_i>
        return torch.addcmul(w @ b, b, gj), torch.addcmul(w.T @ a, a, gj)


def redundancy_term(critic: nn.Module, x: Tensor, y: Tensor, weight: float, minmax: str = "reverse",
                    gate: str = "positive") -> Tensor:
    """The MRdIB redundancy estimate for the min-max, on standardised inputs (a scalar, unweighted).

    - with ``gate="positive"`` the encoders (x, y) receive the gradient of the bound only while the estimate
      is positive: MI >= 0, so a negative DV value is pure critic error, and descending it would only chase a
      lagging critic (in practice the encoders then drive the bound to -inf and the representation
      diverges); ``gate="always"`` passes it every step (for a critic kept tight, e.g. several ascent steps);
    - the critic ascends the bound: through gradient reversal (``minmax="reverse"``, scale 1/weight so the
      critic sees the bound's own gradient whatever ``weight`` the caller multiplies the term by), or not at
      all here (``"step"``: the critic is a constant and takes its own optimiser step elsewhere).
    """
    holder = {"gate": 1.0}
    xs = standardise(_GradGate.apply(x, holder))
    ys = standardise(_GradGate.apply(y, holder))
    grad = "reverse" if minmax == "reverse" else "detach"
    dv = dv_bound(critic, xs, ys, critic_grad=grad, reverse_scale=1.0 / weight if weight > 0 else 1.0)
    if gate == "positive":
        holder["gate"] = (dv.detach() > 0).to(dv.dtype)  # a tensor: no host-device sync per step on a GPU
    return dv


def shuffle_perm(n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """A random permutation without fixed points (a random n-cycle) for the marginal pairs.

    A row paired with itself would be a joint pair inside the marginal sample and bias the bound down.
    """
    sigma = torch.randperm(n, generator=generator)
    perm = torch.empty_like(sigma)
    perm[sigma] = torch.roll(sigma, -1)
    return perm.to(device)


def dv_bound(critic: nn.Module, x: Tensor, y: Tensor, perm: Tensor | None = None,
             critic_grad: str = "normal", reverse_scale: float = 1.0,
             generator: torch.Generator | None = None) -> Tensor:
    """DV estimate of I(x; y) over the rows (a scalar, differentiable in x and y).

    ``critic_grad``: "normal" (the critic gets the gradient of the bound), "detach" (the critic is a
    constant: only x and y get gradients) or "reverse" (the critic's parameters pass a gradient-reversal
    layer scaled by ``reverse_scale``: when the caller minimises ``w * bound``, the critic receives
    ``-reverse_scale * w * d bound/d theta``, so ``reverse_scale = 1/w`` makes it ascend the bound itself).
    A separable critic uses all off-diagonal pairs as marginals unless ``perm`` is given.
    """
    n = x.shape[0]
    if n < 2:
        return x.new_zeros(())
    if critic_grad == "normal":
        params = None
    elif critic_grad == "detach":
        params = {k: v.detach() for k, v in critic.named_parameters()}
    elif critic_grad == "reverse":
        params = {k: _ReverseGrad.apply(v, reverse_scale) for k, v in critic.named_parameters()}
    else:
        raise ValueError(f"critic_grad must be normal, detach or reverse, got {critic_grad!r}")

    def t(a: Tensor, b: Tensor, **kw: bool) -> Any:
        return critic(a, b, **kw) if params is None else functional_call(critic, params, (a, b), kw)

    if getattr(critic, "separable", False) and perm is None:
        return _SeparableDV.apply(*t(x, y, embed=True))  # all n(n-1) off-diagonal pairs as marginals
    if perm is None:
        perm = shuffle_perm(n, x.device, generator)
    joint = t(x, y)
    marg = t(x, y[perm])
    return joint.mean() - (torch.logsumexp(marg, dim=0) - math.log(n))


class CriticTrainer:
    """The critic's own optimiser: gradient *ascent* on the DV bound, on detached inputs."""

    def __init__(self, critic: nn.Module, lr: float = 1e-3, steps: int = 1) -> None:
        self.critic = critic
        self.steps = steps
        self.opt = torch.optim.Adam(critic.parameters(), lr=lr)

    def step(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None,
             standardised: bool = False) -> float:
        """``steps`` ascent steps; returns the last DV estimate (before its update)."""
        x, y = x.detach(), y.detach()
        if standardised:
            x, y = standardise(x), standardise(y)
        value = 0.0
        for _ in range(self.steps):
            self.opt.zero_grad(set_to_none=True)
            mi = dv_bound(self.critic, x, y, generator=generator)
            (-mi).backward()
            self.opt.step()
            value = float(mi.detach())
        # leave no stale gradients on the critic for any other optimiser that holds its parameters
        for p in self.critic.parameters():
            p.grad = None
        return value


def estimate_mi(x: Tensor, y: Tensor, *, steps: int = 2000, batch_size: int = 512, lr: float = 1e-3,
                hidden: int = 64, holdout: float = 0.2, eval_every: int = 25, critic: str = "concat",
                seed: int = 0) -> dict[str, Any]:
    """Fit a fresh critic and report the DV bound on rows it never saw.

    Rows are split train / validation / held-out (1 - 2*holdout, holdout, holdout). The critic is trained on
    the train rows; its parameters are kept at the step with the best *validation* bound (early stopping, as
    a high-capacity critic on a few thousand items otherwise over-fits and its train bound runs away); the
    reported ``mi`` is the bound of that critic on the held-out rows (averaged over 10 shuffles), so neither
    over-fitting nor the model selection can inflate it. Used by the tests (analytic Gaussian MI) and by
    ``mrdib diagnose``.
    """
    gen = torch.Generator().manual_seed(seed)
    x = x.detach().float().cpu()
    y = y.detach().float().cpu()
    n = x.shape[0]
    order = torch.randperm(n, generator=gen)
    n_hold = max(2, int(round(n * holdout)))
    hold, val, train = order[:n_hold], order[n_hold:2 * n_hold], order[2 * n_hold:]
    if len(train) < 2:
        raise ValueError(f"too few rows ({n}) to estimate mutual information")
    # standardise with training statistics: the critic's optimisation should not depend on feature scale
    mx, sx = x[train].mean(0), x[train].std(0).clamp_min(1e-8)
    my, sy = y[train].mean(0), y[train].std(0).clamp_min(1e-8)
    xs, ys = (x - mx) / sx, (y - my) / sy
    torch.manual_seed(seed)
    kind = critic
    critic = make_critic(kind, x.shape[1], y.shape[1], hidden)
    opt = torch.optim.Adam(critic.parameters(), lr=lr)
    bs = min(batch_size, len(train))

    def bound(rows: Tensor, repeats: int) -> float:
        with torch.no_grad():
            return sum(float(dv_bound(critic, xs[rows], ys[rows], generator=gen)) for _ in range(repeats)) / repeats

    best_val, best_state, best_step, train_curve = -math.inf, copy.deepcopy(critic.state_dict()), 0, []
    for step in range(1, steps + 1):
        idx = train[torch.randint(len(train), (bs,), generator=gen)]
        mi = dv_bound(critic, xs[idx], ys[idx], generator=gen)
        opt.zero_grad(set_to_none=True)
        (-mi).backward()
        opt.step()
        train_curve.append(float(mi.detach()))
        if step % eval_every == 0 or step == steps:
            v = bound(val, 3)
            if v > best_val:
                best_val, best_state, best_step = v, copy.deepcopy(critic.state_dict()), step
    critic.load_state_dict(best_state)
    tail = train_curve[max(0, best_step - eval_every):best_step] or train_curve[-1:]
    return {"mi": bound(hold, 10), "mi_valid": best_val, "mi_train": sum(tail) / len(tail),
            "best_step": best_step, "steps": steps, "n_train": int(len(train)), "n_valid": int(len(val)),
            "n_heldout": int(n_hold), "critic": kind, "critic_hidden": hidden}
