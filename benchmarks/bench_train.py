"""Training-engine benchmark: seconds per epoch (train) and per validation pass, peak memory.

Data: Amazon Baby's interactions (the LATTICE split in ../shared/data, imported with ``mrdib import lattice``)
with random features of MMRec's Baby shapes (image 4096-d, text 384-d): the cost of a backbone does not
depend on feature values. Each backbone runs in its own subprocess so that its peak RSS is its own.

    python benchmarks/bench_train.py                       # LightGCN and LGMRec, 3 epochs, CPU
    python benchmarks/bench_train.py --device cuda --epochs 5 --json out.json
    python benchmarks/bench_train.py --sampler             # also time MMRec's Python-loop negative sampling

Timings on a shared machine are noisy: the script reports the median epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("MRDIB_SHARED_DATA", ROOT.parent / "shared" / "data"))
BABY = SHARED / "amazon2014-baby-5core" / "lattice"


def prepare(workdir: Path) -> None:
    """Import Baby and attach random features of MMRec's shapes (cached in the workdir)."""
    import numpy as np

    from mrdib_cli.data.handle import DatasetHandle
    from mrdib_cli.data.feature_store import table_path, write_feature_table

    d = workdir / "datasets" / "baby"
    if not (d / "dataset.json").exists():
        if not BABY.exists():
            sys.exit(f"Baby data not found at {BABY} (set MRDIB_SHARED_DATA)")
        subprocess.run([sys.executable, "-m", "mrdib_cli", "-q", "-w", str(workdir), "import", "lattice", str(BABY),
                        "-n", "baby"], check=True, cwd=ROOT)
    h = DatasetHandle(d)
    rng = np.random.default_rng(0)
    for m, dim in (("image", 4096), ("text", 384)):
        p = table_path(d, m, "random")
        if not p.exists():
            x = rng.standard_normal((h.n_items, dim), dtype=np.float32)
            write_feature_table(p, x, ["ok"] * h.n_items, {"modality": m, "model": "random", "source": "bench"})


