"""MRdIB: the information-bottleneck plug-in objective, registered with the trainer as ``mrdib``.

``mrdib train --backbone NAME --mrdib [--alpha-kl ...]``; see docs/mrdib.md. Importing this package is
cheap: the model code is imported when the plug-in is created.
"""

from __future__ import annotations

from typing import Any

from mrdib_cli.options import Option, options_from_dataclass
from mrdib_cli.training.plugin import Plugin, register_plugin

#: one help line per option for ``mrdib train --help`` (docs/mrdib.md explains them). The options themselves
#: are the fields of :class:`~mrdib_cli.mrdib.objectives.MRdIBConfig`: a new field is a new flag.
HELP: dict[str, str] = {
    "alpha_kl": "alpha1: weight of the per-modality KL (bottleneck) terms.",
    "alpha_red": "alpha2: weight of the MINE redundancy penalty.",
    "alpha_uni": "alpha3: weight of the per-modality unique-information BPR terms.",
    "alpha_syn": "Weight of the explicit synergy head's BPR (with --synergy-head mlp).",
    "bottleneck_dim": "Bottleneck width [the hook's dimension].",
    "synergy_head": "none (the backbone's fused BPR is the synergy term) or mlp.",
    "no_kl": "Drop the KL terms.",
    "no_redundancy": "Drop the redundancy penalty.",
    "no_unique": "Drop the unique-information terms.",
    "mib_only": "Bottleneck (+KL) only: no redundancy, unique or synergy terms.",
    "critic": "MINE critic: separable g(x)^T h(y) or concat MLP([x, y]).",
    "critic_hidden": "Hidden width of the MINE critic.",
    "mine_items": "At most this many distinct positive items per MINE estimate (0: all).",
    "minmax": "reverse (gradient reversal, one pass) or step (the critic's own optimiser step).",
    "critic_lr": "Critic learning rate (minmax step only).",
    "critic_steps": "Critic steps per training step (minmax step only).",
    "init_noise": "Initial sigma as a fraction of the hook representation's std.",
    "centre_logvar": "The log-variance head sees the hook input minus the items' mean.",
    # the readings the paper leaves open (docs/mrdib.md); a preset names a set of them
    "preset": "A named set of the readings below: current (this toolkit's) or paper (the authors' lab's "
              "conventions); explicit options override it.",
    "kl_reduction": "KL reduced by sum over the bottleneck's dimensions, or mean over every element (/ dim).",
    "prior_std": "Standard deviation of the KL's prior N(0, s^2 I).",
    "placement": "Bottleneck on the backbone's projected hook (projection) or on the modality input (input).",
    "units": "scaled: the heads see the hook over its spread at attach; raw: the values themselves.",
    "dual_path": "The backbone's BPR also scores the clean (z = mu) representation.",
    "unique_decoders": "Unique BPR's user side: the backbone's (shared) or one user table per modality "
                       "(independent).",
    "red_gate": "Encoders get the MINE gradient only while the estimate is positive, or always.",
}


def options() -> tuple[Option, ...]:
    """The plug-in's declared options: MRdIBConfig's fields (name, type, default) with their help lines."""
    from mrdib_cli.mrdib.objectives import MRdIBConfig

    return options_from_dataclass(MRdIBConfig, HELP, {"preset": "--mrdib-preset", "units": "--bottleneck-units"})


def create(options: dict[str, Any]) -> Plugin:
    """Factory used by the trainer's plug-in registry (options as in config.json's ``plugin``)."""
    from mrdib_cli.mrdib.objectives import MRdIB

    # "resolved" (stored in config.json by config()) is derived from the backbone at attach(), not an option
    return MRdIB(**{k: v for k, v in options.items() if k != "resolved"})


register_plugin("mrdib", create, switch="--mrdib", options=options)
