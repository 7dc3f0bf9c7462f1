"""The CUDA path: every backbone (and MRdIB) trains, evaluates and resumes on a GPU, and agrees with the CPU.

These tests need a CUDA device and are skipped without one (CI has none; they are run on a lent GPU machine:
`python -m pytest -q tests/cuda`). Everything else in the suite runs on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mrdib_cli.models.base import available
from tests.synth_data import make_dataset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")

MULTIMODAL = sorted(n for n, c in available().items() if c.modalities)


def _results(workdir: Path, run: str) -> dict:
    return json.loads((workdir / "runs" / run / "results.json").read_text())


@pytest.mark.parametrize("backbone", sorted(available()))
def test_every_backbone_trains_and_evaluates_on_cuda(cli, workdir: Path, backbone: str) -> None:
    make_dataset(workdir)
    cli("train", "-b", backbone, "--epochs", "2", "--device", "cuda", "-n", "g", check=True)
    res = _results(workdir, "g")
    assert res["status"] == "finished" and 0.0 <= res["test"]["recall@20"] <= 1.0
    conf = json.loads((workdir / "runs" / "g" / "config.json").read_text())
    assert conf["train"]["device"].startswith("cuda")
    rc, out, err = cli("eval", "--k", "10", "20", "--json", "-")
    assert rc == 0, err
    assert json.loads(out)["metrics"]["recall@20"] == pytest.approx(res["test"]["recall@20"], abs=1e-6)
    u, i = None, None
    import numpy as np  # noqa: F811 (local: the embeddings the run saved are plain float32 arrays)
    with np.load(workdir / "runs" / "g" / "embeddings.npz") as z:
        u, i = z[z.files[0]], z[z.files[1]]
    assert u.dtype == np.float32 and np.isfinite(u).all() and np.isfinite(i).all()


@pytest.mark.parametrize("backbone", MULTIMODAL)
def test_mrdib_trains_on_cuda(cli, workdir: Path, backbone: str) -> None:
    make_dataset(workdir)
    cli("train", "-b", backbone, "--mrdib", "--epochs", "2", "--device", "cuda", "-n", "m", check=True)
    rows = [json.loads(x) for x in (workdir / "runs" / "m" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]["total"]) for r in rows)
    assert any(k.startswith("kl_") for k in rows[-1]["loss"])


def test_cuda_matches_cpu_on_the_first_epoch(cli, workdir: Path) -> None:
    """Same seed, same data: the first epoch's loss agrees to float tolerance (sampling happens on the CPU)."""
    make_dataset(workdir)
    cli("train", "-b", "lightgcn", "--epochs", "1", "--device", "cpu", "-n", "c", check=True)
    cli("train", "-b", "lightgcn", "--epochs", "1", "--device", "cuda", "-n", "g", check=True)
    lc = json.loads((workdir / "runs" / "c" / "metrics.jsonl").read_text().splitlines()[0])["loss"]["total"]
    lg = json.loads((workdir / "runs" / "g" / "metrics.jsonl").read_text().splitlines()[0])["loss"]["total"]
    assert lc == pytest.approx(lg, rel=1e-3)


def test_resume_on_cuda_continues_the_run(cli, workdir: Path) -> None:
    make_dataset(workdir)
    cli("train", "-b", "lgmrec", "--mrdib", "--epochs", "2", "--device", "cuda", "-n", "r", check=True)
    cli("train", "-b", "lgmrec", "--mrdib", "--epochs", "4", "--device", "cuda", "-n", "r", "--resume",
        check=True)
    rows = (workdir / "runs" / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in rows] == [1, 2, 3, 4]
