"""Every run records which code produced it (the commit, when the package runs from a git checkout)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from mrdib_cli import provenance

ROOT = Path(provenance.__file__).resolve().parent.parent


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(autouse=True)
def _fresh_cache():
    provenance.code_version.cache_clear()
    yield
    provenance.code_version.cache_clear()


def test_a_git_checkout_records_its_commit_and_whether_the_package_is_modified() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("the package is not running from a git checkout here (installed copy or no git)")
    v = provenance.code_version()
    assert v["git_commit"] == _git("rev-parse", "HEAD") and len(v["git_commit"]) == 40
    changed = bool(_git("status", "--porcelain", "--untracked-files=no", "--", "mrdib_cli"))
    assert v["git_dirty"] is changed


def test_without_git_the_versions_are_still_recorded(monkeypatch) -> None:
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    v = provenance.code_version()
    assert v["git_commit"] is None and v["git_dirty"] is None and v["mrdib"] and v["torch"]
