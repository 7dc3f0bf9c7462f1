"""Files and folders the pipeline writes honour the user's umask (temp-file writes used to make them
private: colleagues on a shared server could not read runs, datasets or reports)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mrdib_cli.workspace import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
TINY = ["prepare", "demo", "--users", "60", "--items", "40", "--interactions", "400", "--image-size", "16"]


def _modes(root: Path) -> dict[str, set[str]]:
    """{"files": {...}, "dirs": {...}} octal permission bits found under ``root`` (lock files aside: they are
    opened by the lock helper, not written as artefacts)."""
    found: dict[str, set[str]] = {"files": set(), "dirs": set()}
    for p in root.rglob("*"):
        if ".locks" in p.parts or p.name.endswith(".lock"):
            continue
        found["dirs" if p.is_dir() else "files"].add(oct(stat.S_IMODE(p.stat().st_mode)))
    return found


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, "0o644", "0o755"), (0o077, "0o600", "0o700")])
def test_atomic_writes_honour_the_umask(tmp_path: Path, umask: int, file_mode: str, dir_mode: str) -> None:
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "sub" / "a.json", {"v": 1})
    finally:
        os.umask(old)
    assert oct(stat.S_IMODE((tmp_path / "sub" / "a.json").stat().st_mode)) == file_mode
    assert oct(stat.S_IMODE((tmp_path / "sub").stat().st_mode)) == dir_mode


def test_dataset_run_and_report_are_readable_with_umask_022(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    env = {**os.environ, "MRDIB_HOME": str(wd), "MRDIB_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT)}
    for args in (TINY, ["train", "-b", "lightgcn", "--epochs", "1", "--batch-size", "64", "--threads", "1",
                        "-n", "r"], ["report", "r", "--out", str(wd / "report")]):
        p = subprocess.run([sys.executable, "-m", "mrdib_cli", *args], capture_output=True, text=True, env=env,
                           cwd=str(ROOT), preexec_fn=lambda: os.umask(0o022))
        assert p.returncode == 0, (args, p.stderr)
    for must in ("datasets/demo/dataset.json", "runs/r/config.json", "runs/r/results.json",
                 "runs/r/metrics.jsonl", "report/report.md"):
        assert (wd / must).exists(), must
    assert _modes(wd) == {"files": {"0o644"}, "dirs": {"0o755"}}
