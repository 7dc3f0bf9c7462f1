"""``mrdib quickstart``: the README's demo, offline, in a few minutes on a laptop CPU.

It is an ordinary study (see :mod:`mrdib_cli.workflow.config`) built in code: the synthetic demo dataset,
image features from open_clip with **random weights** (no download; the demo's planted signal is in the
text, which uses the bundled all-MiniLM-L6-v2), graphs, LGMRec without and with MRdIB, evaluation, report.
Epochs are capped (``--epochs``, default :data:`DEFAULT_EPOCHS`) so it stays a demo, not a benchmark.
"""

from __future__ import annotations

from typing import Any

from mrdib_cli.workflow.config import Study, parse_study

DEFAULT_EPOCHS = 15
IMAGE_MODEL = "ViT-S-32"  # smallest stock open_clip ViT; random weights, so size buys nothing here


def quickstart_study(*, epochs: int = DEFAULT_EPOCHS, seed: int = 999, users: int = 1000, items: int = 500,
                     interactions: int = 10000, mrdib: bool = True, backbone: str = "lgmrec",
                     device: str = "auto") -> Study:
    data: dict[str, Any] = {
        "name": "quickstart",
        "datasets": [{"name": "demo", "source": "demo",
                      "prepare": {"users": users, "items": items, "interactions": interactions}}],
        "features": {"image": {"model": IMAGE_MODEL, "pretrained": "none", "allow_random_weights": True},
                     "text": {"model": "all-MiniLM-L6-v2"}, "device": device},
        "backbones": [backbone],
        "seeds": [seed],
        "mrdib": [False, True] if mrdib else [False],
        "train": {"epochs": epochs, "patience": 5, "device": device},
        "report": {"out": "reports/quickstart"},
    }
    return parse_study(data, where="quickstart")
