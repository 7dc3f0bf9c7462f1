"""Training time per epoch, backbone alone vs backbone + MRdIB, through the real trainer (`mrdib train`).

The acceptance figure of issue #6 is time *per epoch*; ``bench_mrdib_overhead.py`` isolates one training step
on identical batches, this measures what a user sees: the trainer's epoch (sampling, batching, the steps,
logging; the validation pass is timed separately and excluded) at Amazon Baby scale (19,445 users, 7,050
items, ~120k training interactions; random 4096-d / 384-d features, as in ``bench_backbones.py``). Each
(backbone, arm) runs in its own process, one after the other; reported: the median ``train_s`` of epochs
2..N (epoch 1 includes warm-up).

On a shared machine one arm's epoch time moves by up to ~30% from one process to the next, each process
steady within itself (VBPR, 2 threads, nine processes per arm on 2026-11-27: alone 3.37-4.50 s, + MRdIB
4.25-5.18 s), so one pair of processes can land the ratio anywhere in x1.12-1.32. ``--repeats N`` runs the
arms alternately N times (alone, + MRdIB, alone, ...) and reports every pair's ratio, their median and range.

    python benchmarks/bench_mrdib_epoch.py [--backbones vbpr,lgmrec] [--epochs 4] [--repeats 1]
                                           [--device cpu|cuda] [--threads 2] [--workdir DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_backbones import prepare  # noqa: E402


def run_arm(workdir: Path, backbone: str, mrdib: bool, epochs: int, device: str, threads: int) -> dict:
    """One `mrdib train` process; returns per-epoch train seconds from its metrics.jsonl."""
    name = f"epoch-{backbone}{'-mrdib' if mrdib else ''}"
    cmd = [sys.executable, "-m", "mrdib_cli", "--workdir", str(workdir), "--quiet", "train", "-b", backbone,
           "-d", "baby", "-n", name, "--epochs", str(epochs), "--patience", str(epochs), "--device", device,
           "--threads", str(threads), "--force", "--image-features", "random-bench", "--text-features",
           "random-bench"] + (["--mrdib"] if mrdib else [])
    path = os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    env = {**os.environ, "MRDIB_OFFLINE": "1", "PYTHONPATH": path}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr.strip()[-1500:]}")
    rows = [json.loads(ln) for ln in (workdir / "runs" / name / "metrics.jsonl").read_text().splitlines() if ln]
    train_s = [r["time"]["train_s"] for r in rows]
    return {"backbone": backbone, "mrdib": mrdib, "train_s": train_s,
            "median_s_per_epoch": statistics.median(train_s[1:] or train_s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="vbpr,lgmrec")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mrdib-bench-backbones")
    ap.add_argument("--repeats", type=int, default=1, help="pairs of processes per backbone, run alternately")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {a.repeats}")
    prepare(a.workdir)
    rows, summary = [], []
    for bb in a.backbones.split(","):
        ratios = []
        for rep in range(a.repeats):
            base = run_arm(a.workdir, bb, False, a.epochs, a.device, a.threads)
            new = run_arm(a.workdir, bb, True, a.epochs, a.device, a.threads)
            ratio = new["median_s_per_epoch"] / base["median_s_per_epoch"]
            ratios.append(round(ratio, 3))
            rows += [{**base, "repeat": rep}, {**new, "repeat": rep, "ratio": round(ratio, 3)}]
            print(f"{bb:8s} {a.device:5s} alone {base['median_s_per_epoch']:7.2f} s/epoch   + MRdIB "
                  f"{new['median_s_per_epoch']:7.2f} s/epoch   x{ratio:.3f}", flush=True)
        if a.repeats > 1:
            med = statistics.median(ratios)
            summary.append({"backbone": bb, "ratios": ratios, "median_ratio": round(med, 3)})
            print(f"{bb:8s} {a.device:5s} {a.repeats} pairs: median x{med:.3f} (range x{min(ratios):.3f}"
                  f"-x{max(ratios):.3f})", flush=True)
    if a.json:
        gpu = None
        if a.device == "cuda":
            import torch

            gpu = torch.cuda.get_device_name(0)
        a.json.write_text(json.dumps({"device": a.device, "gpu": gpu, "threads": a.threads, "epochs": a.epochs,
                                      "repeats": a.repeats, "dataset": "baby (random features)", "rows": rows,
                                      "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
