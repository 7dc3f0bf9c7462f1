"""``mrdib eval|compare|recommend`` end to end on run folders written with the run-folder contract."""

from __future__ import annotations

import json
import os

import numpy as np
import polars as pl
import pytest

from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.errors import LockedError

from .helpers import write_dataset, write_run


def _oracle(handle: DatasetHandle, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings that rank each user's test items first (one-hot items, users point at their tests)."""
    rng = np.random.default_rng(seed)
    item = np.eye(handle.n_items, dtype=np.float32)
    user = rng.normal(0, 0.01, (handle.n_users, handle.n_items)).astype(np.float32)
    user += 10 * handle.csr("test").toarray()
    return user, item


@pytest.fixture
def runs(workdir):
    d = write_dataset(workdir, n_users=40, n_items=30)
    h = DatasetHandle(d)
    rng = np.random.default_rng(5)
    for s in (1, 2, 3):  # one configuration, three seeds
        write_run(workdir, f"rand-s{s}", "tiny", rng.standard_normal((40, 30)), rng.standard_normal((30, 30)),
                  seed=s, backbone="lightgcn")
    write_run(workdir, "oracle", "tiny", *_oracle(h), seed=1, backbone="oracle")
    return workdir


def test_eval_latest_run_table_json_and_saved_files(cli, runs) -> None:
    rc, out, err = cli("eval", "--k", "5", "10", "--json", str(runs / "m.json"))
    assert rc == 0, err
    assert "Protocol:" in out and "mask=train" in out and "split=test" in out and "oracle" in out
    assert "recall" in out and "@10" in out
    payload = json.loads((runs / "m.json").read_text())
    assert set(payload) >= {"protocol", "split", "n_users", "metrics"}
    assert payload["split"] == "test" and payload["n_users"] == 40
    assert payload["metrics"]["recall@10"] == pytest.approx(1.0)  # the oracle ranks all test items first
    assert payload["protocol"]["mask"] == "train" and payload["protocol"]["index"] == "flat"
    # other cut-offs than the default (10, 20) are saved under their own tag, beside the trainer's files
    pu = pl.read_parquet(runs / "runs" / "oracle" / "per_user-test.k-5-10.parquet")
    assert pu.height == 40 and pu["ndcg@5"].min() == pytest.approx(1.0)
    assert not (runs / "runs" / "oracle" / "per_user-test.parquet").exists()
    tk = pl.read_parquet(runs / "runs" / "oracle" / "topk-test.k-5-10.parquet")
    assert tk.height == 40 and tk["items"].dtype.size == 10


def test_eval_options_and_errors(cli, runs) -> None:
    rc, out, _ = cli("eval", "--run", "rand-s1", "--split", "valid", "--k", "3,6", "--json", "-")
    assert rc == 0
    payload = json.loads(out)
    assert payload["split"] == "valid" and "map@6" in payload["metrics"]
    rc, out, _ = cli("eval", "--run", "rand-s1", "--mask", "train+valid", "--json", "-")
    assert rc == 0 and json.loads(out)["protocol"]["mask"] == "train+valid"
    assert (runs / "runs" / "rand-s1" / "eval-test.mask-train+valid.json").exists()
    for args, code, msg in [(("--run", "nope"), 3, "not found"),
                            (("--k", "31"), 2, "larger than the catalogue"),
                            (("--split", "valid", "--mask", "train+valid"), 2, "would hide"),
                            (("--mask", "everything"), 2, "unknown mask"),
                            (("--verify-exact", "0.5"), 2, "approximate index")]:
        rc, out, err = cli("eval", *args)
        assert rc == code, (args, err)
        assert msg in err and "Traceback" not in err and sum(ln.startswith("error:") for ln in err.splitlines()) == 1


def test_eval_refuses_changed_dataset(cli, runs) -> None:
    inter = runs / "datasets" / "tiny" / "interactions.parquet"
    df = pl.read_parquet(inter)
    df.with_columns(pl.when(pl.arange(0, df.height) == 0).then(pl.lit("test")).otherwise(pl.col("split"))
                    .alias("split")).write_parquet(inter)
    rc, _, err = cli("eval", "--run", "oracle")
    assert rc == 1 and "changed since training" in err


def test_eval_ann_with_verification(cli, runs) -> None:
    rc, out, err = cli("eval", "--run", "rand-s2", "--index", "hnsw", "--verify-exact", "0.5", "--k", "5",
                       "--json", str(runs / "a.json"))
    assert rc == 0, err
    assert "vs exact search" in out and "drift" in out
    chk = json.loads((runs / "a.json").read_text())["ann_check"]
    assert chk["n_users"] == 20 and 0 <= chk["ann_recall"]["recall@5"] <= 1


def test_compare_seeds_and_significance(cli, runs) -> None:
    rc, out, err = cli("compare", "rand-s1", "rand-s2", "rand-s3", "oracle", "--json", str(runs / "c.json"))
    assert rc == 0, err
    c = json.loads((runs / "c.json").read_text())
    g0, g1 = c["groups"]
    assert g0["runs"] == ["rand-s1", "rand-s2", "rand-s3"] and g1["runs"] == ["oracle"]
    singles = []
    for r in ("rand-s1", "rand-s2", "rand-s3"):
        singles.append(json.loads((runs / "runs" / r / "eval-test.json").read_text())["metrics"]["recall@20"])
    assert g0["metrics"]["recall@20"]["mean"] == pytest.approx(np.mean(singles))
    assert g0["metrics"]["recall@20"]["std"] == pytest.approx(np.std(singles, ddof=1))
    assert g1["metrics"]["recall@10"]["mean"] == pytest.approx(1.0)
    assert g1["metrics"]["recall@10"]["rel_change"] > 0
    tests = {t["metric"]: t for t in c["tests"]}
    assert tests["recall@10"]["p_ttest"] < 1e-6 and tests["recall@10"]["p_wilcoxon"] < 1e-6
    assert tests["recall@10"]["n_users"] == 40
    assert "±" in out and "Wilcoxon" in out


def test_compare_groups_seeds_trained_on_other_threads_devices_or_commits(cli, runs) -> None:
    """Where and with which code a run was trained is provenance, not part of its setting."""
    for i, r in enumerate(("rand-s1", "rand-s2", "rand-s3")):
        path = runs / "runs" / r / "config.json"
        conf = json.loads(path.read_text())
        conf["runtime"] = {"device": "cpu", "threads": 1 + i, "deterministic": True}
        conf["code"] = {"mrdib": "0.1.0", "git_commit": f"{i:040d}", "git_dirty": bool(i)}
        path.write_text(json.dumps(conf))
    rc, _, err = cli("compare", "rand-s1", "rand-s2", "rand-s3", "oracle", "--json", str(runs / "c.json"))
    assert rc == 0, err
    assert json.loads((runs / "c.json").read_text())["groups"][0]["runs"] == ["rand-s1", "rand-s2", "rand-s3"]


def test_compare_keeps_long_run_names_whole_on_a_narrow_terminal(cli, runs) -> None:
    """Names that differ only at the end (…-s999 vs …-mrdib-s999) must not be cut to the same prefix."""
    rng = np.random.default_rng(1)
    long = ("quickstart-demo-lgmrec-s999", "quickstart-demo-lgmrec-mrdib-s999")
    for name in long:
        write_run(runs, name, "tiny", rng.standard_normal((40, 30)), rng.standard_normal((30, 30)), seed=999,
                  backbone=name.split("-")[-2])
    rc, out, err = cli("compare", *long, env={"COLUMNS": "80"})
    assert rc == 0, err
    table_lines = [ln for ln in out.splitlines() if ln[:1] in "┏┃┡│├└"]
    assert "…" not in out and table_lines and max(len(ln) for ln in table_lines) <= 80
    first_col = "".join(ln.split("│")[1].strip() for ln in table_lines if ln.startswith("│"))
    assert all(name in first_col for name in long)


def test_compare_refuses_protocol_mismatch_unless_forced(cli, runs) -> None:
    assert cli("eval", "--run", "oracle", "--mask", "train+valid")[0] == 0
    assert cli("eval", "--run", "rand-s1")[0] == 0
    # a second dataset: same shapes, different interactions
    write_dataset(runs, name="other", n_users=40, n_items=30, seed=9, activate=False)
    u, i = np.random.default_rng(0).standard_normal((40, 4)), np.random.default_rng(1).standard_normal((30, 4))
    write_run(runs, "elsewhere", "other", u, i)
    rc, _, err = cli("compare", "rand-s1", "elsewhere")
    assert rc == 4 and "different protocols" in err and "dataset_digest" in err
    assert "--force" in err and sum(ln.startswith("error:") for ln in err.splitlines()) == 1
    assert "Traceback" not in err
    rc, out, err = cli("compare", "rand-s1", "elsewhere", "--force")
    assert rc == 0 and "compared anyway" in err


def test_recommend(cli, runs) -> None:
    rc, out, err = cli("recommend", "--run", "oracle", "--user", "A0003X", "7", "--k", "2")
    assert rc == 0, err
    assert "user 3 (A0003X)" in out and "user 7 (A0007X)" in out and "Item number" in out
    h = DatasetHandle(runs / "datasets" / "tiny")
    test3 = set(h.csr("test")[3].indices.tolist())
    rc, _, err = cli("recommend", "--run", "oracle", "--out", str(runs / "all.parquet"), "--k", "2")
    assert rc == 0, err
    df = pl.read_parquet(runs / "all.parquet")
    assert df.height == 80 and df["held_out"].all()  # the oracle recommends exactly the test items
    assert set(df.filter(pl.col("user_idx") == 3)["item_idx"].to_list()) == test3
    assert df.columns[:5] == ["user_idx", "reviewer_id", "rank", "item_idx", "asin"]
    rc, _, err = cli("recommend", "--run", "oracle", "--user", "ghost")
    assert rc == 2 and "unknown user 'ghost'" in err and sum(ln.startswith("error:") for ln in err.splitlines()) == 1
    rc, _, err = cli("recommend", "--run", "oracle", "--user", "3", "--k", "100")
    assert rc == 2 and "larger than the catalogue" in err and sum(ln.startswith("error:") for ln in err.splitlines()) == 1
    rc, _, err = cli("recommend", "--run", "oracle")
    assert rc == 2 and "--user" in err


def test_two_settings_of_one_backbone_are_told_apart_in_compare(cli, runs) -> None:
    """Two LightGCN settings must not share the label 'lightgcn' (the report's legend used it)."""
    h = DatasetHandle(runs / "datasets" / "tiny")
    rng = np.random.default_rng(7)
    write_run(runs, "deep", "tiny", rng.standard_normal((40, 30)), rng.standard_normal((30, 30)), seed=1,
              backbone="lightgcn", hparams={"embedding_dim": 30, "n_layers": 3})
    assert h.n_items == 30
    rc, out, err = cli("compare", "rand-s1", "rand-s2", "deep", "--json", "-")
    assert rc == 0, err
    systems = [g["system"] for g in json.loads(out)["groups"]]
    assert systems == ["lightgcn (n_layers=unset)", "lightgcn (n_layers=3)"]


def test_compare_refuses_repeats_pooled_as_seeds_unless_forced(cli, runs) -> None:
    """Two runs of one setting with the same seed are one run twice: pooled, they showed "2 seeds" and a std of
    0. Refused; with --force compared, with a warning."""
    rng = np.random.default_rng(2)
    write_run(runs, "again-s1", "tiny", rng.standard_normal((40, 30)), rng.standard_normal((30, 30)), seed=1)
    rc, _, err = cli("compare", "rand-s1", "rand-s2", "again-s1")
    assert rc == 2 and "runs 'rand-s1' and 'again-s1' have the same configuration and the same seed (1)" in err
    rc, _, err = cli("compare", "rand-s1", "rand-s2", "again-s1", "--force", "--json", str(runs / "c.json"))
    assert rc == 0 and "pooled as two seeds because of --force" in err, err
    assert json.loads((runs / "c.json").read_text())["repeated_seeds"]


def test_a_saved_evaluation_of_other_embeddings_is_not_reused(cli, runs) -> None:
    """A saved evaluation names the embeddings it scored: once a resume (or anything) rewrites embeddings.npz,
    compare evaluates the run again instead of reporting the old epoch's figures."""
    assert cli("eval", "--run", "rand-s1", "--mask", "train+valid")[0] == 0
    rc, _, err = cli("compare", "rand-s1", "rand-s2", "--mask", "train+valid")
    assert rc == 0 and "'rand-s1' has no saved" not in err and "'rand-s1' has a saved" not in err, err
    rng = np.random.default_rng(9)  # a better epoch's embeddings, as a resume writes them
    np.savez(runs / "runs" / "rand-s1" / "embeddings.npz", user=rng.standard_normal((40, 30)).astype(np.float32),
             item=rng.standard_normal((30, 30)).astype(np.float32))
    rc, _, err = cli("compare", "rand-s1", "rand-s2", "--mask", "train+valid", "--json", str(runs / "c.json"))
    assert rc == 0 and "run 'rand-s1' has a saved test.mask-train+valid evaluation of other embeddings" in err, err
    from mrdib_cli.evaluation.runs import Run
    from mrdib_cli.workspace import Workspace

    fresh = Run.open(Workspace(runs), "rand-s1")
    assert fresh.saved_result("test.mask-train+valid")[0] is not None  # evaluated again, and saved


def test_runs_being_written_or_killed_are_not_read_as_finished(cli, runs) -> None:
    """A run a process is writing (a trainer: its best epoch changes as it goes) is refused by the commands that
    read runs, left out of a report, and listed as running; a run killed before results.json is refused by
    compare (its best epoch so far beside finished runs) unless --force, left out of report, warned in eval."""
    from mrdib_cli.evaluation.runs import Run
    from mrdib_cli.workspace import Workspace, file_lock

    ws = Workspace(runs)
    with file_lock(ws.lock("run", "rand-s2"), wait=False, what="run 'rand-s2'"):  # as a trainer holds it
        assert ws.run_status("rand-s2") == "running" and ws.run_writer("rand-s2") == f"pid {os.getpid()}"
        with pytest.raises(LockedError, match="run 'rand-s2' is being written by pid"):
            Run.open(ws, "rand-s2")
        from mrdib_cli.reporting.report import build_report

        rep = build_report(ws, ["rand-s1", "rand-s2"], runs / "rep")
        assert any(s.startswith("rand-s2: run 'rand-s2' is being written") for s in rep.skipped)
    assert ws.run_writer("rand-s2") is None and ws.run_status("rand-s2") == "finished"
    killed = runs / "runs" / "rand-s3"
    (killed / "results.json").unlink()
    (killed / "checkpoints").mkdir()
    (killed / "checkpoints" / "last.pt").write_bytes(b"a checkpoint")
    rc, _, err = cli("compare", "rand-s1", "rand-s3")
    assert rc == 2 and "run 'rand-s3' did not finish" in err and "--resume --run-name rand-s3" in err, err
    rc, _, err = cli("compare", "rand-s1", "rand-s3", "--force")
    assert rc == 0 and "compared anyway because of --force" in err, err
    rc, _, err = cli("eval", "--run", "rand-s3")
    assert rc == 0 and "warning: run 'rand-s3' did not finish" in err, err
    rc, _, err = cli("report", "rand-s1", "rand-s3", "--out", str(runs / "rep2"))
    assert rc == 0 and "Left out: `rand-s3`**, killed before it finished" in (runs / "rep2" / "report.md").read_text()


def test_saved_figures_that_their_per_user_table_does_not_give_are_refused(cli, runs) -> None:
    """The saved metrics are user-macro means of the digest-checked per-user table: a figure edited in
    eval-test.json (0.5 where the users give about 0.03) is refused, not compared."""
    assert cli("eval", "--run", "rand-s1", "--mask", "train+valid")[0] == 0
    path = runs / "runs" / "rand-s1" / "eval-test.mask-train+valid.json"
    saved = json.loads(path.read_text())
    saved["metrics"]["recall@20"] = 0.5
    path.write_text(json.dumps(saved))
    rc, _, err = cli("compare", "rand-s1", "rand-s2", "--mask", "train+valid")
    assert rc == 1 and "eval-test.mask-train+valid.json says recall@20 0.5 (its users' mean is" in err, err
    assert "re-run 'mrdib eval --run rand-s1 --mask train+valid'" in err  # the command that rewrites it
