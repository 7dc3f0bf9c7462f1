"""Fault-injection suite: every test in this folder is one fault scenario (marked ``fault``).

The terminal summary prints ``N faults injected, N survived, K artefacts corrupted``, where *corrupted*
counts the intactness checks (:func:`tests.faults.helpers.assert_intact`) that found a previous good
artefact changed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.faults.helpers import DEMO_ARGS, IMAGE_ARGS, IMAGE_TABLE, STATS, TRAIN, mrdib, ok, outcome


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if Path(str(item.fspath)).resolve().parent == here:
            item.add_marker(pytest.mark.fault)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fault: a fault-injection scenario (tests/faults)")
    config.addinivalue_line("markers", "static_check: a source scan in tests/faults (not counted as a fault)")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    def faults(outcome: str) -> list:
        return [r for r in terminalreporter.stats.get(outcome, [])
                if "fault" in r.keywords and "static_check" not in r.keywords]

    passed, failed = faults("passed"), faults("failed")
    if passed or failed:
        n = len(passed) + len(failed)
        terminalreporter.write_line(
            f"fault suite: {n} faults injected, {len(passed)} survived, {STATS['corrupted']} artefacts "
            f"corrupted ({STATS['intact_checks']} intactness checks)")


@pytest.fixture(scope="session")
def reference_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An uninterrupted tiny demo prepare: (workdir, dataset dir)."""
    wd = tmp_path_factory.mktemp("ref") / "wd"
    ok(mrdib(wd, *DEMO_ARGS))
    return wd, wd / "datasets" / "demo"


@pytest.fixture
def demo_wd(workdir: Path, reference_demo) -> Path:
    """A fresh workdir holding a copy of the reference demo dataset (its images stay in the reference)."""
    shutil.copytree(reference_demo[0], workdir)
    return workdir


@pytest.fixture(scope="session")
def reference_image_table(tmp_path_factory: pytest.TempPathFactory, reference_demo) -> bytes:
    """Bytes of the image feature table an uninterrupted extraction writes for the demo copy."""
    wd = tmp_path_factory.mktemp("ref-img") / "wd"
    shutil.copytree(reference_demo[0], wd)
    ok(mrdib(wd, *IMAGE_ARGS))
    return (wd / IMAGE_TABLE).read_bytes()


@pytest.fixture(scope="session")
def reference_seed7(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An uninterrupted tiny demo prepare with split seed 7: (workdir, dataset dir)."""
    wd = tmp_path_factory.mktemp("ref7") / "wd"
    ok(mrdib(wd, *DEMO_ARGS, "--seed", "7"))
    return wd, wd / "datasets" / "demo"


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory, reference_demo) -> dict:
    """The outcome of an uninterrupted 4-epoch LightGCN run on the demo copy."""
    wd = tmp_path_factory.mktemp("ref-train") / "wd"
    shutil.copytree(reference_demo[0], wd)
    ok(mrdib(wd, *TRAIN))
    return outcome(wd / "runs" / "r")
