"""CLI runs as forks of a pre-warmed fork server (``tests/zygote.py``): a fresh process per run, as a user
gets, without paying the heavy imports (torch, polars, open_clip: 3-5 s of CPU) every time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def env_for(workdir: Path, fault: dict | list | None = None, **extra: str) -> dict[str, str]:
    """A CLI run's environment: this workdir, wide tables, no progress bars, no hub lookups, ``fault``."""
    e = {**os.environ, "MRDIB_HOME": str(workdir), "COLUMNS": "200", "MRDIB_NO_PROGRESS": "1",
         "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    e.pop("MRDIB_TEST_FAULT", None)
    if fault is not None:
        e["MRDIB_TEST_FAULT"] = json.dumps(fault)
    e.update(extra)
    return e


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
            assert json.loads(cls.proc.stdout.readline()).get("ready"), "the tests' fork server did not start"
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
