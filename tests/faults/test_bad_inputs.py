"""Bad inputs: each gives a one-line error and a non-zero exit code, and writes nothing half-done."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mrdib_cli.errors import DataError
from tests.evaluation.helpers import write_dataset, write_run
from tests.faults.helpers import assert_intact, leftovers, mmrec_folder, mrdib, one_line_error, snapshot

N_USERS, N_ITEMS = 40, 30


@pytest.fixture
def run_wd(workdir: Path) -> Path:
    """A dataset and a trained-looking run folder (config.json + embeddings.npz) per the contracts."""
    write_dataset(workdir, "tiny", N_USERS, N_ITEMS)
    rng = np.random.default_rng(0)
    write_run(workdir, "r1", "tiny", rng.normal(size=(N_USERS, 8)), rng.normal(size=(N_ITEMS, 8)))
    return workdir


# ------------------------------------------------------------------------------------------- feature tables
def _raw_table(path: Path, vectors: np.ndarray, ids: np.ndarray | None = None) -> None:
    """A feature table written around the validating writer, as a foreign tool or a bit flip would."""
    n, d = vectors.shape
    ids = np.arange(n) if ids is None else ids
    t = pa.table({"item_idx": pa.array(ids.astype(np.int64)),
                  "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), d),
                  "status": pa.array(["ok"] * n)})
    t = t.replace_schema_metadata({b"mrdib": json.dumps({"modality": "image", "model": "x", "dim": d}).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(t, path)


BAD_TABLES = {
    "nan": (lambda v: np.where(np.arange(v.size).reshape(v.shape) == 7, np.nan, v), None, "NaN"),
    "inf": (lambda v: np.where(np.arange(v.size).reshape(v.shape) == 3, np.inf, v), None, "inf"),
    "too-few-rows": (lambda v: v[:-2], None, "rows"),
    "shuffled-ids": (lambda v: v, lambda n: np.roll(np.arange(n), 1), "item_idx"),
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_bad_feature_table_is_refused(run_wd: Path, case: str) -> None:
    from mrdib_cli.data.handle import DatasetHandle

    vec_fn, ids_fn, needle = BAD_TABLES[case]
    v = vec_fn(np.random.default_rng(1).normal(size=(N_ITEMS, 4)).astype(np.float32))
    ids = ids_fn(len(v)) if ids_fn else None
    _raw_table(run_wd / "datasets/tiny/features/image-x.parquet", v, ids)
    with pytest.raises(DataError) as e:
        DatasetHandle(run_wd / "datasets/tiny").features("image")
    assert needle.lower() in str(e.value).lower() and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------- MMRec import
@pytest.mark.parametrize("case,needle", [("nan", "NaN"), ("rows", "rows"), ("strings", "dtype")])
def test_import_bad_feature_npy(workdir: Path, tmp_path: Path, case: str, needle: str) -> None:
    feat = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    if case == "nan":
        feat[2, 1] = np.nan
    elif case == "rows":
        feat = feat[:3]
    else:
        feat = np.array([["a"] * 4] * 5)
    src = mmrec_folder(tmp_path / "toy", feat)
    one_line_error(mrdib(workdir, "import", "mmrec", str(src), "--name", "toy"), needle)
    assert not (workdir / "datasets" / "toy").exists() and leftovers(workdir) == []


# ------------------------------------------------------------------------------------------- corrupt files
@pytest.mark.parametrize("victim,command", [
    ("interactions.parquet", ["resplit", "--name", "probe"]),
    ("items.parquet", ["resplit", "--name", "probe"]),
    ("dataset.json", ["resplit", "--name", "probe"]),
    ("interactions.parquet", ["eval", "--run", "r1"]),
    ("items.parquet", ["recommend", "0", "--run", "r1"]),
])
def test_corrupt_dataset_file(run_wd: Path, victim: str, command: list[str]) -> None:
    p = run_wd / "datasets" / "tiny" / victim
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])  # truncated mid-file
    before = snapshot(run_wd / "runs" / "r1")
    one_line_error(mrdib(run_wd, *command), victim.split(".")[0])
    assert_intact(before, run_wd / "runs" / "r1")
    assert not (run_wd / "datasets" / "probe").exists()


def test_corrupt_embeddings(run_wd: Path) -> None:
    p = run_wd / "runs" / "r1" / "embeddings.npz"
    p.write_bytes(p.read_bytes()[:100])
    one_line_error(mrdib(run_wd, "eval", "--run", "r1"), "embeddings.npz")


def test_embeddings_of_another_dataset(run_wd: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(run_wd / "runs" / "r1" / "embeddings.npz", user=rng.normal(size=(N_USERS, 8)).astype(np.float32),
             item=rng.normal(size=(N_ITEMS + 7, 8)).astype(np.float32))
    one_line_error(mrdib(run_wd, "eval", "--run", "r1"), "items")


# ------------------------------------------------------------------------------------------- recommend
@pytest.mark.parametrize("user", ["NOSUCHUSER", "999", "-1"])
def test_recommend_unknown_user(run_wd: Path, user: str) -> None:
    one_line_error(mrdib(run_wd, "recommend", "--run", "r1", "--user", user), user.lstrip("-"), code=2)


def test_recommend_k_larger_than_catalogue(run_wd: Path) -> None:
    one_line_error(mrdib(run_wd, "recommend", "0", "--run", "r1", "--k", str(N_ITEMS + 1)), "--k")


def test_unknown_run_and_traversing_run_name(run_wd: Path) -> None:
    one_line_error(mrdib(run_wd, "eval", "--run", "nope"), "nope")
    one_line_error(mrdib(run_wd, "eval", "--run", "../../etc"), "invalid")


@pytest.mark.parametrize("case", ["nan", "too-few-rows"])
def test_train_refuses_bad_feature_table(run_wd: Path, case: str) -> None:
    vec_fn, _, needle = BAD_TABLES[case]
    _raw_table(run_wd / "datasets/tiny/features/image-x.parquet",
               vec_fn(np.random.default_rng(1).normal(size=(N_ITEMS, 4)).astype(np.float32)))
    p = mrdib(run_wd, "train", "-b", "vbpr", "--epochs", "1", "--run-name", "bad", "-d", "tiny")
    one_line_error(p, needle)
    assert not (run_wd / "runs" / "bad" / "checkpoints" / "last.pt").exists()
