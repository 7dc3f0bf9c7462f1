"""The package reads one way: every import goes down the layers (docs/architecture.md), none back up.

Function-level imports count too: a lazy import that climbs back up is still a cycle waiting to happen.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "mrdib_cli"
#: lowest first; the single modules at the top of the package are the bottom layer
LAYERS = ("<core>", "data", "features", "graphs", "models", "evaluation", "training", "mrdib", "reporting",
          "workflow", "cli", "__main__")


def _layer(module: str) -> str:
    """The layer of ``mrdib_cli.x.y``: its sub-package, or ``<core>`` for a single module of the package."""
    parts = module.split(".")
    if len(parts) > 1 and ((ROOT / parts[1]).is_dir() or parts[1] == "__main__"):
        return parts[1]
    return "<core>"


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mrdib_cli":
            if node.module == "mrdib_cli":  # from mrdib_cli import launch, __version__
                out += [(node.lineno, f"mrdib_cli.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "mrdib_cli"]
    return out


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_climbs_back_up():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        mod = _module(path)
        here = _layer(mod)
        assert here in rank, f"{mod}: package '{here}' is not placed in LAYERS"
        for line, target in _imports(path):
            there = _layer(target)
            if rank[there] > rank[here]:
                upward.append(f"{path.relative_to(ROOT.parent)}:{line} ({here}) imports {target} ({there})")
    assert not upward, "imports running back up the layers:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    """The rule itself: a data module importing the trainer would be reported."""
    assert _layer("mrdib_cli.data.handle") == "data" and _layer("mrdib_cli.workspace") == "<core>"
    assert LAYERS.index(_layer("mrdib_cli.training.trainer")) > LAYERS.index(_layer("mrdib_cli.data.handle"))
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from mrdib_cli.training.trainer import Trainer\n")
    assert _imports(p) == [(2, "mrdib_cli.training.trainer")]