def run_one(workdir: Path, backbone: str, epochs: int, device: str, threads: int) -> dict:
    """Train ``epochs`` epochs (no early stopping) and report the per-epoch times and peak memory."""
    import torch

    from mrdib_cli.training.resolve import resolve_run
    from mrdib_cli.training.trainer import Trainer
    from mrdib_cli.workspace import Workspace

    cfg = resolve_run(flags={"backbone": backbone, "dataset": "baby", "run_name": f"bench-{backbone}-{device}",
                             "train": {"epochs": epochs, "patience": 10**6, "device": device, "threads": threads}})
    t0 = time.perf_counter()
    tr = Trainer(Workspace(workdir), cfg, overwrite=True)
    setup = time.perf_counter() - t0
    if tr.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    res = tr.fit()
    train_s = [r.time["train_s"] for r in res.history]
    valid_s = [r.time["valid_s"] for r in res.history]
    out = {"backbone": backbone, "device": str(tr.device), "threads": torch.get_num_threads(), "epochs": epochs,
           "setup_s": round(setup, 2), "train_s_per_epoch": round(statistics.median(train_s), 3),
           "valid_s_per_pass": round(statistics.median(valid_s), 3),
           "epoch_incl_valid_s": round(statistics.median(a + b for a, b in zip(train_s, valid_s)), 3),
           "train_s_all": train_s, "valid_s_all": valid_s,
           "batches_per_epoch": len(tr.sampler),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if tr.device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def reference_style(workdir: Path, threads: int) -> dict:
    """LGMRec epoch with the reference implementation's cost structure, rebuilt from our own parts.

    The reference draws negatives in a Python loop, computes the hypergraph contrastive loss on the full
    B x N similarity matrix, recomputes the full forward for every 4096-user evaluation batch, and evaluates
    valid **and** test every epoch. We time exactly those pieces here (one epoch each) and put them next to
    our epoch (vectorised sampler, exact low-rank HCL, one forward + one valid ranking per epoch).
    """
    import math

    import torch

    import mrdib_cli.models.lgmrec as lg
    from mrdib_cli.training.resolve import resolve_run
    from mrdib_cli.training.trainer import Trainer
    from mrdib_cli.workspace import Workspace

    def plain(ids, anchor_all, pos_all, assign, lam, tau=lg.TAU):
        return lg.info_nce_sum(anchor_all[ids], pos_all[ids], pos_all, tau)

    cfg = resolve_run(flags={"backbone": "lgmrec", "dataset": "baby", "run_name": "bench-refstyle",
                             "train": {"epochs": 1, "patience": 10**6, "device": "cpu", "threads": threads}})
    tr = Trainer(Workspace(workdir), cfg, overwrite=True)
    fast = lg.info_nce_sum_lowrank
    t0 = time.perf_counter()
    tr._train_epoch()
    ours_train = time.perf_counter() - t0
    lg.info_nce_sum_lowrank = plain
    try:
        t0 = time.perf_counter()
        tr._train_epoch()
        plain_train = time.perf_counter() - t0
    finally:
        lg.info_nce_sum_lowrank = fast
    t0 = time.perf_counter()
    u, i = tr._eval_embeddings()
    forward = time.perf_counter() - t0
    t0 = time.perf_counter()
    tr._evaluate(u, i, "valid")
    rank_valid = time.perf_counter() - t0
    t0 = time.perf_counter()
    tr._evaluate(u, i, "test")
    rank_test = time.perf_counter() - t0
    loop = bench_sampler(workdir)["python_loop_s"]
    n_eval_batches = math.ceil(tr.handle.n_users / 4096)
    ref = loop + plain_train + 2 * n_eval_batches * forward + rank_valid + rank_test
    ours = ours_train + forward + rank_valid
    return {"ours_epoch_incl_valid_s": round(ours, 2), "reference_style_epoch_s": round(ref, 2),
            "speedup": round(ref / ours, 2),
            "parts": {"ours_train_s": round(ours_train, 2), "plain_hcl_train_s": round(plain_train, 2),
                      "python_loop_sampling_s": round(loop, 2), "forward_s": round(forward, 2),
                      "eval_batches_per_pass": n_eval_batches, "rank_valid_s": round(rank_valid, 2),
                      "rank_test_s": round(rank_test, 2)},
            "threads": torch.get_num_threads()}


def bench_sampler(workdir: Path) -> dict:
    """Our vectorised epoch of negatives vs MMRec's per-interaction Python loop (same data)."""
    import numpy as np

    from mrdib_cli.data.handle import DatasetHandle
    from mrdib_cli.training.sampler import BPRSampler

    h = DatasetHandle(workdir / "datasets" / "baby")
    u, i = h.pairs("train")
    s = BPRSampler(u, i, h.n_items)
    t0 = time.perf_counter()
    for _ in s.epoch():
        pass
    ours = time.perf_counter() - t0
    history: dict[int, set[int]] = {}
    for a, b in zip(u.tolist(), i.tolist()):
        history.setdefault(a, set()).add(b)
    items = list(np.unique(i).tolist())
    t0 = time.perf_counter()
    for a in u.tolist():  # MMRec: redraw with Python random until outside the history
        n = random.choice(items)
        while n in history[a]:
            n = random.choice(items)
    loop = time.perf_counter() - t0
    return {"vectorised_s": round(ours, 4), "python_loop_s": round(loop, 4), "speedup": round(loop / ours, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default="lightgcn,lgmrec")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = all cores)")
    ap.add_argument("--workdir", type=Path, default=None, help="reuse a workdir (default: a temp dir)")
    ap.add_argument("--sampler", action="store_true", help="also time MMRec-style Python-loop sampling")
    ap.add_argument("--reference-style", action="store_true",
                    help="also time an LGMRec epoch with the reference implementation's cost structure")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("MRDIB_NO_PROGRESS", "1")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mrdib-bench-"))
    if args._one == "refstyle":
        print(json.dumps(reference_style(workdir, args.threads)))
        return
    if args._one:  # child process: one backbone
        print(json.dumps(run_one(workdir, args._one, args.epochs, args.device, args.threads)))
        return
    prepare(workdir)
    results = []
    for bb in [b for b in args.backbones.split(",") if b]:
        p = subprocess.run([sys.executable, __file__, "--_one", bb, "--epochs", str(args.epochs), "--device",
                            args.device, "--threads", str(args.threads), "--workdir", str(workdir)],
                           capture_output=True, text=True, cwd=ROOT)
        if p.returncode != 0:
            sys.exit(f"{bb} failed:\n{p.stderr[-3000:]}")
        results.append(json.loads(p.stdout.strip().splitlines()[-1]))
    report = {"results": results, "cpu_count": os.cpu_count(),
              "load_avg": os.getloadavg(), "workdir": str(workdir)}
    if args.sampler:
        report["sampler"] = bench_sampler(workdir)
    if args.reference_style:
        p = subprocess.run([sys.executable, __file__, "--_one", "refstyle", "--threads", str(args.threads),
                            "--workdir", str(workdir)], capture_output=True, text=True, cwd=ROOT)
        if p.returncode != 0:
            sys.exit(f"reference-style timing failed:\n{p.stderr[-3000:]}")
        report["reference_style"] = json.loads(p.stdout.strip().splitlines()[-1])
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"mrdib training on Amazon Baby interactions (random MMRec-shaped features), {args.device}")
    for c in ("backbone", "device", "threads", "batches", "train s/epoch", "valid s/pass", "epoch+valid s",
              "peak RSS MB", "peak CUDA MB"):
        t.add_column(c, justify="left" if c in ("backbone", "device") else "right")
    for r in results:
        t.add_row(r["backbone"], r["device"], str(r["threads"]), str(r["batches_per_epoch"]),
                  f"{r['train_s_per_epoch']:.2f}", f"{r['valid_s_per_pass']:.2f}", f"{r['epoch_incl_valid_s']:.2f}",
                  f"{r['peak_rss_mb']:.0f}", str(r.get("peak_cuda_mb", "-")))
    Console().print(t)
    if args.sampler:
        s = report["sampler"]
        Console().print(f"negative sampling, one epoch: vectorised {s['vectorised_s']}s vs Python loop "
                        f"{s['python_loop_s']}s ({s['speedup']}x)")
    if args.reference_style:
        r = report["reference_style"]
        Console().print(f"LGMRec epoch incl. validation: ours {r['ours_epoch_incl_valid_s']}s vs reference-style "
                        f"{r['reference_style_epoch_s']}s ({r['speedup']}x); parts {r['parts']}")
    Console().print(f"load average {report['load_avg']} on {report['cpu_count']} cores (shared machines are noisy)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
