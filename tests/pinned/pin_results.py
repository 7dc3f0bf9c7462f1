"""Pinned one-epoch results of every backbone on a tiny demo dataset (CPU, one thread).

``collect(workdir)`` trains each case for one epoch through ``mrdib train`` (in-process) and returns its
losses, validation metrics, a digest of the best epoch's embeddings and their sums. The expected values live
in ``pinned_results.json`` beside this file; regenerate them only when a change is *meant* to move results::

    python -m tests.pinned.pin_results --write          # this machine's results become the pins
    python -m tests.pinned.pin_results --add-machine    # also pin the bits of this kind of machine

Why digests per kind of machine: CPUs with other vector units (AVX2 against AVX-512) or vendors take other
matrix kernels, which round differently in the last bits of the embeddings (the losses and metrics have
agreed so far). The digests are keyed by :func:`machine_key`; on a machine without its own, the embeddings
must match the pinned sums closely. ``--add-machine`` refuses results that differ beyond rounding, so it can
only record another machine's bits, never a moved result.

The demo's interactions come from ``mrdib prepare demo``; the item features are seeded random vectors
written straight into the feature store, so the pin covers training code and not the encoders.
"""

from __future__ import annotations

import functools
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


#: relative tolerance of the embeddings' sums on a machine whose digest is not pinned (last-bit rounding of one
#: epoch moves them by about 1e-7)
SUMS_RTOL = 1e-5


@functools.lru_cache(maxsize=1)
def machine_key() -> str:
    """What decides the CPU kernels' rounding: torch's vector capability and the CPU's vendor."""
    import platform

    import torch

    vendor = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        vendor = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                       if ln.startswith("vendor_id")), vendor)
    return f"{torch.backends.cpu.get_cpu_capability()}/{vendor}"


def _embeddings(path: Path) -> tuple[str, dict[str, list[float]]]:
    """(a digest of the user and item embeddings, their sums of absolute values and of squares)."""
    h = hashlib.sha256()
    sums: dict[str, list[float]] = {}
    with np.load(path, allow_pickle=False) as z:
        for key in ("user", "item"):
            x = np.ascontiguousarray(z[key])
            h.update(x.tobytes())
            x = x.astype(np.float64)
            sums[key] = [float(np.abs(x).sum()), float((x * x).sum())]
    return h.hexdigest(), sums


def sums_close(got: dict[str, list[float]], want: dict[str, list[float]]) -> bool:
    return got.keys() == want.keys() and all(np.allclose(got[k], want[k], rtol=SUMS_RTOL, atol=0) for k in got)


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
            digest, sums = _embeddings(run / "embeddings.npz")
            got[case] = {"loss": rec["loss"], "valid": rec["valid"], "embeddings": digest, "embedding_sums": sums}
        return got
    finally:
        if old is None:
            os.environ.pop("MRDIB_HOME", None)
        else:
            os.environ["MRDIB_HOME"] = old


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        got = collect(Path(tmp) / "wd")
    key = machine_key()
    if "--add-machine" in argv:
        pins = json.loads(PINNED.read_text())
        for case, g in got.items():
            p = pins[case]
            if g["loss"] != p["loss"] or g["valid"] != p["valid"] or not sums_close(g["embedding_sums"],
                                                                                  p["embedding_sums"]):
                print(f"{case}: results differ from the pins beyond rounding; --add-machine records another "
                      "machine's rounding only (use --write when a change is meant to move results)")
                return 1
            p["embeddings"][key] = g["embeddings"]
    else:  # a change meant to move results: only this machine's bits are known now
        pins = {case: {**g, "embeddings": {key: g["embeddings"]}} for case, g in got.items()}
    text = json.dumps(pins, indent=1, sort_keys=True) + "\n"
    if "--write" in argv or "--add-machine" in argv:
        PINNED.write_text(text)
        print(f"wrote {PINNED} ({key})")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
