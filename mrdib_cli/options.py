"""Declared options: a backbone's hyper-parameters and a plug-in's options as (name, type, default, help).

One declaration serves the command line (``--n-layers 2``, ``--alpha-kl 0.01``, switches for booleans),
``--help`` and the resolved configuration, so an option can never be accepted but missing from the help,
or documented with another default than the one used. Bottom layer: imports nothing from mrdib_cli.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """One declared option."""

    name: str  # as in config files and --set (snake_case)
    type: type
    default: Any
    help: str = ""
    spelling: str | None = None  # a flag other than --name-with-dashes, where that alone would be ambiguous

    @property
    def flag(self) -> str:
        """The command-line spelling: ``--name-with-dashes``; a boolean one is a switch (it takes no value)."""
        return self.spelling or "--" + self.name.replace("_", "-")

    @property
    def is_switch(self) -> bool:
        return self.type is bool

    @property
    def off_flag(self) -> str | None:
        """``--no-name`` for a switch that is on by default (the only way to turn it off on the command line)."""
        return "--no-" + self.flag[2:] if self.is_switch and self.default is True else None

    def convert(self, raw: str) -> Any:
        """A command-line value as this option's type (``null`` where the default is None, which means "the
        option's own choice": ``--bottleneck-dim null``); ValueError when it is not one."""
        if self.default is None and raw.strip().lower() in ("null", "none"):
            return None
        return self.type(raw)

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` (from a config file or ``--set``) has this option's type: an integer is a number,
        a bool is not; null only where the default is None."""
        if value is None:
            return self.default is None
        if isinstance(value, bool):
            return self.type is bool
        return isinstance(value, (int, float) if self.type is float else self.type)

    @property
    def words(self) -> str:
        """What a value must be, for a refusal: "an integer", "a number", ..."""
        kind = {int: "an integer", float: "a number", str: "a name", bool: "true or false"}.get(
            self.type, f"a {self.type.__name__}")
        return f"{kind} or null" if self.default is None else kind


def options_from_defaults(defaults: dict[str, Any], helps: dict[str, str]) -> tuple[Option, ...]:
    """Options whose types are their defaults' (a backbone's ``defaults`` mapping); None defaults take str."""
    return tuple(Option(k, type(v) if v is not None else str, v, helps.get(k, "")) for k, v in defaults.items())


def options_from_dataclass(cls: type, helps: dict[str, str],
                           spellings: dict[str, str] | None = None) -> tuple[Option, ...]:
    """Options from a configuration dataclass's fields: a new field is a new option (``int | None`` -> int);
    ``spellings`` gives a field another flag (``preset`` -> ``--mrdib-preset``)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if typing.get_origin(typ) in (typing.Union, types.UnionType):
            typ = next(a for a in typing.get_args(typ) if a is not type(None))
        out.append(Option(f.name, typ, f.default, helps.get(f.name, ""), (spellings or {}).get(f.name)))
    return tuple(out)
