"""A clean, pre-warmed process that forks CLI runs on request (a tiny fork server for the tests).

Heavy imports (torch, open_clip, polars, faiss) cost 10-20 s per fresh interpreter on a loaded machine, so
every CLI run is a fork of this process, which has imported them but never *used* them: libraries that
start thread pools on first use (polars, OpenMP) would deadlock in a child forked after that, which is why
the pytest process itself (whose other tests use polars) never forks CLI runs.

Protocol: one JSON object per line on stdin, one JSON answer per line on stdout.
    {"op": "start", "args": [...], "env": {...}, "fault": spec|null, "out": path, "err": path} -> {"pid": n}
    {"op": "wait", "pid": n, "timeout": s} -> {"rc": code}   (negative: killed by that signal)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _warm() -> None:
    import faiss  # noqa: F401
    import open_clip  # noqa: F401
    import polars  # noqa: F401
    import torch  # noqa: F401

    import mrdib_cli.cli.app  # noqa: F401
    import mrdib_cli.data.prepare  # noqa: F401
    import mrdib_cli.evaluation.engine  # noqa: F401
    import mrdib_cli.features.extract  # noqa: F401
    import mrdib_cli.features.image  # noqa: F401
    import mrdib_cli.features.text  # noqa: F401
    for optional in ("mrdib_cli.training.trainer", "mrdib_cli.graphs.bipartite"):
        try:
            __import__(optional)
        except ImportError:
            pass


def _child(req: dict) -> None:
    code = 1
    try:
        out = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(err, 2)
        sys.stdout = open(1, "w", closefd=False, buffering=1)
        sys.stderr = open(2, "w", closefd=False, buffering=1)
        sys.stdin = open(os.devnull)
        os.environ.clear()
        os.environ.update(req["env"])
        sys.argv = ["mrdib", *req["args"]]  # as the console script sees it (a launcher re-runs these)
        from mrdib_cli.cli import common

        if req["env"].get("COLUMNS", "").isdigit():  # rich reads it when a console is made: here, at _warm()
            for console in (common.out, common.err):
                console.width = int(req["env"]["COLUMNS"])
        from tests.faults import inject

        fault = req.get("fault")
        for spec in (fault if isinstance(fault, list) else [fault]) if fault else []:
            inject.install(spec)
        from mrdib_cli.cli.app import main

        try:
            main(list(req["args"]))
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


def _wait(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -9999
        time.sleep(0.02)


def main() -> None:
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    _warm()
    reply = sys.stdout
    print(json.dumps({"ready": True}), file=reply, flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "start":
            reply.flush()
            pid = os.fork()
            if pid == 0:
                _child(req)
            print(json.dumps({"pid": pid}), file=reply, flush=True)
        elif req["op"] == "wait":
            print(json.dumps({"rc": _wait(int(req["pid"]), float(req.get("timeout", 300)))}), file=reply,
                  flush=True)


if __name__ == "__main__":
    main()
