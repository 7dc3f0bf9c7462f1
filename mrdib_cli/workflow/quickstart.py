"""``mrdib quickstart``: the README's demo, offline, in a few minutes on a laptop CPU.

It is an ordinary study (see :mod:`mrdib_cli.workflow.config`) built in code: the synthetic demo dataset,
image features from a small open_clip ViT with **random weights** (no download; a random transformer over the
demo's 64-pixel images still separates colours and shapes, and the demo's planted signal is also in the
text), text features from the bundled all-MiniLM-L6-v2, graphs, LGMRec without and with MRdIB, evaluation,
report. Epochs are capped (``--epochs``, default :data:`DEFAULT_EPOCHS`) so it stays a demo, not a benchmark.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mrdib_cli.defaults import SEED
from mrdib_cli.workflow.config import Study, parse_study
from mrdib_cli.workspace import Workspace, atomic_write_text

DEFAULT_EPOCHS = 15
IMAGE_MODEL = "mrdib-demo-vit"
#: a 2-layer ViT at the demo's 64 px: with random weights a ViT-B-32 buys nothing but minutes of CPU time
DEMO_VIT = {"embed_dim": 128,
            "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "head_width": 32, "patch_size": 16},
            "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 64, "heads": 2, "layers": 1}}


def demo_vit_config(ws: Workspace) -> Path:
    """Write the demo ViT's open_clip config into the workdir (registered by extract-features)."""
    path = ws.root / "models" / f"{IMAGE_MODEL}.json"
    text = json.dumps(DEMO_VIT, indent=2, sort_keys=True)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    return path


def quickstart_study(ws: Workspace, *, epochs: int = DEFAULT_EPOCHS, seed: int = SEED, users: int = 1000,
                     items: int = 500, interactions: int = 10000, mrdib: bool = True, backbone: str = "lgmrec",
                     device: str = "auto") -> Study:
    data: dict[str, Any] = {
        "name": "quickstart",
        "datasets": [{"name": "demo", "source": "demo",
                      "prepare": {"users": users, "items": items, "interactions": interactions}}],
        "features": {"image": {"model": IMAGE_MODEL, "model_config": str(demo_vit_config(ws)),
                               "pretrained": "none", "allow_random_weights": True},
                     "text": {"model": "all-MiniLM-L6-v2"}, "device": device},
        "backbones": [backbone],
        "seeds": [seed],
        "mrdib": [False, True] if mrdib else [False],
        "train": {"epochs": epochs, "patience": 5, "device": device},
        "report": {"out": "reports/quickstart"},
    }
    return parse_study(data, where="quickstart")
