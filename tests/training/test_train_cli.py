"""``mrdib train`` / ``mrdib runs`` as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.synth_data import make_dataset


def test_train_print_config_runs_and_errors(cli, workdir):
    make_dataset(workdir, n_users=40, n_items=30)
    rc, out, err = cli("train", "-b", "lightgcn", "--n-layers", "2", "--set", "lr=5e-4", "--print-config")
    assert rc == 0, err
    conf = json.loads(out)
    assert conf["hparams"]["n_layers"] == 2 and conf["train"]["lr"] == 5e-4 and conf["dataset"] == "tiny"
    rc, out, err = cli("train", "-b", "lightgcn", "--epochs", "2", "--batch-size", "64", "--run-name", "c1",
                       "--reg-weight", "1e-3")
    assert rc == 0, err
    assert "epoch    2" in err and "valid" in out and "test" in out and "best epoch" in out
    assert json.loads((workdir / "runs/c1/config.json").read_text())["hparams"]["reg_weight"] == 1e-3
    rc, out, _ = cli("runs")
    assert rc == 0 and "c1" in out and "lightgcn" in out and "finished" in out
    rc, _, err = cli("train", "-b", "lightgcn", "--n-layer", "2", "--print-config")
    assert rc == 2 and "unknown option '--n-layer' for lightgcn" in err and "--n-layers" in err


def test_print_config_shows_what_the_run_records(cli, workdir):
    """--print-config resolves what the run would: the feature tables (the newest unless named) and the thread
    count, as config.json then records them; a missing dataset or table is refused as the run refuses it."""
    make_dataset(workdir, n_users=40, n_items=30)
    rc, out, err = cli("train", "-b", "vbpr", "--print-config")
    assert rc == 0, err
    printed = json.loads(out)
    assert printed["sources"]["features.image"] == "newest of its modality" and printed["train"]["threads"] >= 1
    rc, _, err = cli("train", "-b", "vbpr", "--epochs", "2", "--threads", str(printed["train"]["threads"]),
                     "-n", "v")
    assert rc == 0, err
    stored = json.loads((workdir / "runs/v/config.json").read_text())
    assert stored["features"] == printed["features"] and set(printed["features"]) == {"image", "text"}
    assert stored["train"] == {**printed["train"], "epochs": 2}
    rc, _, err = cli("train", "-b", "vbpr", "-d", "nope", "--print-config")
    assert rc == 3 and "dataset 'nope' not found" in err
    # what it printed is a config file (its 'sources' is ignored there), and one naming a run resumes that run
    (workdir / "printed.json").write_text(json.dumps({**printed, "run_name": "v"}))
    rc, out, err = cli("train", "--config", str(workdir / "printed.json"), "--print-config")
    assert rc == 2 and "run 'v' already exists" in err  # the same run: read back whole
    rc, out, err = cli("train", "--resume", "--config", str(workdir / "printed.json"), "--print-config")
    assert rc == 0 and json.loads(out)["run_name"] == "v", err
    # a thread count in a config file is used (it was replaced by the automatic count)
    (workdir / "threads.yaml").write_text("train:\n  threads: 1\n")
    rc, out, err = cli("train", "-b", "vbpr", "--config", str(workdir / "threads.yaml"), "--print-config")
    assert rc == 0 and json.loads(out)["train"]["threads"] == 1, err
    assert json.loads(out)["sources"]["train.threads"] == str(workdir / "threads.yaml")
    # a resume below the epochs already trained is refused here as the run refuses it (the cap would lie)
    rc, _, err = cli("train", "--resume", "-n", "v", "--epochs", "1", "--print-config")
    assert rc == 2 and "has trained 2 epochs already" in err
    rc, _, err = cli("train", "-b", "vbpr", "--image-features", "nope", "--print-config")
    assert rc == 3 and "no image feature table 'nope'" in err


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "stopped by SIGTERM")])
def test_ctrl_c_saves_and_resume_finishes(workdir, sig, code, said):
    """Ctrl-C, and SIGTERM (``kill``, ``timeout``, a scheduler), stop after a checkpoint, write results.json
    and say how to continue; SIGTERM used to end the run without a word."""
    make_dataset(workdir, n_users=40, n_items=30)
    env = {**os.environ, "MRDIB_HOME": str(workdir), "MRDIB_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "mrdib_cli", "train", "-b", "lightgcn", "--epochs", "500", "--patience", "500",
           "--batch-size", "32", "--run-name", "k", "--threads", "1"]
    p = subprocess.Popen(cmd, env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "runs/k/metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.2)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == code, err
    res = json.loads((workdir / "runs/k/results.json").read_text())
    assert res["status"] == "stopped" and res["message"].startswith(said) and "--resume" in res["message"]
    assert "Traceback" not in err and "'mrdib train --resume --run-name k'" in err
    done = len(metrics.read_text().splitlines())
    r = subprocess.run([sys.executable, "-m", "mrdib_cli", "train", "--resume", "--run-name", "k", "--epochs",
                        str(done + 1)], env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resumed run 'k'" in r.stderr
    assert len(metrics.read_text().splitlines()) == done + 1
    assert json.loads((workdir / "runs/k/results.json").read_text())["status"] == "finished"


def test_a_closed_output_pipe_ends_the_run_like_a_unix_tool(workdir):
    """``mrdib train ... | head``: once the reader has gone, the run ends with SIGPIPE's exit code (141), not a
    bare exit 1 (rich's and click's own handling), and keeps a checkpoint that --resume continues."""
    make_dataset(workdir, n_users=40, n_items=30)
    env = {**os.environ, "MRDIB_HOME": str(workdir), "MRDIB_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "mrdib_cli", "train", "-b", "lightgcn", "--epochs", "500", "--patience", "500",
           "--batch-size", "32", "--run-name", "h", "--threads", "1"]
    p = subprocess.Popen(cmd, env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    while b"epoch    2" not in p.stdout.readline():  # the reader leaves after the second epoch's line
        assert p.poll() is None
    p.stdout.close()
    assert p.wait(timeout=120) == 141
    runs = subprocess.run([sys.executable, "-m", "mrdib_cli", "runs", "--json"], env=env, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=60)
    assert [r["status"] for r in json.loads(runs.stdout)] == ["interrupted"], runs.stderr
    r = subprocess.run([sys.executable, "-m", "mrdib_cli", "train", "--resume", "--epochs", "3", "--threads", "1"],
                       env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "resumed run 'h' after epoch" in r.stderr, r.stderr
