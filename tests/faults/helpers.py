"""Fault-injection helpers: run the CLI with a fault, snapshot artefacts, find leftovers."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tests.forked import Forked, env_for, mrdib_forked, start_forked  # noqa: F401  (the fault suite's runners)

ROOT = Path(__file__).resolve().parents[2]
INJECT = Path(__file__).resolve().parent / "inject.py"
# a tiny demo: 60 users, 40 items, 16 px images (about 2 s per prepare on a loaded machine)
DEMO_ARGS = ["prepare", "demo", "--users", "60", "--items", "40", "--interactions", "400", "--image-size", "16"]
TINY_CONFIG = ROOT / "tests" / "features" / "tiny-vit-test.json"
# image features from a tiny random-weight ViT, 4 shards of 10 items: seconds, no download
IMAGE_ARGS = ["extract-features", "-m", "image", "--image-model-config", str(TINY_CONFIG), "--image-model",
              "tiny-vit-test", "--image-pretrained", "none", "--allow-random-weights", "--shard-size", "10",
              "--workers", "0"]
IMAGE_TABLE = "datasets/demo/features/image-tiny-vit-test-random.parquet"
EPOCHS = 4
TRAIN = ["train", "-b", "lightgcn", "--epochs", str(EPOCHS), "--threads", "1", "--run-name", "r"]
CORE = ("interactions.parquet", "items.parquet", "users.parquet", "dataset.json")
STATS = {"corrupted": 0, "intact_checks": 0}


# ------------------------------------------------------------------------------------------- running
def mrdib_proc(workdir: Path, *args: str, fault: dict | list | None = None, timeout: float = 300,
               fsize_limit: int | None = None, **extra_env: str) -> subprocess.CompletedProcess:
    """Run ``mrdib ARGS`` in a fresh interpreter (through the injector when ``fault`` is given).

    ``fsize_limit`` (bytes) is the process's RLIMIT_FSIZE (``ulimit -f``): a write past it fails with a real
    EFBIG inside whichever library writes (Python ignores SIGXFSZ, so the error is returned, not a signal).
    """
    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

    return subprocess.run([sys.executable, str(INJECT), *args], capture_output=True, text=True,
                          env=env_for(workdir, fault, **extra_env), cwd=str(ROOT), timeout=timeout,
                          preexec_fn=limit if fsize_limit is not None else None)


def at_rename(n: int, action: str = "kill", match: str | None = None, when: str = "before",
              target: str = "os.replace") -> dict:
    """A fault at the ``n``-th ``os.replace`` (or ``os.rename``) whose arguments mention ``match``."""
    spec = {"target": target, "nth": n, "action": action, "when": when}
    return spec if match is None else {**spec, "match": match}


def mmrec_folder(d: Path, feat: np.ndarray | None = None, n_users: int = 6, n_items: int = 5) -> Path:
    """An MMRec-format folder (``<name>.inter`` with x_label splits, optional ``image_feat.npy``)."""
    d.mkdir(parents=True, exist_ok=True)
    rows = ["userID\titemID\trating\ttimestamp\tx_label"]
    for u in range(n_users):
        for i in range(n_items):
            rows.append(f"{u}\t{i}\t5\t{1000 + i}\t{0 if i < 3 else (1 if i == 3 else 2)}")
    (d / f"{d.name}.inter").write_text("\n".join(rows) + "\n")
    if feat is not None:
        np.save(d / "image_feat.npy", feat, allow_pickle=True)
    return d


def spawn(workdir: Path, *args: str, fault: dict | list | None = None, **extra_env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(INJECT), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env_for(workdir, fault, **extra_env),
                            cwd=str(ROOT))


def killed(p: subprocess.CompletedProcess) -> None:
    assert p.returncode == -signal.SIGKILL, f"expected SIGKILL, got {p.returncode}:\n{p.stdout}\n{p.stderr}"


def ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, f"exit {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p


def one_line_error(p: subprocess.CompletedProcess, *needles: str, code: int | None = None) -> str:
    """The process failed with exactly one 'error:' line on stderr, no traceback, naming ``needles``."""
    assert p.returncode != 0, f"expected a failure:\n{p.stdout}\n{p.stderr}"
    if code is not None:
        assert p.returncode == code, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, p.stderr
    msg = " ".join(p.stderr.split("error:", 1)[1].split())  # Rich may wrap the line
    for n in needles:
        assert n.lower() in msg.lower(), f"{n!r} not in: {msg}"
    return msg


# ------------------------------------------------------------------------------------------- artefacts
def outcome(run: Path) -> dict:
    """What must not depend on interruptions: per-epoch losses and metrics, best epoch, valid/test, embeddings."""
    res = json.loads((run / "results.json").read_text())
    hist = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    with np.load(run / "embeddings.npz", allow_pickle=False) as z:
        emb = {k: z[k].tolist() for k in ("user", "item")}
    return {"status": res["status"], "best_epoch": res["best_epoch"], "valid": res["valid"], "test": res["test"],
            "epochs": [(h["epoch"], h["loss"], h["valid"], h["best"]) for h in hist], "emb": emb}


def snapshot(d: Path) -> dict[str, str]:
    """sha256 of every file under ``d`` (relative path -> digest), lock files excluded."""
    out = {}
    for f in sorted(Path(d).rglob("*")):
        if f.is_file() and not f.name.endswith(".lock"):
            out[str(f.relative_to(d))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def assert_intact(before: dict[str, str], d: Path, only: tuple[str, ...] | None = None) -> None:
    """Every file recorded in ``before`` (or the ``only`` ones) still has the same bytes."""
    now = snapshot(d)
    keys = [k for k in before if only is None or k in only]
    STATS["intact_checks"] += 1
    changed = [k for k in keys if now.get(k) != before[k]]
    if changed:
        STATS["corrupted"] += 1
    assert not changed, f"previous artefacts changed or vanished: {changed}"


def leftovers(workdir: Path) -> list[str]:
    """Temp files, staging folders, partial downloads and pending shards anywhere in the workdir."""
    bad = []
    for p in Path(workdir).rglob("*"):
        n = p.name
        if n.startswith(".tmp-") or n.endswith(".part") or n == ".shards" or n == ".publishing":
            bad.append(str(p.relative_to(workdir)))
    return sorted(bad)


def comparable_card(card_path: Path, workdir: Path) -> dict[str, Any]:
    """The dataset card without its creation time, with the workdir path replaced by a placeholder."""
    text = card_path.read_text().replace(str(workdir), "<wd>")
    card = json.loads(text)
    card.pop("created", None)
    return card


def assert_same_dataset(a: Path, wa: Path, b: Path, wb: Path) -> None:
    """Two dataset folders hold byte-identical tables and the same card (modulo time and workdir)."""
    for f in CORE[:3]:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f"{f} differs"
    assert comparable_card(a / "dataset.json", wa) == comparable_card(b / "dataset.json", wb)


mrdib = mrdib_forked  # the default: a forked child with one fault installed
