"""The error contract under real failures and hostile values: one line, the documented exit code.

Disk full is a genuine ENOSPC from the kernel (the temp file a writer opens is a link to /dev/full), and a
file-size limit a genuine EFBIG (RLIMIT_FSIZE in a fresh interpreter): both fail inside polars' and torch's
own writers, not in a wrapper.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.faults.helpers import TRAIN, killed, mrdib, mrdib_proc, ok, one_line_error

DEVFULL = {"target": "tempfile.mkstemp", "when": "after", "action": "devfull"}


@pytest.fixture
def trained_wd(demo_wd: Path) -> Path:
    ok(mrdib(demo_wd, *TRAIN))
    return demo_wd


# ------------------------------------------------------------------------------------------- disk
def test_disk_full_inside_polars(trained_wd: Path) -> None:
    p = mrdib(trained_wd, "eval", "--run", "r", "--k", "5", fault={**DEVFULL, "match": "per_user"})
    one_line_error(p, "No space left on device", "ENOSPC", "--workdir", code=1)


def test_disk_full_inside_torch_save(demo_wd: Path) -> None:
    p = mrdib(demo_wd, *TRAIN, fault={**DEVFULL, "match": "last.pt"})
    one_line_error(p, "last.pt", "No space left on device", "ENOSPC", code=1)


def test_file_size_limit_inside_polars(trained_wd: Path) -> None:
    p = mrdib_proc(trained_wd, "eval", "--run", "r", "--k", "5", fsize_limit=2000)  # per_user ~2.9 kB, the JSON ~1.7 kB
    one_line_error(p, "File too large", "EFBIG", "ulimit", code=1)


def test_file_size_limit_inside_torch_save(demo_wd: Path) -> None:
    p = mrdib_proc(demo_wd, *TRAIN, fsize_limit=100_000)  # last.pt is ~150 kB, everything else smaller
    one_line_error(p, "last.pt", "File too large", "EFBIG", code=1)


# ------------------------------------------------------------------------------------------- options and config
@pytest.mark.parametrize("args,needle", [
    (["train", "-b", "lightgcn", "--lr", "nan"], "lr"),
    (["train", "-b", "lightgcn", "--set", "train.weight_decay=inf"], "weight_decay"),
    (["prepare", "demo", "--seed", "-1"], "--seed"),
])
def test_invalid_option_values_are_usage_errors(demo_wd: Path, args: list[str], needle: str) -> None:
    one_line_error(mrdib(demo_wd, *args), needle, code=2)


# ------------------------------------------------------------------------------------------- importers
@pytest.mark.parametrize("train", ['{"0": [0, 4.7], "1": [1, 2]}', '{"0": [0, true], "1": [1, 2]}',
                                   '{"0": {"4": 1}, "1": [1, 2]}', '{"0.5": [0], "1": [1, 2]}'])
def test_lattice_refuses_non_integer_ids(workdir: Path, tmp_path: Path, train: str) -> None:
    d = tmp_path / "lat"
    d.mkdir()
    for f in ("val.json", "test.json"):
        (d / f).write_text('{"0": [0, 1], "1": [1, 2]}')
    (d / "train.json").write_text(train)
    one_line_error(mrdib(workdir, "import", "lattice", str(d), "--name", "lat"), "train.json", "integer", code=1)
    assert not (workdir / "datasets" / "lat").exists()


def test_mmrec_empty_user_id(workdir: Path, tmp_path: Path) -> None:
    d = tmp_path / "mm"
    d.mkdir()
    (d / "mm.inter").write_text("userID\titemID\trating\ttimestamp\tx_label\n0\t0\t5\t1\t0\n\t1\t5\t2\t0\n")
    one_line_error(mrdib(workdir, "import", "mmrec", str(d), "--name", "mm"), "userID", "line 3", code=1)


# ------------------------------------------------------------------------------------------- damaged run files
def test_diagnose_with_unreadable_best_checkpoint(trained_wd: Path) -> None:
    best = trained_wd / "runs" / "r" / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:500])
    one_line_error(mrdib(trained_wd, "diagnose", "r"), "best.pt", code=1)


def test_report_on_torn_metrics(trained_wd: Path, tmp_path: Path) -> None:
    m = trained_wd / "runs" / "r" / "metrics.jsonl"
    m.write_text(m.read_text() + '{"epoch": 5, "loss": {"bpr": 0.6')
    one_line_error(mrdib(trained_wd, "report", "r", "--out", str(tmp_path / "rep")), "metrics.jsonl", "--resume",
                   code=1)


class _Hostile:
    """Unpickling this would run a command: weights_only loading must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (shutil.copy, ("/etc/hostname", str(self.marker)))


def test_doctor_reports_a_hostile_checkpoint(demo_wd: Path, tmp_path: Path) -> None:
    import torch

    killed(mrdib(demo_wd, *TRAIN, fault={"target": "mrdib_cli.training.checkpoint.save", "match": "last.pt",
                                         "nth": 2, "when": "after", "action": "kill"}))
    marker = tmp_path / "ran"
    torch.save({"format": 1, "model": _Hostile(marker)}, demo_wd / "runs" / "r" / "checkpoints" / "last.pt")
    p = mrdib(demo_wd, "doctor", "r", "--json")
    report = json.loads(p.stdout)
    assert not marker.exists(), "the hostile checkpoint ran code"
    found = [f for f in report["findings"] if f["code"] == "unreadable-checkpoint"]
    assert found and "last.pt" in found[0]["message"], p.stdout
