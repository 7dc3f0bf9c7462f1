"""The plug-in objective interface: how MRdIB (or any other auxiliary objective) meets the trainer.

A plug-in installs itself on a backbone's modality hook points, transforms the per-modality item
representations passing through them, and contributes named loss terms. The trainer knows nothing about
what a plug-in does: it optimises the plug-in's parameters together with the backbone's, sums the named
terms it returns, and logs both the terms and ``plugin.logs`` (detached diagnostics such as a MINE
estimate). A min-max objective (e.g. MINE's critic) is handled inside the plug-in, by gradient reversal or
by its own optimiser step in :meth:`Plugin.after_step`.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor, nn

from mrdib_cli.models.base import Backbone, Batch, Embeddings, MiniBatch
from mrdib_cli.options import Option


class Plugin(nn.Module):
    """Base class of plug-in objectives."""

    name: str = ""

    def __init__(self) -> None:
        super().__init__()
        #: detached per-batch diagnostics for logging (name -> float); reset by the plug-in each batch
        self.logs: dict[str, float | Tensor] = {}  # floats or detached scalar tensors (summed per epoch)

    def attach(self, backbone: Backbone) -> None:
        """Install hooks on ``backbone`` (raise UsageError if it has no suitable hook points)."""
        raise NotImplementedError

    def before_step(self, batch: Batch) -> None:
        """Called before ``backbone.propagate()`` of each training step. Default: nothing.

        Lets a plug-in on an item-local backbone (``Backbone.item_local_hooks``) transform only the batch's rows.
        """

    def refuses_backbone(self, backbone: type[Backbone]) -> str | None:
        """Why this plug-in, so configured, cannot work with ``backbone`` (None: it can). Asked when the run's
        configuration is resolved, before any model is built. Default: it can."""
        return None

    def refuses_sampled(self) -> str | None:
        """Why this plug-in's configuration cannot train in ``--minibatch sampled`` mode (None: it can), e.g.
        a term that needs a second whole-catalogue forward. Default: it can."""
        return None

    def loss(self, batch: Batch, emb: Embeddings) -> dict[str, Tensor]:
        """Named, already weighted loss terms computed after ``backbone.propagate()`` for this batch."""
        raise NotImplementedError

    def after_step(self, batch: Batch, emb: Embeddings) -> None:
        """Called after the optimiser step (e.g. a separate critic update). Default: nothing."""

    def health(self) -> tuple[dict[str, float], dict[str, str]]:
        """Figures about the plug-in's state after the epoch's evaluation forward, and problems worth a warning.

        Called once per epoch, after the evaluation embeddings were computed (so it costs no training time);
        the figures go to ``metrics.jsonl`` under ``health``. Problems are one-line messages keyed by kind, so
        that the trainer warns once per kind, not every epoch. Default: nothing to report.
        """
        return {}, {}

    def config(self) -> dict[str, Any]:
        """Resolved configuration, stored with the run."""
        return {}


def forward_terms(backbone: Backbone, plugin: Plugin | None, batch: Batch,
                  minibatch: MiniBatch | None = None) -> tuple[Embeddings, dict[str, Tensor]]:
    """One training step's forward: ``before_step``, ``propagate()``, then the backbone's and the plug-in's
    named terms (the same sequence for the trainer, the DDP step and the cost benchmark).

    With ``minibatch`` (``--minibatch sampled``) the forward covers only the batch's rows and the terms (the
    plug-in's too) are computed on the batch re-indexed into them."""
    if minibatch is not None:
        # no before_step: the hooks already see only the batch's rows, and every one of them is used
        emb, batch = backbone.propagate_batch(batch, minibatch)
        terms = backbone.loss(batch, emb)
        if plugin is not None:
            terms.update(plugin.loss(batch, emb))
        return emb, terms
    if plugin is not None:
        plugin.before_step(batch)
    emb = backbone.propagate_step(batch)
    terms = backbone.loss(batch, emb)
    if plugin is not None:
        terms.update(plugin.loss(batch, emb))
    return emb, terms


# --------------------------------------------------------------------------------------------- registry
#: name -> factory(options: dict) -> Plugin
PluginFactory = Callable[[dict[str, Any]], Plugin]
_PLUGINS: dict[str, PluginFactory] = {}
#: modules imported on first lookup so that their ``register_plugin`` calls run
PLUGIN_MODULES = ("mrdib_cli.mrdib",)


#: name -> (switch flag, declared options): the plug-in's own ``mrdib train`` flags
_PLUGIN_FLAGS: dict[str, tuple[str, Callable[[], tuple[Option, ...]]]] = {}


