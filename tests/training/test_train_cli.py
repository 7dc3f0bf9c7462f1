"""``mrdib train`` / ``mrdib runs`` as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

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


def test_ctrl_c_saves_and_resume_finishes(workdir):
    make_dataset(workdir, n_users=40, n_items=30)
    env = {**os.environ, "MRDIB_HOME": str(workdir), "MRDIB_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "mrdib_cli", "train", "-b", "lightgcn", "--epochs", "500", "--patience", "500",
           "--batch-size", "32", "--run-name", "k", "--threads", "1"]
    p = subprocess.Popen(cmd, env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "runs/k/metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    res = json.loads((workdir / "runs/k/results.json").read_text())
    assert res["status"] == "stopped" and "--resume" in res["message"]
    done = len(metrics.read_text().splitlines())
    r = subprocess.run([sys.executable, "-m", "mrdib_cli", "train", "--resume", "--run-name", "k", "--epochs",
                        str(done + 1)], env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resumed run 'k'" in r.stderr
    assert len(metrics.read_text().splitlines()) == done + 1
    assert json.loads((workdir / "runs/k/results.json").read_text())["status"] == "finished"
