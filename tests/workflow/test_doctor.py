"""``mrdib doctor`` on constructed leaky runs: each trap is found, a clean run is not flagged."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import scipy.sparse as sp

from mrdib_cli.reporting.doctor import check_runs
from mrdib_cli.workspace import Workspace
from tests.evaluation.helpers import write_dataset, write_run


def _setup(workdir, runs=("r1",), ds="tiny"):
    write_dataset(workdir, ds)
    rng = np.random.default_rng(0)
    for r in runs:
        write_run(workdir, r, ds, rng.normal(size=(40, 4)), rng.normal(size=(30, 4)))
    return Workspace(workdir)


def _results(ws, run, mask="train", **extra):
    from mrdib_cli.data.handle import DatasetHandle
    from mrdib_cli.evaluation.engine import Protocol

    h = DatasetHandle(ws.dataset_dir("tiny"))
    proto = Protocol(split="test", mask=mask, dataset="tiny", dataset_digest=h.digest).to_dict()
    (ws.run_dir(run) / "results.json").write_text(json.dumps({"status": "finished", "protocol": proto, **extra}))


def _adj(ws, splits):
    """A stored sym-normalised adjacency built from the given splits (train only = the correct one)."""
    from mrdib_cli.data.handle import DatasetHandle
    from mrdib_cli.graphs.bipartite import norm_adj_symmetric

    h = DatasetHandle(ws.dataset_dir("tiny"))
    m = norm_adj_symmetric(h.csr(list(splits)))
    (h.dir / "graphs").mkdir(exist_ok=True)
    sp.save_npz(h.dir / "graphs" / "adj-sym.npz", sp.csr_matrix(m))


def codes(findings, severity=None):
    return {f.code for f in findings if severity is None or f.severity == severity}


def test_clean_run_has_only_the_informational_mask_note(workdir):
    ws = _setup(workdir)
    _results(ws, "r1", mask="train+valid")
    _adj(ws, ["train"])
    (ws.run_dir("r1") / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in (1, 2, 3)))
    assert check_runs(ws, ["r1"]) == []
    _results(ws, "r1", mask="train")
    f = check_runs(ws, ["r1"])
    assert codes(f) == {"valid-unmasked"} and f[0].severity == "info" and "MMRec" in f[0].explanation


def test_graph_built_with_test_edges_is_an_error(workdir):
    ws = _setup(workdir)
    _results(ws, "r1", mask="train+valid")
    _adj(ws, ["train", "test"])
    f = [x for x in check_runs(ws, ["r1"]) if x.code == "graph-leak"]
    assert len(f) == 1 and f[0].severity == "error"
    assert "80 of its 80 test interactions" in f[0].message  # write_dataset: two test items per user


def test_repeat_purchases_are_information_not_a_leak(workdir):
    """A test pair also in train (a published split's repeat purchase) is a train edge by right: reported as
    information with its count and Recall bound, never as a graph leak (the Scientific import has 19)."""
    ws = _setup(workdir)
    _results(ws, "r1", mask="train")
    d = ws.dataset_dir("tiny")
    inter = pl.read_parquet(d / "interactions.parquet")
    tests = (inter.filter(pl.col("split") == "test").unique("user_idx", keep="first", maintain_order=True)
             .head(3))  # three users, one repeated test item each
    inter.vstack(tests.with_columns(pl.lit("train").alias("split"))).write_parquet(d / "interactions.parquet")
    _adj(ws, ["train"])
    f = check_runs(ws, ["r1"])
    assert "graph-leak" not in codes(f) and not [x for x in f if x.severity == "error"]
    (rep,) = [x for x in f if x.code == "repeat-interactions"]
    assert rep.severity == "info" and "3 of the 80 test interactions" in rep.message
    # each affected user has 2 test items, one a repeat: at most 1/2 of their recall, over 40 test users
    assert f"at most {3 * 0.5 / 40:.4f} (3 users affected)" in rep.message
    assert "mrdib resplit" in rep.explanation
    # a real leak beside the repeats is still an error, counted without them
    _adj(ws, ["train", "test"])
    (leak,) = [x for x in check_runs(ws, ["r1"]) if x.code == "graph-leak"]
    assert leak.severity == "error" and "77 of its 77 test interactions" in leak.message


def test_random_weight_features_used_by_a_run_are_flagged(workdir):
    from mrdib_cli.data.feature_store import write_feature_table

    ws = _setup(workdir)
    table = ws.dataset_dir("tiny") / "features" / "image-vit-random.parquet"
    write_feature_table(table, np.zeros((30, 4), np.float32), ["ok"] * 30,
                        {"modality": "image", "model": "vit", "random_weights": True})
    conf_path = ws.run_dir("r1") / "config.json"
    conf = json.loads(conf_path.read_text())
    assert "random-features" not in codes(check_runs(ws, ["r1"]))  # present but not used by the run
    conf_path.write_text(json.dumps({**conf, "features": {"image": table.name}}))
    (f,) = [x for x in check_runs(ws, ["r1"]) if x.code == "random-features"]
    assert f.severity == "warning" and "RANDOM" in f.message and table.name in f.message


def test_stale_graph_manifest_is_flagged(workdir):
    ws = _setup(workdir)
    _adj(ws, ["train"])
    mdir = ws.dataset_dir("tiny") / "manifests"
    mdir.mkdir(exist_ok=True)
    (mdir / "graph-adj-sym.json").write_text(json.dumps({"step": "graph-adj-sym", "inputs": {
        "train_interactions": "sha256:old"}, "params": {}}))
    assert "stale-graph" in codes(check_runs(ws, ["r1"]), "warning")


def test_features_from_held_out_interactions_are_flagged(workdir):
    from mrdib_cli.data.feature_store import table_path, write_feature_table

    ws = _setup(workdir)
    d = ws.dataset_dir("tiny")
    write_feature_table(table_path(d, "text", "cf-svd"), np.ones((30, 4), np.float32), np.array(["ok"] * 30),
                        {"modality": "text", "model": "cf-svd", "interactions_used": ["train", "valid", "test"]})
    f = [x for x in check_runs(ws, ["r1"]) if x.code == "feature-leak"]
    assert len(f) == 1 and "valid/test" in f[0].message


def test_sweep_selected_on_test_is_an_error(workdir):
    ws = _setup(workdir, runs=("a", "b"))
    sdir = ws.root / "sweeps" / "s"
    sdir.mkdir(parents=True)
    (sdir / "summary.json").write_text(json.dumps({"selected_on": "test", "runs": ["a", "b"], "winner_runs": ["b"]}))
    f = [x for x in check_runs(ws, ["a", "b"]) if x.code == "test-selection"]
    assert {x.run for x in f} == {"a", "b"} and all(x.severity == "error" for x in f)
    assert "winner" in next(x for x in f if x.run == "b").message
    (sdir / "summary.json").write_text(json.dumps({"selected_on": "valid", "runs": ["a", "b"], "winner_runs": ["b"]}))
    assert "test-selection" not in codes(check_runs(ws, ["a", "b"]))


def test_runs_under_different_protocols(workdir):
    ws = _setup(workdir, runs=("a", "b"))
    _results(ws, "a", mask="train")
    _results(ws, "b", mask="train+valid")
    f = [x for x in check_runs(ws, ["a", "b"]) if x.code == "protocol-mismatch"]
    assert len(f) == 1 and f[0].run == "b" and "mask" in f[0].message


def test_resumed_run_without_restored_rng(workdir):
    import torch

    ws = _setup(workdir)
    rd = ws.run_dir("r1")
    # a restart that began again from epoch 2 with a fresh random state
    (rd / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in (1, 2, 3, 2, 3)))
    f = [x for x in check_runs(ws, ["r1"]) if x.code == "rng-not-restored"]
    assert len(f) == 1 and f[0].severity == "error"
    # an interrupted run (no results.json) whose checkpoint cannot restore the RNG
    (rd / "results.json").unlink()
    (rd / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in (1, 2)))
    (rd / "checkpoints").mkdir(exist_ok=True)
    torch.save({"epoch": 2, "model": {}}, rd / "checkpoints" / "last.pt")
    f = [x for x in check_runs(ws, ["r1"]) if x.code == "rng-not-restored"]
    assert len(f) == 1 and f[0].severity == "warning"
    torch.save({"epoch": 2, "model": {}, "rng": {}, "sampler": {}}, rd / "checkpoints" / "last.pt")
    assert "rng-not-restored" not in codes(check_runs(ws, ["r1"]))


def test_warnings_the_trainer_gave_are_findings(workdir):
    ws = _setup(workdir, runs=("a", "b"))
    msg = "MRdIB image bottleneck (169,724 nats per item pass): 23% of its log-variances lie outside the clamp"
    _results(ws, "a", warnings=[{"epoch": 17, "kind": "clamped_image", "message": msg}])
    _results(ws, "b")
    f = [x for x in check_runs(ws, ["a", "b"]) if x.code == "training-warning"]
    assert len(f) == 1 and f[0].run == "a" and f[0].severity == "warning"
    assert f[0].message == f"epoch 17: {msg}" and "health" in f[0].explanation


def test_cli_doctor_exit_code_and_json(cli, workdir):
    ws = _setup(workdir)
    _results(ws, "r1")
    _adj(ws, ["train", "valid"])
    rc, out, err = cli("doctor", "r1", "--json")
    assert rc == 1
    d = json.loads(out)
    assert {f["code"] for f in d["findings"]} == {"graph-leak", "valid-unmasked"}


def test_damaged_run_files_are_findings_and_do_not_hide_other_runs(cli, workdir):
    """A torn config.json, results.json, checkpoint or embeddings.npz is an error finding naming the file, found
    by doctor rather than when a later step needs it; the other runs are still checked and listed."""
    ws = _setup(workdir, runs=("r1", "r2"))
    (ws.run_dir("r1") / "config.json").write_text('{"backbone": "lightgcn",')
    (ws.run_dir("r2") / "checkpoints").mkdir()
    (ws.run_dir("r2") / "checkpoints" / "best.pt").write_bytes(b"PK\x03\x04 torn")
    emb = ws.run_dir("r2") / "embeddings.npz"
    emb.write_bytes(emb.read_bytes()[:100])
    found = {(f.run, f.code, f.message.split(" ")[0]) for f in check_runs(ws, ["r1", "r2"]) if f.severity == "error"}
    assert found == {("r1", "damaged-file", "config.json"), ("r2", "unreadable-checkpoint", "checkpoints/best.pt"),
                     ("r2", "damaged-file", "embeddings.npz")}
    rc, out, err = cli("runs")
    assert rc == 0 and "r1" in out and "damaged" in out and "r2" in out and "finished" in out, err
    assert "config.json is damaged (not valid JSON" in err and "Traceback" not in err
    for shape in ("[1, 2]", "{}", '{"dataset": 5}'):  # JSON, but not a run configuration
        (ws.run_dir("r1") / "config.json").write_text(shape)
        rc, out, err = cli("runs")
        assert rc == 0 and "damaged" in out and "r2" in out and "not a run configuration" in err, (shape, err)
        assert ("r1", "damaged-file") in {(f.run, f.code) for f in check_runs(ws, ["r1"])}
    from mrdib_cli.reporting.report import build_report

    write_run(workdir, "r3", "tiny", np.ones((40, 4)), np.ones((30, 4)))
    rep = build_report(ws, ["r1", "r3"], workdir / "rep")
    assert [s.split(":")[0] for s in rep.skipped] == ["r1"]  # left out; r3 reported
    (workdir / "runs" / "half").mkdir()  # a folder without config.json: named, not silently left out
    rc, _, err = cli("runs")
    assert rc == 0 and "half has no config.json, so it is not listed" in err
