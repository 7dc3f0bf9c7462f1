"""`mrdib train --mrdib` and `mrdib diagnose` end to end on a tiny synthetic dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.forked import mrdib_forked
from tests.synth_data import make_dataset

FAST = ("--epochs", "3", "--batch-size", "64", "--threads", "1")


def _cli(workdir, *args: str) -> tuple[int, str, str]:
    p = mrdib_forked(Path(workdir), *args)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One baseline and one MRdIB run, shared by the tests of this module (subprocess CLI runs are slow)."""
    wd = tmp_path_factory.mktemp("mrdib-cli") / "wd"
    make_dataset(wd, n_users=60, n_items=40)
    for args in (("-n", "base"), ("-n", "ib", "--mrdib", "--alpha-kl", "0.01", "--synergy-head", "mlp")):
        rc, out, err = _cli(wd, "train", "-b", "vbpr", *args, *FAST)
        assert rc == 0, err
    return wd


def test_train_with_mrdib_logs_every_term_and_stores_resolved_config(trained):
    run = trained / "runs" / "ib"
    conf = json.loads((run / "config.json").read_text())
    plug = conf["plugin"]
    assert plug["name"] == "mrdib" and plug["alpha_kl"] == 0.01 and plug["alpha_red"] == 0.05
    assert plug["synergy_head"] == "mlp" and plug["resolved"]["hooks"] == ["image", "text"]
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for key in ("bpr", "kl", "red", "uni", "syn", "kl_image", "kl_text", "mine", "uni_image", "uni_text"):
        assert key in rows[-1]["loss"], key
    # same evaluation embeddings shape as the baseline: inference cost unchanged
    import numpy as np

    with np.load(run / "embeddings.npz") as a, np.load(trained / "runs" / "base" / "embeddings.npz") as b:
        assert a["user"].shape == b["user"].shape and a["item"].shape == b["item"].shape


