"""Pinned one-epoch results of every backbone on a tiny demo dataset (CPU, one thread).

``collect(workdir)`` trains each case for one epoch through ``mrdib train`` (in-process) and returns its
losses, validation metrics and a digest of the best epoch's embeddings. The expected values live in
``pinned_results.json`` beside this file; regenerate them only when a change is *meant* to move results::

    python -m tests.pinned.pin_results --write

The demo's interactions come from ``mrdib prepare demo``; the item features are seeded random vectors
written straight into the feature store, so the pin covers training code and not the encoders.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

PINNED = Path(__file__).with_name("pinned_results.json")
DEMO = ("--users", "120", "--items", "60", "--interactions", "1500", "--image-size", "16")
BACKBONES = ("lightgcn", "vbpr", "lgmrec", "freedom", "mgcn", "soil", "bm3", "lattice", "mmgcn", "dualgnn")


def mrdib(alpha_kl: str) -> tuple[str, ...]:
    """The plug-in with its reading and alphas spelt out: the pins guard the code, not the choice of defaults."""
    return ("--mrdib", "--mrdib-preset", "current", "--alpha-kl", alpha_kl, "--alpha-uni", "0.005",
            "--alpha-red", "0.05")


#: case name -> extra ``mrdib train`` arguments
CASES: dict[str, tuple[str, ...]] = {
    **{b: ("-b", b) for b in BACKBONES},
    "vbpr+mrdib": ("-b", "vbpr", *mrdib("0.005")),
    "lgmrec+mrdib": ("-b", "lgmrec", *mrdib("0.01")),
}
COMMON = ("--epochs", "1", "--threads", "1", "--device", "cpu", "--batch-size", "256", "--seed", "999")


def _cli(*args: str) -> None:
    from mrdib_cli.cli.app import main

    try:
        main(list(args))
    except SystemExit as e:
        if e.code:
            raise RuntimeError(f"mrdib {' '.join(args)} exited with {e.code}") from None


def _write_features(workdir: Path) -> None:
    from mrdib_cli.data.feature_store import table_path, write_feature_table

    d = workdir / "datasets" / "demo"
    n_items = json.loads((d / "dataset.json").read_text())["n_items"]
    rng = np.random.default_rng(7)
    for modality, dim in (("image", 24), ("text", 16)):
        x = rng.random((n_items, dim), dtype=np.float32)  # non-negative, as SOIL's graphs need
        write_feature_table(table_path(d, modality, "pinned"), x, ["ok"] * n_items,
                            {"modality": modality, "model": "pinned", "source": "tests/pinned"})


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with np.load(path, allow_pickle=False) as z:
        for key in ("user", "item"):
            h.update(np.ascontiguousarray(z[key]).tobytes())
    return h.hexdigest()


def collect(workdir: Path) -> dict[str, Any]:
    """Train every case for one epoch in ``workdir`` (made fresh) and return the figures to pin."""
    old = os.environ.get("MRDIB_HOME")
    os.environ["MRDIB_HOME"] = str(workdir)
    try:
        _cli("prepare", "demo", *DEMO)
        _write_features(workdir)
        got: dict[str, Any] = {}
        for case, args in CASES.items():
            name = case.replace("+", "-")
            _cli("train", *args, *COMMON, "--run-name", name)
            run = workdir / "runs" / name
            rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
            got[case] = {"loss": rec["loss"], "valid": rec["valid"], "embeddings": _digest(run / "embeddings.npz")}
        return got
    finally:
        if old is None:
            os.environ.pop("MRDIB_HOME", None)
        else:
            os.environ["MRDIB_HOME"] = old


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        got = collect(Path(tmp) / "wd")
    text = json.dumps(got, indent=1, sort_keys=True) + "\n"
    if "--write" in argv:
        PINNED.write_text(text)
        print(f"wrote {PINNED}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
