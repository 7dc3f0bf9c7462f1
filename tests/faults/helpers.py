"""Fault-injection helpers: run the CLI with a fault, snapshot artefacts, find leftovers."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

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
def env_for(workdir: Path, fault: dict | list | None = None, **extra: str) -> dict[str, str]:
    e = {**os.environ, "MRDIB_HOME": str(workdir), "COLUMNS": "200", "MRDIB_NO_PROGRESS": "1",
         "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    e.pop("MRDIB_TEST_FAULT", None)
    if fault is not None:
        e["MRDIB_TEST_FAULT"] = json.dumps(fault)
    e.update(extra)
    return e


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


# ------------------------------------------------------------------------------------------- forked runs
class Forked:
    """Result of :func:`mrdib_forked`, shaped like ``subprocess.CompletedProcess``."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


class _Zygote:
    """The fork server (``zygote.py``), started once per test session on first use."""

    proc: subprocess.Popen | None = None

    @classmethod
    def ask(cls, req: dict) -> dict:
        if cls.proc is None or cls.proc.poll() is not None:
            cls.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("zygote.py"))],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(ROOT),
                                        env={**os.environ, "PYTHONPATH": str(ROOT)})
            assert json.loads(cls.proc.stdout.readline()).get("ready"), "fault-suite fork server did not start"
        cls.proc.stdin.write(json.dumps(req) + "\n")
        cls.proc.stdin.flush()
        return json.loads(cls.proc.stdout.readline())


class Child:
    """A forked CLI run in progress (see :func:`start_forked`)."""

    def __init__(self, pid: int, out: Path, err: Path, args: tuple[str, ...]) -> None:
        self.pid, self.out, self.err, self.args = pid, out, err, args

    def wait(self, timeout: float = 300) -> Forked:
        rc = _Zygote.ask({"op": "wait", "pid": self.pid, "timeout": timeout})["rc"]
        if rc == -9999:
            raise TimeoutError(f"mrdib {' '.join(self.args)} ran over {timeout}s")
        res = Forked(rc, self.out.read_text(errors="replace"), self.err.read_text(errors="replace"))
        self.out.unlink(missing_ok=True)
        self.err.unlink(missing_ok=True)
        return res


def start_forked(workdir: Path, *args: str, fault: dict | list | None = None, **extra_env: str) -> Child:
    """Start ``mrdib ARGS`` as a fork of the pre-warmed fork server, with ``fault`` installed in the child."""
    import tempfile

    fd, out = tempfile.mkstemp(prefix="mrdib-fault-out-")
    os.close(fd)
    fd, err = tempfile.mkstemp(prefix="mrdib-fault-err-")
    os.close(fd)
    env = env_for(workdir, fault, **extra_env)
    pid = _Zygote.ask({"op": "start", "args": list(args), "env": env, "fault": fault, "out": out, "err": err})["pid"]
    return Child(pid, Path(out), Path(err), args)


def mrdib_forked(workdir: Path, *args: str, fault: dict | list | None = None, timeout: float = 300,
                 **extra_env: str) -> Forked:
    """Run ``mrdib ARGS`` in a forked child and wait for it."""
    return start_forked(workdir, *args, fault=fault, **extra_env).wait(timeout)


mrdib = mrdib_forked  # the default: a forked child with one fault installed
