"""Linear probes of planted attributes (mrdib_cli/mrdib/probes.py) and their place in `mrdib diagnose`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mrdib_cli.data.demo_truth import ITEM_ATTRS
from mrdib_cli.mrdib.probes import attribute_probes, probe_accuracy
from tests.forked import mrdib_forked


def _labels(n: int, k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, n)


def test_a_probe_reads_an_encoded_attribute_and_not_an_absent_one() -> None:
    y = _labels(600, 5)
    rng = np.random.default_rng(1)
    enc = torch.tensor(np.hstack([np.eye(5)[y], rng.standard_normal((600, 11))]) + 0.3 * rng.standard_normal((600, 16)),
                       dtype=torch.float32)
    noise = torch.tensor(rng.standard_normal((600, 16)), dtype=torch.float32)
    assert probe_accuracy(enc, y, 5) > 0.95
    assert probe_accuracy(noise, y, 5) < 0.2 + 0.1  # chance is 0.2
    # scale carries no information: the features are standardised first
    assert probe_accuracy(enc * 1e3, y, 5) == probe_accuracy(enc, y, 5)


def test_noise_decides_what_a_sample_carries() -> None:
    """The reason an MRdIB run is probed on a sample: a mean that moves by 1% of the noise still decodes
    perfectly, a sample of it does not."""
    y = _labels(800, 4, seed=2)
    mu = torch.tensor(np.eye(4)[y] * 0.01, dtype=torch.float32)
    sample = mu + torch.randn(mu.shape, generator=torch.Generator().manual_seed(0))
    assert probe_accuracy(mu, y, 4) > 0.95
    assert probe_accuracy(sample, y, 4) < 0.4


def test_attribute_probes_report_the_majority_rate_as_chance() -> None:
    y = np.array([0] * 70 + [1] * 30)
    x = torch.randn(100, 3, generator=torch.Generator().manual_seed(0))
    out = attribute_probes({"h": x}, {"a": y}, {"a": 3})
    assert out["a"]["chance"] == pytest.approx(0.7) and set(out["a"]) == {"chance", "h"}


# ------------------------------------------------------------------------------------------- diagnose on a demo
def _cli(workdir: Path, *args: str) -> tuple[int, str, str]:
    p = mrdib_forked(Path(workdir), *args)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory) -> Path:
    """A small demo whose features are built from the planted truth (image: colour, shape, texture; text:
    colour, material, size, noun, brand), a plain VBPR run and an MRdIB one."""
    from mrdib_cli.data.demo_truth import PlantedTruth
    from mrdib_cli.data.handle import DatasetHandle
    from mrdib_cli.data.prepare import PrepareOptions, prepare
    from mrdib_cli.data.feature_store import table_path, write_feature_table
    from mrdib_cli.workspace import Workspace

    wd = tmp_path_factory.mktemp("probe-demo") / "wd"
    ws = Workspace(wd)
    prepare(ws, "demo", PrepareOptions(), demo={"n_users": 300, "n_items": 200, "n_interactions": 4000})
    h = DatasetHandle.open(ws, "demo")
    truth = PlantedTruth.of(h)
    rng = np.random.default_rng(0)

    def block(attrs: tuple[str, ...]) -> np.ndarray:
        x = truth.attribute_matrix(attrs)
        return (x + 0.2 * rng.standard_normal(x.shape)).astype(np.float32)

    for m, attrs in (("image", ("colour", "shape", "texture")), ("text", ("colour", "material", "size", "noun",
                                                                         "brand"))):
        write_feature_table(table_path(h.dir, m, "planted"), block(attrs), ["ok"] * h.n_items,
                            {"modality": m, "model": "planted", "source": "test"})
    fast = ("--epochs", "3", "--batch-size", "256", "--threads", "1")
    for args in (("-n", "base"), ("-n", "ib", "--mrdib")):
        rc, _, err = _cli(wd, "train", "-b", "vbpr", *args, *fast)
        assert rc == 0, err
    return wd


def test_diagnose_on_a_demo_probes_each_representation(demo_runs: Path) -> None:
    rc, out, err = _cli(demo_runs, "diagnose", "ib", "--baseline", "base", "--mi-steps", "60")
    assert rc == 0, err
    rep = json.loads((demo_runs / "runs" / "ib" / "diagnose.json").read_text())
    run, base = rep["run"]["probes"], rep["baseline"]["probes"]
    assert run["representations"] == ["image mu", "text mu", "image sample", "text sample", "item scored"]
    assert base["representations"] == ["image h", "text h", "item scored"]
    assert [row["name"] for row in base["attributes"]] == list(ITEM_ATTRS)  # in the documented order
    a = {row["name"]: row for row in base["attributes"]}
    # what each modality's features hold is decodable from its hook input, and only from that modality
    for attr in ("shape", "texture"):
        assert a[attr]["image h"] > a[attr]["chance"] + 0.3 and a[attr]["text h"] < a[attr]["chance"] + 0.15
    for attr in ("material", "noun", "brand"):
        assert a[attr]["text h"] > a[attr]["chance"] + 0.3 and a[attr]["image h"] < a[attr]["chance"] + 0.15
    assert a["colour"]["image h"] > 0.9 and a["colour"]["text h"] > 0.9
    assert a["noun"]["shows"] == "text, noise"
    # VBPR's ranked item embedding holds a linear map of both modalities' features (beside the ID part)
    assert a["material"]["item scored"] > a["material"]["chance"] + 0.3
    assert a["shape"]["item scored"] > a["shape"]["chance"] + 0.3
    assert "Planted attributes" in out and "base txt" in out and "img z" in out and "base item" in out
    table = out[out.index("Planted attributes"):out.index("mu: bottleneck mean")]
    assert max(len(line) for line in table.splitlines()) <= 80  # 8 attributes x 8 representations


def test_diagnose_elsewhere_has_no_probes(tmp_path: Path) -> None:
    from tests.synth_data import make_dataset

    wd = tmp_path / "wd"
    make_dataset(wd, n_users=40, n_items=30)
    rc, _, err = _cli(wd, "train", "-b", "vbpr", "-n", "p", "--epochs", "2", "--batch-size", "64", "--threads", "1")
    assert rc == 0, err
    rc, out, err = _cli(wd, "diagnose", "p", "--mi-steps", "50")
    assert rc == 0, err
    assert "probes" not in json.loads((wd / "runs" / "p" / "diagnose.json").read_text())["run"]
    assert "Planted attributes" not in out


def test_a_demo_whose_truth_cannot_be_regenerated_is_diagnosed_without_probes_and_says_why(demo_runs: Path,
                                                                                         tmp_path: Path) -> None:
    import shutil

    wd = tmp_path / "wd"
    shutil.copytree(demo_runs, wd)
    card_path = wd / "datasets" / "demo" / "dataset.json"
    card = json.loads(card_path.read_text())
    card["demo"]["seed"] = 7  # as if the generator had changed since the dataset was prepared
    card_path.write_text(json.dumps(card))
    rc, out, err = _cli(wd, "diagnose", "ib", "--mi-steps", "50")
    assert rc == 0, err
    assert "probes skipped for ib" in err and "generator changed" in err
    rep = json.loads((wd / "runs" / "ib" / "diagnose.json").read_text())
    assert "generator changed" in rep["run"]["probes"]["skipped"] and "Planted attributes" not in out
