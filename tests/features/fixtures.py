"""Fixtures for feature extraction tests (imported by the test modules: a conftest.py here would shadow
the top-level ``conftest`` module that other tests import by name)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.features.helpers import AWKWARD, awkward_bytes, write_dataset


@pytest.fixture
def awkward_dataset(workdir: Path, tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A dataset whose card points at a folder of good and bad images; returns (dataset dir, image dir, expected)."""
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    items, expected = [], {}
    for k, (asin, (kind, status)) in enumerate(AWKWARD.items()):
        if kind is not None:
            ext, data = awkward_bytes(kind)
            stem = str(k) if kind == "by-index" else asin
            (img_dir / f"{stem}{ext}").write_bytes(data)
        text = {} if asin == "A7" else {"title": f"Product {asin}", "brand": "Acme",
                                        "categories": json.dumps([["Baby", "Feeding"]]),
                                        "description": "line one\nline two"}
        items.append({"asin": asin if kind != "by-index" else f"X{k}", **text})
        expected[asin] = status
    d = write_dataset(workdir, "toy", items, image_dir=img_dir)
    return d, img_dir, expected


@pytest.fixture
def run_cli(workdir: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """Run the CLI in this process (imports paid once): returns (exit code, stdout, stderr).

    The subprocess ``cli`` fixture costs ~5-15 s of imports per call on a loaded 2-core machine, so only the
    end-to-end test uses it; error-path tests run here through the same ``main`` entry point.
    """
    from mrdib_cli.cli.app import main

    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        capsys.readouterr()
        try:
            main(list(args))
            rc = 0
        except SystemExit as e:
            rc = int(e.code or 0)
        got = capsys.readouterr()
        return rc, got.out, got.err

    return run
