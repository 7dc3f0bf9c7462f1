"""What ``mrdib backbones`` shows: every registered backbone with its needs and defaults, as plain data."""

from __future__ import annotations

import inspect
from typing import Any

from mrdib_cli.models.base import available, get_backbone


def _summary(cls: type) -> str:
    doc = inspect.getdoc(inspect.getmodule(cls)) or inspect.getdoc(cls) or ""
    return doc.splitlines()[0] if doc else ""


def describe(name: str) -> dict[str, Any]:
    """One backbone as a JSON-ready dict."""
    cls = get_backbone(name)
    required = tuple(cls.required_modalities)
    optional = tuple(m for m in cls.modalities if m not in required)
    return {
        "name": cls.name,
        "summary": _summary(cls),
        "modalities": {"required": list(required), "optional": list(optional)},
        "training_mode": cls.training_mode,
        "hook_points": list(cls.get_hook_points()),
        "lr_schedule": list(getattr(cls, "lr_schedule", None) or []) or None,
        "default_patience": getattr(cls, "default_patience", None),
        "defaults": dict(cls.defaults),
        "dataset_defaults": {k: dict(v) for k, v in cls.dataset_defaults.items()},
    }


def catalog() -> list[dict[str, Any]]:
    return [describe(n) for n in available()]


def needs_text(d: dict[str, Any]) -> str:
    """'image+text', 'image and/or text', 'none' ... for the table."""
    req, opt = d["modalities"]["required"], d["modalities"]["optional"]
    if not req and not opt:
        return "none (ID only)"
    if req and not opt:
        return " + ".join(req)
    if not req:
        return " and/or ".join(opt)
    return f"{' + '.join(req)} (+ {', '.join(opt)} optional)"
