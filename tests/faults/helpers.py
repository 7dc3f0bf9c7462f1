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
               **extra_env: str) -> subprocess.CompletedProcess:
    """Run ``mrdib ARGS`` in a fresh interpreter (through the injector when ``fault`` is given)."""
    return subprocess.run([sys.executable, str(INJECT), *args], capture_output=True, text=True,
                          env=env_for(workdir, fault, **extra_env), cwd=str(ROOT), timeout=timeout)


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


def _warm_imports() -> None:
    """Import the CLI and the heavy libraries once in the parent, so every forked child starts warm."""
    import mrdib_cli.cli.app  # noqa: F401
    import mrdib_cli.data.prepare  # noqa: F401
    import mrdib_cli.evaluation.engine  # noqa: F401
    import mrdib_cli.features.extract  # noqa: F401
    import mrdib_cli.features.image  # noqa: F401
    import mrdib_cli.features.text  # noqa: F401
    import open_clip  # noqa: F401
    import torch  # noqa: F401


class Child:
    """A forked CLI run in progress (see :func:`start_forked`)."""

    def __init__(self, pid: int, out_f: Any, err_f: Any, args: tuple[str, ...]) -> None:
        self.pid, self.out_f, self.err_f, self.args = pid, out_f, err_f, args

    def wait(self, timeout: float = 300) -> Forked:
        import time

        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise TimeoutError(f"mrdib {' '.join(self.args)} ran over {timeout}s")
            time.sleep(0.05)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        self.out_f.seek(0)
        self.err_f.seek(0)
        return Forked(rc, self.out_f.read().decode(errors="replace"), self.err_f.read().decode(errors="replace"))


def start_forked(workdir: Path, *args: str, fault: dict | list | None = None, **extra_env: str) -> Child:
    """Start ``mrdib ARGS`` in a forked child of the test process (imports already paid), with ``fault``.

    Heavy imports (torch, open_clip, sentence-transformers) cost 10-20 s per fresh interpreter on a loaded
    machine; a fork reuses the parent's. The child installs the fault, runs the CLI entry point and exits
    with its code (or dies by SIGKILL); the parent never runs the CLI itself, so no state leaks back.
    """
    import tempfile

    from tests.faults import inject

    _warm_imports()
    out_f = tempfile.TemporaryFile()
    err_f = tempfile.TemporaryFile()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.dup2(out_f.fileno(), 1)
            os.dup2(err_f.fileno(), 2)
            # pytest replaced sys.stdout/err with capture objects: write to the real (redirected) fds
            sys.stdout = open(1, "w", closefd=False, buffering=1)
            sys.stderr = open(2, "w", closefd=False, buffering=1)
            os.environ.clear()
            os.environ.update(env_for(workdir, fault, **extra_env))
            if fault is not None:
                for spec in fault if isinstance(fault, list) else [fault]:
                    inject.install(spec)
            from mrdib_cli.cli.app import main

            try:
                main(list(args))
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return Child(pid, out_f, err_f, args)


def mrdib_forked(workdir: Path, *args: str, fault: dict | list | None = None, timeout: float = 300,
                 **extra_env: str) -> Forked:
    """Run ``mrdib ARGS`` in a forked child and wait for it."""
    return start_forked(workdir, *args, fault=fault, **extra_env).wait(timeout)


mrdib = mrdib_forked  # the default: a forked child with one fault installed
