"""Which planted attributes a modality representation carries: linear probes on held-out items.

MRdIB claims that the bottleneck drops what is irrelevant to the interactions and keeps what each modality
uniquely predicts. On the demo dataset the truth is known (colour, shape, texture, material, size, fit, and the
irrelevant product noun and brand), so the claim can be checked: fit a linear classifier from a representation
to each attribute on 80% of the items and report its accuracy on the other 20%.

What passes a Gaussian bottleneck is not its mean: mu is deterministic, so a probe on mu decodes anything that
moves mu at all, however small against the noise. The channel's output is a *sample* z = mu + sigma * eps, so an
MRdIB run is probed on both (``mu`` and ``sample``, one seeded noise draw per item); a plain run on its hook
input h, which passes unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

TRAIN_FRACTION = 0.8


def probe_accuracy(x: Tensor, y: np.ndarray, n_classes: int, *, seed: int = 0, l2: float = 1e-3,
                   max_iter: int = 300) -> float:
    """Held-out accuracy of a multinomial logistic regression from ``x`` [N, d] to labels ``y`` [N].

    Features are standardised with the training part's statistics (a representation's scale carries no
    information about an attribute); a small L2 penalty keeps the fit defined when classes separate. The
    problem is convex, so the classifier starts at zero: no random initialisation, no global RNG touched.
    """
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    perm = torch.randperm(n, generator=g)
    cut = int(TRAIN_FRACTION * n)
    tr, te = perm[:cut], perm[cut:]
    x = x.detach().float().cpu()
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
    x = (x - mu) / sd
    labels = torch.as_tensor(np.asarray(y), dtype=torch.long)
    lin = torch.nn.Linear(x.shape[1], n_classes)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(x[tr]), labels[tr]) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float((lin(x[te]).argmax(1) == labels[te]).float().mean())


def attribute_probes(reps: dict[str, Tensor], attrs: dict[str, np.ndarray], n_values: dict[str, int], *,
                     seed: int = 0) -> dict[str, dict[str, float]]:
    """``{attribute: {"chance": majority-class rate, <representation>: held-out accuracy, ...}}``."""
    out: dict[str, dict[str, float]] = {}
    for a, y in attrs.items():
        row = {"chance": float(np.bincount(y, minlength=n_values[a]).max() / len(y))}
        for name, x in reps.items():
            row[name] = probe_accuracy(x, y, n_values[a], seed=seed)
        out[a] = row
    return out
