"""Faults whose danger is a result that is silently wrong: each case ends in a correct result or one clear error.

1. concurrent imports and their lock; 2. resume and the best epoch's files; 3. resume with changed features;
4. corrupt Parquet; 5. torn or K-mismatched eval results; 6. replacing a dataset killed between renames;
7. ``train --force`` killed while deleting; 8 (``test_error_contract.py``): the error contract.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
import pytest

from tests.faults.helpers import (IMAGE_ARGS, TRAIN, assert_intact, at_rename, killed, leftovers, mmrec_folder, mrdib,
                                  ok, one_line_error, outcome, snapshot, start_forked)

FORCE_FALLBACK = {"target": "mrdib_cli.data.dataset_io._exchange", "action": "raise:builtins.OSError"}


def _wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _import(src: Path, name: str = "d") -> list[str]:
    return ["import", "mmrec", str(src), "--name", name]


# ------------------------------------------------------------------------------------------- 1. locks
def test_concurrent_imports_share_one_lock(workdir: Path, tmp_path: Path) -> None:
    """A parks after swapping its folder in; B must wait, not lock a fresh file inside the new folder."""
    a_src, b_src = mmrec_folder(tmp_path / "a", n_users=6), mmrec_folder(tmp_path / "b", n_users=8)
    marker = tmp_path / "a-inside"
    a = start_forked(workdir, *_import(a_src), MRDIB_TEST_FAULT_MARKER=str(marker),
                     fault={"target": "mrdib_cli.workspace.atomic_write_json", "match": "import.json",
                            "action": "sleep:5"})
    _wait_for(marker)
    b = start_forked(workdir, *_import(b_src))
    ok(a.wait())
    ok(b.wait())
    ds = workdir / "datasets" / "d"
    card = json.loads((ds / "dataset.json").read_text())
    man = json.loads((ds / "manifests" / "import.json").read_text())
    assert card["n_users"] == 8, "B ran last, so its data is the dataset"
    assert card["source"]["digests"] == man["inputs"], "the manifest describes another import than the card"
    again = ok(mrdib(workdir, *_import(b_src)))
    assert "cached" in again.stderr.lower()


def test_lock_message_does_not_advise_deleting_a_live_lock(demo_wd: Path, tmp_path: Path) -> None:
    marker = tmp_path / "a-inside"
    a = start_forked(demo_wd, *TRAIN, MRDIB_TEST_FAULT_MARKER=str(marker),
                     fault={"target": "mrdib_cli.training.sampler.BPRSampler.epoch", "action": "sleep:8"})
    _wait_for(marker)
    msg = one_line_error(mrdib(demo_wd, *TRAIN, "--force"), "being written", code=1)
    assert "remove" not in msg.lower() and "delete" not in msg.lower(), msg
    ok(a.wait())


# ------------------------------------------------------------------------------------------- 2. best epoch
def test_resume_never_uses_embeddings_of_another_epoch(demo_wd: Path, tmp_path: Path, reference_demo) -> None:
    """Killed while writing last.pt of epoch 4 (epoch 4 improved, so its embeddings are already written);
    resumed with --epochs 3, the run must equal an uninterrupted 3-epoch run, embeddings included."""
    import shutil

    ref_wd = tmp_path / "ref3"
    shutil.copytree(reference_demo[0], ref_wd)
    ok(mrdib(ref_wd, *TRAIN, "--epochs", "3"))
    killed(mrdib(demo_wd, *TRAIN, fault={"target": "torch.save", "match": "last.pt", "nth": 4, "action": "kill"}))
    ok(mrdib(demo_wd, *TRAIN, "--resume", "--epochs", "3"))
    run = demo_wd / "runs" / "r"
    assert outcome(run) == outcome(ref_wd / "runs" / "r")
    import torch

    assert torch.load(run / "checkpoints" / "best.pt", weights_only=True)["epoch"] == outcome(run)["best_epoch"]
    ok(mrdib(demo_wd, "eval", "--run", "r"))


# ------------------------------------------------------------------------------------------- 3. inputs
def test_resume_with_changed_feature_table_is_refused(demo_wd: Path) -> None:
    ok(mrdib(demo_wd, *IMAGE_ARGS))
    vbpr = ["train", "-b", "vbpr", "--epochs", "3", "--threads", "1", "--run-name", "v"]
    killed(mrdib(demo_wd, *vbpr, fault={"target": "mrdib_cli.training.checkpoint.save", "match": "last.pt",
                                        "nth": 2, "when": "after", "action": "kill"}))
    ok(mrdib(demo_wd, *IMAGE_ARGS, "--seed", "5", "--force"))  # same file name, other vectors
    before = snapshot(demo_wd / "runs" / "v")
    one_line_error(mrdib(demo_wd, *vbpr, "--resume"), "feature", "--force", code=2)
    assert_intact(before, demo_wd / "runs" / "v")
    ok(mrdib(demo_wd, *vbpr, "--force"))


# ------------------------------------------------------------------------------------------- 4. corrupt Parquet
def _silent_flip(path: Path) -> bytes:
    """The bytes of ``path`` with one bit flipped where polars still reads the file, as other data."""
    raw = path.read_bytes()
    good = pl.read_parquet(path)
    for off in range(len(raw) // 3, len(raw) - 16):
        bad = bytearray(raw)
        bad[off] ^= 0x10
        path.write_bytes(bytes(bad))
        try:
            if not pl.read_parquet(path).equals(good):
                return bytes(bad)
        except Exception:  # noqa: BLE001 - this offset breaks the file loudly; look for a silent one
            pass
    raise AssertionError("no silent bit flip found")


@pytest.mark.parametrize("command", [TRAIN, ["resplit", "--scheme", "loo", "--name", "probe"], ["build-graph"]])
def test_bit_flip_in_interactions_is_refused(demo_wd: Path, command: list[str]) -> None:
    _silent_flip(demo_wd / "datasets" / "demo" / "interactions.parquet")
    one_line_error(mrdib(demo_wd, *command), "interactions.parquet", "prepare", code=1)
    assert not (demo_wd / "datasets" / "probe").exists()


def test_arrow_panic_is_one_line(demo_wd: Path) -> None:
    p = mrdib(demo_wd, *TRAIN, fault={"target": "polars.read_parquet",
                                      "action": "raise:polars.exceptions.PanicException"})
    one_line_error(p, "interactions.parquet", code=1)


# ------------------------------------------------------------------------------------------- 5. result sets
def test_eval_with_other_k_never_touches_training_time_results(demo_wd: Path) -> None:
    ok(mrdib(demo_wd, *TRAIN))
    ok(mrdib(demo_wd, *TRAIN[:-1], "r2", "--seed", "2"))
    run = demo_wd / "runs" / "r"
    before = snapshot(run)
    killed(mrdib(demo_wd, "eval", "--run", "r", "--k", "5", "30", fault=at_rename(2, match="runs")))
    assert_intact(before, run)
    ok(mrdib(demo_wd, "eval", "--run", "r", "--k", "5", "30"))
    assert_intact(before, run)
    saved = json.loads((run / "eval-test.k-5-30.json").read_text())
    assert saved["protocol"]["ks"] == [5, 30]
    ok(mrdib(demo_wd, "compare", "r", "r2"))


def test_torn_result_set_is_never_read_as_one(demo_wd: Path) -> None:
    """Killed between the renames of the final test evaluation of a resumed run: per_user-test.parquet is
    the new epoch's, eval-test.json the old one's. compare must not pair them."""
    ok(mrdib(demo_wd, *TRAIN, "--epochs", "2"))
    ok(mrdib(demo_wd, *TRAIN[:-1], "r2", "--seed", "2"))
    killed(mrdib(demo_wd, *TRAIN, "--resume", fault=at_rename(1, match="topk-test")))
    one_line_error(mrdib(demo_wd, "compare", "r", "r2"), "--resume")
    ok(mrdib(demo_wd, *TRAIN, "--resume"))
    ok(mrdib(demo_wd, "compare", "r", "r2"))
    run = demo_wd / "runs" / "r"
    saved = json.loads((run / "eval-test.json").read_text())
    assert saved["metrics"] == json.loads((run / "results.json").read_text())["test"]


# ------------------------------------------------------------------------------------------- 6. replacing publish
@pytest.mark.parametrize("swap", ["exchange", "two-renames"])
def test_replacing_import_never_leaves_the_name_empty(workdir: Path, tmp_path: Path, swap: str) -> None:
    """Kill the replacing import at each of its renames in the datasets folder; whatever survives, the name
    holds a whole dataset (old or new), and ``cache gc`` never deletes the only copy."""
    a_src, b_src = mmrec_folder(tmp_path / "a", n_users=6), mmrec_folder(tmp_path / "b", n_users=8)
    extra = [FORCE_FALLBACK] if swap == "two-renames" else []
    for n in (1, 2, 3, 4):
        wd = tmp_path / f"wd{n}"
        ok(mrdib(wd, *_import(a_src)))
        p = mrdib(wd, *_import(b_src), fault=[at_rename(n, match="datasets"), *extra])
        assert p.returncode in (0, -9), p.stderr
        ok(mrdib(wd, "cache", "gc", "--min-age", "0"))
        card = wd / "datasets" / "d" / "dataset.json"
        assert card.exists(), f"kill at rename {n}: dataset 'd' is gone"
        assert json.loads(card.read_text())["n_users"] in (6, 8)
        ok(mrdib(wd, *_import(b_src)))
        assert json.loads(card.read_text())["n_users"] == 8
        assert leftovers(wd) == []


# ------------------------------------------------------------------------------------------- 7. --force
def test_force_killed_while_deleting_never_resumes_a_gutted_run(demo_wd: Path, reference_run: dict) -> None:
    ok(mrdib(demo_wd, *TRAIN))
    killed(mrdib(demo_wd, *TRAIN, "--force", fault={"target": "os.unlink", "match": "metrics.jsonl",
                                                      "when": "after", "action": "kill"}))
    p = mrdib(demo_wd, *TRAIN, "--resume")
    if p.returncode != 0:  # nothing left to resume: a clear refusal, and --force starts over
        one_line_error(p, "run 'r'", code=3)
        ok(mrdib(demo_wd, *TRAIN, "--force"))
    assert outcome(demo_wd / "runs" / "r") == reference_run
