"""The plug-in objective interface: how MRdIB (or any other auxiliary objective) meets the trainer.

A plug-in installs itself on a backbone's modality hook points, transforms the per-modality item
representations passing through them, and contributes named loss terms. The trainer knows nothing about
what a plug-in does: it optimises the plug-in's parameters together with the backbone's, sums the named
terms it returns, and logs both the terms and ``plugin.logs`` (detached diagnostics such as a MINE
estimate). A min-max objective (e.g. MINE's critic) is handled inside the plug-in, by gradient reversal or
by its own optimiser step in :meth:`Plugin.after_step`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from mrdib_cli.models.base import Backbone, Batch, Embeddings


class Plugin(nn.Module):
    """Base class of plug-in objectives."""

    name: str = ""

    def __init__(self) -> None:
        super().__init__()
        #: detached per-batch diagnostics for logging (name -> float); reset by the plug-in each batch
        self.logs: dict[str, float] = {}

    def attach(self, backbone: Backbone) -> None:
        """Install hooks on ``backbone`` (raise UsageError if it has no suitable hook points)."""
        raise NotImplementedError

    def loss(self, batch: Batch, emb: Embeddings) -> dict[str, Tensor]:
        """Named, already weighted loss terms computed after ``backbone.propagate()`` for this batch."""
        raise NotImplementedError

    def after_step(self, batch: Batch, emb: Embeddings) -> None:
        """Called after the optimiser step (e.g. a separate critic update). Default: nothing."""

    def config(self) -> dict[str, Any]:
        """Resolved configuration, stored with the run."""
        return {}