def test_diagnose_writes_json_and_png(trained):
    rc, out, err = _cli(trained, "diagnose", "ib", "--baseline", "base", "--mi-steps", "60")
    assert rc == 0, err
    rep = json.loads((trained / "runs" / "ib" / "diagnose.json").read_text())
    assert rep["run"]["plugin"] == "mrdib" and rep["baseline"]["plugin"] is None
    for r in (rep["run"], rep["baseline"]):
        assert r["mi"]["pair"] == ["image", "text"] and isinstance(r["mi"]["mi"], float)
        assert set(r["ranking"]) == {"image", "text", "fused"}
        assert 0.0 <= r["ranking"]["fused"]["recall@20"] <= 1.0
    # the fused row is the run's own test result
    res = json.loads((trained / "runs" / "ib" / "results.json").read_text())
    assert rep["run"]["ranking"]["fused"]["recall@20"] == pytest.approx(res["test"]["recall@20"], abs=1e-6)
    png = (trained / "runs" / "ib" / "diagnose.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "I(Z_v; Z_t)" in out
    # the diagnosis names the checkpoint it read; report leaves it out once the run holds another best.pt
    from mrdib_cli.workspace import file_digest

    path = trained / "runs" / "ib" / "diagnose.json"
    assert rep["run"]["checkpoint_digest"] == file_digest(trained / "runs" / "ib" / "checkpoints" / "best.pt")
    rc, _, err = _cli(trained, "report", "ib", "base", "--out", str(trained / "rep1"))
    assert rc == 0, err
    assert "| ib | mrdib |" in (trained / "rep1" / "report.md").read_text()
    text = path.read_text()
    try:  # as a resume that found a better epoch leaves it: the record names another best.pt
        path.write_text(json.dumps({**rep, "run": {**rep["run"], "checkpoint_digest": "sha256:earlier"}}))
        rc, _, err = _cli(trained, "report", "ib", "base", "--out", str(trained / "rep2"))
        assert rc == 0, err
        md = (trained / "rep2" / "report.md").read_text()
        assert "| ib | mrdib |" not in md and "Left out: the diagnostics in `ib/diagnose.json`" in md
    finally:
        path.write_text(text)


def test_flag_errors_are_one_line_and_leave_no_run(workdir, cli):
    make_dataset(workdir, n_users=30, n_items=20)
    rc, out, err = cli("train", "-b", "lightgcn", "-n", "x", "--mrdib", *FAST)
    assert rc == 2 and "no modality hook points" in err and "Traceback" not in err
    assert not (workdir / "runs" / "x").exists()
    rc, _, err = cli("train", "-b", "vbpr", "-n", "y", "--alpha-kl", "0.1", *FAST)
    assert rc == 2 and "add --mrdib" in err
    rc, _, err = cli("train", "-b", "vbpr", "-n", "y", "--mrdib", "--alpha-red", "lots", *FAST)
    assert rc == 2 and "--alpha-red expects a number" in err
    rc, _, err = cli("train", "-b", "vbpr", "-n", "y", "--mrdib", "--synergy-head", "attention", *FAST)
    assert rc == 2 and "synergy-head" in err
    assert not (workdir / "runs" / "y").exists()
    rc, out, err = cli("train", "-b", "vbpr", "--mrdib", "--plugin-opt", "critic_hidden=16", "--print-config")
    assert rc == 0 and json.loads(out)["plugin"]["critic_hidden"] == 16, err  # the switch chooses the plug-in
    rc, _, err = cli("train", "-b", "vbpr", "--plugin-opt", "critic_hidden=16", "--print-config")
    assert rc == 2 and "no plug-in chosen" in err
    (workdir / "p.yaml").write_text("backbone: vbpr\nplugin: mrdib\n")
    rc, _, err = cli("train", "-c", str(workdir / "p.yaml"), "--print-config")
    assert rc == 2 and "'plugin' must be a mapping" in err and "Traceback" not in err
    rc, _, err = cli("train", "-b", "bm3", "--mrdib", "--print-config")  # the default preset's dual path
    assert rc == 2 and "add --no-dual-path" in err
    rc, _, err = cli("diagnose", "nope")
    assert rc != 0 and "Traceback" not in err


def test_diagnose_tables_keep_long_run_names_whole_on_a_narrow_terminal():
    """Runs compared by diagnose differ at the end of long names (…-mrdib-s999 vs …-s999): at 80 columns a
    truncated name ('quickstart-demo-l…') made the two blocks of the ranking table indistinguishable."""
    from rich.console import Console

    from mrdib_cli.cli.diagnose import tables

    def side(name: str, plugin: str | None) -> dict:
        ranking = {g: {m: 0.1 for m in ("recall@10", "recall@20", "ndcg@10", "ndcg@20")}
                   for g in ("image", "text", "fused")}
        return {"run": name, "plugin": plugin, "representation": "mu", "mask": "train",
                "mi": {"mi": 0.5, "mi_train": 0.7}, "ranking": ranking}

    names = ("quickstart-demo-lgmrec-mrdib-s999", "quickstart-demo-lgmrec-s999")
    report = {"run": side(names[0], "mrdib"), "baseline": side(names[1], None)}
    console = Console(width=80, record=True)
    for t in tables(report):
        console.print(t)
    text = console.export_text()
    assert "…" not in text
    # every cell of the run column, read top to bottom and joined, spells the full names in order
    first_col = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│"))
    assert first_col.count(names[0]) == 2 and first_col.count(names[1]) == 2


def test_the_paper_preset_is_resolved_and_stored_in_the_run_config(workdir, cli):
    make_dataset(workdir, n_users=40, n_items=30)
    rc, _, err = cli("train", "-b", "vbpr", "-n", "paper", "--mrdib", "--mrdib-preset", "paper",
                     "--alpha-kl", "0.001", *FAST)
    assert rc == 0, err
    plug = json.loads((workdir / "runs" / "paper" / "config.json").read_text())["plugin"]
    assert plug["preset"] == "paper" and plug["alpha_kl"] == 0.001  # an explicit option beats the preset
    assert (plug["kl_reduction"], plug["prior_std"], plug["placement"], plug["units"], plug["dual_path"],
            plug["unique_decoders"]) == ("mean", 0.5, "input", "raw", True, "independent")
    rows = [json.loads(ln) for ln in (workdir / "runs" / "paper" / "metrics.jsonl").read_text().splitlines()]
    assert "bpr_clean" in rows[-1]["loss"]  # the dual path ran
    rc, _, err = cli("train", "-b", "vbpr", "-n", "bad", "--mrdib", "--mrdib-preset", "lab", *FAST)
    assert rc == 2 and "--mrdib-preset must be one of current, paper" in err and "Traceback" not in err
    assert not (workdir / "runs" / "bad").exists()
