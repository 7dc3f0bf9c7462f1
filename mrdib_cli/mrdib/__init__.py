"""MRdIB: the information-bottleneck plug-in objective, registered with the trainer as ``mrdib``.

``mrdib train --backbone NAME --mrdib [--alpha-kl ...]``; see docs/mrdib.md. Importing this package is
cheap: the model code is imported when the plug-in is created.
"""

from __future__ import annotations

from typing import Any

from mrdib_cli.training.plugin import Plugin, register_plugin

#: ``mrdib train`` flags of the plug-in -> (option, type)
FLAGS: dict[str, tuple[str, type]] = {
    "--alpha-kl": ("alpha_kl", float),
    "--alpha-red": ("alpha_red", float),
    "--alpha-uni": ("alpha_uni", float),
    "--alpha-syn": ("alpha_syn", float),
    "--bottleneck-dim": ("bottleneck_dim", int),
    "--synergy-head": ("synergy_head", str),
    "--no-kl": ("no_kl", bool),
    "--no-redundancy": ("no_redundancy", bool),
    "--no-unique": ("no_unique", bool),
    "--mib-only": ("mib_only", bool),
    "--centre-logvar": ("centre_logvar", bool),
    # the readings the paper leaves open (docs/mrdib.md, "Readings the paper leaves open"); a preset names a set
    "--mrdib-preset": ("preset", str),
    "--kl-reduction": ("kl_reduction", str),
    "--prior-std": ("prior_std", float),
    "--placement": ("placement", str),
    "--bottleneck-units": ("units", str),
    "--dual-path": ("dual_path", bool),
    "--unique-decoders": ("unique_decoders", str),
    "--red-gate": ("red_gate", str),
    "--critic": ("critic", str),
    "--critic-steps": ("critic_steps", int),
    "--minmax": ("minmax", str),
    "--mine-items": ("mine_items", int),
}


def create(options: dict[str, Any]) -> Plugin:
    """Factory used by the trainer's plug-in registry (options as in config.json's ``plugin``)."""
    from mrdib_cli.mrdib.objectives import MRdIB

    # "resolved" (stored in config.json by config()) is derived from the backbone at attach(), not an option
    return MRdIB(**{k: v for k, v in options.items() if k != "resolved"})


register_plugin("mrdib", create, switch="--mrdib", flags=FLAGS)
