"""MINE: the Donsker-Varadhan (DV) lower bound of the mutual information I(X; Y), with a learned critic.

    I(X; Y) >= E_{p(x,y)}[T(x, y)] - log E_{p(x)p(y)}[exp T(x, y)]

Joint pairs are rows (x_i, y_i); marginal pairs are (x_i, y_perm(i)) with y shuffled within the batch. The
log-mean-exp is computed as ``logsumexp(T) - log n`` so large critic outputs never overflow.

MRdIB uses it as the redundancy term L_R between the two compressed modalities (mrdib-method.md §2.4): the
critic *maximises* the bound (so it is a tight estimate), the encoders *minimise* it. The min-max is explicit:
:class:`MineCritic` has its own optimiser step (:meth:`CriticTrainer.step`, on detached inputs), and the
encoder-side term is computed with the critic's parameters detached (:func:`dv_bound` with
``detach_critic=True``), so the main optimiser never moves the critic in the wrong direction.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call


class MineCritic(nn.Module):
    """T(x, y): a small MLP on the concatenation [x, y] -> scalar."""

    def __init__(self, x_dim: int, y_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(x_dim + y_dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.net(torch.cat([x, y], dim=-1)).squeeze(-1)


def shuffle_perm(n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """A random permutation without fixed points (a random n-cycle) for the marginal pairs.

    A row paired with itself would be a joint pair inside the marginal sample and bias the bound down.
    """
    sigma = torch.randperm(n, generator=generator)
    perm = torch.empty_like(sigma)
    perm[sigma] = torch.roll(sigma, -1)
    return perm.to(device)


def dv_bound(critic: MineCritic, x: Tensor, y: Tensor, perm: Tensor | None = None,
             detach_critic: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """DV estimate of I(x; y) over the rows (a scalar, differentiable in x and y).

    With ``detach_critic`` the critic's parameters are used as constants, so the gradient flows only into
    x and y (the encoder side of the min-max).
    """
    n = x.shape[0]
    if n < 2:
        return x.new_zeros(())
    if perm is None:
        perm = shuffle_perm(n, x.device, generator)
    if detach_critic:
        params = {k: v.detach() for k, v in critic.named_parameters()}
        t = lambda a, b: functional_call(critic, params, (a, b))  # noqa: E731
    else:
        t = critic
    joint = t(x, y)
    marg = t(x, y[perm])
    return joint.mean() - (torch.logsumexp(marg, dim=0) - math.log(n))


class CriticTrainer:
    """The critic's own optimiser: gradient *ascent* on the DV bound, on detached inputs."""

    def __init__(self, critic: MineCritic, lr: float = 1e-3, steps: int = 1) -> None:
        self.critic = critic
        self.steps = steps
        self.opt = torch.optim.Adam(critic.parameters(), lr=lr)

    def step(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> float:
        """``steps`` ascent steps; returns the last DV estimate (before its update)."""
        x, y = x.detach(), y.detach()
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
                hidden: int = 64, holdout: float = 0.2, eval_every: int = 25, seed: int = 0) -> dict[str, Any]:
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
    critic = MineCritic(x.shape[1], y.shape[1], hidden=hidden)
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
            "n_heldout": int(n_hold), "critic_hidden": hidden}
