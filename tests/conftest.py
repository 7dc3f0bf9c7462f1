"""Shared fixtures: a fresh workdir per test, the real-data location, CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MRDIB_SHARED_DATA", ROOT.parent / "shared" / "data"))

os.environ.setdefault("MRDIB_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# tables and help wrap at the terminal width; tests read them whole, whatever terminal (or none) runs them
os.environ["COLUMNS"] = "200"


def shared_data(sub: str) -> Path:
    """Path of a real dataset in ../shared/data; skips the test with a reason when it is absent."""
    p = SHARED_DATA / sub
    if not p.exists():
        pytest.skip(f"real data {p} not present (set MRDIB_SHARED_DATA or provide ../shared/data)")
    return p


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    wd = tmp_path / "wd"
    monkeypatch.setenv("MRDIB_HOME", str(wd))
    return wd


@pytest.fixture
def cli(workdir: Path):
    """Run the CLI in a fresh process (a fork of the pre-warmed fork server): returns (exit_code, stdout,
    stderr)."""
    from tests.forked import mrdib_forked

    def run(*args: str, check: bool = False, env: dict | None = None) -> tuple[int, str, str]:
        p = mrdib_forked(workdir, *args, **(env or {}))
        if check and p.returncode != 0:
            raise AssertionError(f"mrdib {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p.returncode, p.stdout, p.stderr

    return run
