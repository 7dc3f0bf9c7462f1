"""A user's own data end to end: CSV interactions -> catalogue -> MiniLM text + image features -> train -> eval.

Also the coverage reasons ``extract-features`` refers to: printed per reason with example items, stored in
the manifest, and named in the error when no item has any text.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from tests.features.fixtures import run_cli  # noqa: F401 - pytest fixture
from tests.features.helpers import TINY_ARGS, good_image, png_bytes


def _files(tmp_path: Path, n_users: int = 40, n_items: int = 24) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    rows = [(f"cust{u}", f"prod{i}", int(1_700_000_000 + rng.integers(0, 10**6)))
            for u in range(n_users) for i in rng.choice(n_items, 7, replace=False)]
    log = tmp_path / "orders.csv"
    pl.DataFrame({"customer": [r[0] for r in rows], "product": [r[1] for r in rows],
                  "ts": [r[2] for r in rows]}).write_csv(log)
    (tmp_path / "img").mkdir()
    cat = tmp_path / "catalogue.jsonl"
    with open(cat, "w") as fh:
        for i in range(n_items):
            (tmp_path / "img" / f"p{i}.png").write_bytes(png_bytes(good_image(i)))
            rec = {"item": f"prod{i}", "image_path": f"img/p{i}.png",
                   "title": None if i == 3 else f"{'red' if i % 2 else 'blue'} cotton shirt {i}",
                   "features": ["breathable", "slim fit"]}
            fh.write(json.dumps(rec) + "\n")
    return log, cat


def test_table_catalogue_features_train_eval(tmp_path: Path, workdir: Path, run_cli) -> None:
    log, cat = _files(tmp_path)
    steps = [
        ("import", "table", str(log), "--name", "shop", "--user", "customer", "--item", "product", "--time", "ts",
         "--k-core", "3"),
        ("items", "attach", str(cat), "--description", "features"),
        ("extract-features", "--modality", "text", "--device", "cpu"),
        ("extract-features", "--modality", "image", *TINY_ARGS, "--device", "cpu", "--workers", "0"),
        ("train", "--backbone", "lgmrec", "--epochs", "1", "--batch-size", "256", "--device", "cpu", "--threads",
         "1", "--run-name", "r1"),
        ("eval", "--run", "r1", "--k", "20", "--json", str(tmp_path / "ev.json")),
    ]
    errs = []
    for args in steps:
        rc, out, err = run_cli(*args)
        assert rc == 0, f"{args}: {err}"
        errs.append(err)
    # the text step: one item has only its features bullet list, none is empty; the image step read the paths
    ds = workdir / "datasets" / "shop"
    man = json.loads((ds / "manifests" / "features-text-all-minilm-l6-v2.json").read_text())
    assert man["extra"]["coverage"]["ok"] == 24
    img = json.loads(next((ds / "manifests").glob("features-image-*.json")).read_text())
    assert img["extra"]["coverage"]["ok"] == 24 and img["params"]["image_source"] == "url"
    res = json.loads((tmp_path / "ev.json").read_text())
    assert 0.0 <= res["metrics"]["recall@20"] <= 1.0
    assert (workdir / "runs" / "r1" / "results.json").exists()


def test_coverage_reasons_printed_stored_and_named_in_the_error(tmp_path: Path, workdir: Path, run_cli) -> None:
    log, _ = _files(tmp_path, n_users=12, n_items=8)
    rc, _, err = run_cli("import", "table", str(log), "--name", "bare", "--user", "customer", "--item", "product")
    assert rc == 0, err
    rc, _, err = run_cli("extract-features", "--modality", "text", "--device", "cpu")
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 1 and "Traceback" not in err
    assert "no item has a usable text input" in lines[-1]
    assert "8 items: no title/brand/categories/description" in lines[-1]
    assert "prod" in lines[-1] and "mrdib items attach" in lines[-1]  # example items and the fix
    part = tmp_path / "part.csv"
    pl.DataFrame({"item": ["prod0", "prod1", "prod2", "prod4", "prod5"], "title": ["a", "b", "c", "d", "e"]}
                 ).write_csv(part)
    assert run_cli("items", "attach", str(part))[0] == 0
    rc, _, err = run_cli("extract-features", "--modality", "text", "--device", "cpu")
    assert rc == 0, err
    assert "text: 3 items: no title/brand/categories/description (e.g. " in err
    shown = err.split("(e.g. ")[1].split(")")[0].split(", ")
    assert sorted(shown) == ["prod3", "prod6", "prod7"]
    man = json.loads((workdir / "datasets" / "bare" / "manifests" / "features-text-all-minilm-l6-v2.json").read_text())
    cov = man["extra"]["coverage"]
    assert cov["reasons"] == {"no title/brand/categories/description": 3}
    assert sorted(cov["reason_examples"]["no title/brand/categories/description"]) == ["prod3", "prod6", "prod7"]