def register_plugin(name: str, factory: PluginFactory, *, switch: str | None = None,
                    options: Callable[[], tuple[Option, ...]] | None = None) -> None:
    """Make a plug-in available to ``mrdib train --plugin NAME`` (and the ``plugin:`` config section).

    ``factory(options)`` gets the plug-in options (the config's ``plugin`` mapping without ``name``) and
    returns a :class:`Plugin`; it raises ``UsageError`` for unknown or invalid options.
    ``switch`` (e.g. ``"--mrdib"``) selects the plug-in on the command line, and ``options()`` declares its
    options (:class:`~mrdib_cli.options.Option`): each becomes a flag (``--alpha-kl 0.01``; a boolean one a
    switch, ``--no-kl``), picked out of the extra arguments by :func:`claim_plugin_args` and listed in
    ``mrdib train --help``. A callable, so that declaring costs nothing until the flags are needed.
    """
    if name in _PLUGINS and _PLUGINS[name] is not factory:
        raise ValueError(f"plug-in '{name}' registered twice")
    _PLUGINS[name] = factory
    if switch:
        _PLUGIN_FLAGS[name] = (switch, options or (lambda: ()))


def plugin_switches() -> dict[str, tuple[str, tuple[Option, ...]]]:
    """name -> (switch, declared options) of every plug-in with command-line flags."""
    available_plugins()
    return {name: (sw, opts()) for name, (sw, opts) in sorted(_PLUGIN_FLAGS.items())}


def _convert(opt: Option, raw: str) -> Any:
    from mrdib_cli.errors import UsageError

    try:
        return opt.convert(raw)
    except ValueError:
        raise UsageError(f"{opt.flag} expects {opt.words}, got {raw!r}") from None


def claim_plugin_args(args: list[str], selected: str | None = None) -> tuple[dict[str, Any] | None, list[str]]:
    """Pick registered plug-in switches and options out of extra CLI arguments.

    Returns ``({"name": plugin, option: value, ...} or None, remaining args)``. A plug-in's option without
    its switch (or without ``--plugin NAME`` = ``selected``) is an error rather than silently ignored.
    """
    from mrdib_cli.errors import UsageError

    owners: dict[str, tuple[str, Option | None]] = {}
    for name, (sw, declared) in plugin_switches().items():
        owners[sw] = (name, None)
        owners.update({o.flag: (name, o) for o in declared})
        owners.update({o.off_flag: (name, o) for o in declared if o.off_flag})
    chosen, opts, seen, rest = selected, {}, {}, []
    i = 0
    while i < len(args):
        flag, eq, val = args[i].partition("=")
        if flag not in owners:
            rest.append(args[i])
            i += 1
            continue
        name, opt = owners[flag]
        key = None if opt is None else opt.name
        if opt is None or opt.is_switch:
            if eq:
                raise UsageError(f"{flag} is a switch and takes no value")
            if opt is None:
                if chosen not in (None, name):
                    raise UsageError(f"{flag} conflicts with plug-in '{chosen}' (one plug-in per run)")
                chosen = name
            else:
                opts[opt.name] = flag != opt.off_flag
        else:
            if not eq:
                if i + 1 >= len(args) or args[i + 1].startswith("--"):
                    raise UsageError(f"{flag} needs a value")
                val = args[i + 1]
                i += 1
            opts[opt.name] = _convert(opt, val)
        seen[key] = (flag, name)
        i += 1
    for key, (flag, name) in seen.items():
        if key is not None and chosen != name:
            raise UsageError(f"{flag} is an option of the {name} plug-in: add {_PLUGIN_FLAGS[name][0]}")
    if chosen is None:
        return None, rest
    return {"name": chosen, **opts}, rest


def available_plugins() -> list[str]:
    import importlib

    for mod in PLUGIN_MODULES:
        try:
            importlib.import_module(mod)
        except ImportError:  # a plug-in package that is not there yet simply offers nothing
            pass
    return sorted(_PLUGINS)


def create_plugin(name: str, options: dict[str, Any] | None = None) -> Plugin:
    """Construct the plug-in ``name`` from its options (one-line error for an unknown name)."""
    from mrdib_cli.errors import UsageError

    names = available_plugins()
    if name not in _PLUGINS:
        raise UsageError(f"unknown plug-in '{name}' (available: {', '.join(names) or 'none'})")
    plugin = _PLUGINS[name](dict(options or {}))
    if not plugin.name:
        plugin.name = name
    return plugin
