"""Distributed-training benchmark: train seconds per epoch with 1 and N processes (same seed, same data).

Data: a synthetic clustered dataset (tests/synth_data.py) unless ``--dataset`` names one in ``--workdir``.
Each configuration runs the real CLI (``mrdib train``, and ``--nproc N`` for N > 1) and reads the per-epoch
``train_s`` from ``metrics.jsonl``; the median of the epochs after the first is reported (the first includes
warm-up). On CPU the processes share the cores, so expect little or no gain (docs/scaling.md).

    python benchmarks/bench_distributed.py                         # 1 vs 2 processes, CPU
    python benchmarks/bench_distributed.py --threads 1             # same, one thread per process
    python benchmarks/bench_distributed.py --device cuda --nproc 1 2 4 --dataset baby --workdir ~/mrdib
    python benchmarks/bench_distributed.py --minibatch sampled --machines 2   # + 2 one-process "machines"

``--machines M`` adds a row for M launchers started at once on this host with ``--nnodes M`` (one process
each), meeting over loopback TCP: the ranks share no memory, so the sampled mode's tables are sharded and
its rows travel through collectives, as between real machines (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(workdir: Path, dataset: str, nproc: int, args: argparse.Namespace, machines: int = 1) -> dict:
    """One configuration: ``nproc`` processes on this machine, or ``machines`` one-process launchers."""
    name = f"bench-{args.backbone}-{machines}m" if machines > 1 else f"bench-{args.backbone}-{nproc}p"
    cmd = [sys.executable, "-m", "mrdib_cli", "train", "-b", args.backbone, "-d", dataset, "-n", name,
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--device", args.device,
           "--force", "--seed", "999"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    if machines > 1:
        cmd += ["--nnodes", str(machines), "--rdzv-endpoint", f"127.0.0.1:{_free_port()}"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.minibatch:
        cmd += ["--minibatch", args.minibatch]
    if args.node_budget:
        cmd += ["--node-budget", str(args.node_budget)]
    env = {**os.environ, "MRDIB_HOME": str(workdir), "MRDIB_NO_PROGRESS": "1"}
    t0 = time.perf_counter()
    launchers = [subprocess.Popen(cmd, env=env, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for _ in range(machines)]
    for p in launchers:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed (exit {p.returncode}):\n{err}")
    wall = time.perf_counter() - t0
    lines = [json.loads(x) for x in (workdir / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    train_s = [ln["time"]["train_s"] for ln in lines]
    return {"nproc": nproc, "machines": machines, "label": f"{machines} machines" if machines > 1 else
            f"{nproc} process(es)", "train_s_median": statistics.median(train_s[1:] or train_s), "train_s": train_s,
            "valid_s": [ln["time"]["valid_s"] for ln in lines], "wall_s": round(wall, 1),
            # CPU seconds of the epoch's training summed over the ranks: equal to 1 process's when the ranks
            # split the work instead of repeating it
            "train_cpu_s_median": statistics.median([ln["time"].get("train_cpu_s", 0) for ln in lines][1:]
                                                    or [lines[0]["time"].get("train_cpu_s", 0)]),
            "recall@20": lines[-1]["valid"]["recall@20"]}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--machines", type=int, nargs="*", default=[],
                    help="also run as M one-process launchers meeting over loopback (--nnodes M), for each M")
    ap.add_argument("--backbone", default="lightgcn")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--dataset", default=None)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--users", type=int, default=4000)
    ap.add_argument("--items", type=int, default=1500)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--minibatch", default=None, help="full or sampled (default: the trainer's, full)")
    ap.add_argument("--node-budget", type=int, default=0, help="the sampled mode's --node-budget (default: none)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads per process [trainer default: all cores for 1 process, "
                         "cores / N for N processes]")
    args = ap.parse_args()
    tmp = None
    if args.dataset is None:
        from tests.synth_data import make_dataset

        tmp = tempfile.TemporaryDirectory()
        workdir = Path(tmp.name)
        make_dataset(workdir, name="bench", n_users=args.users, n_items=args.items, features=False)
        dataset = "bench"
    else:
        workdir, dataset = args.workdir or Path(os.environ.get("MRDIB_HOME", "~/.mrdib")).expanduser(), args.dataset
    rows = [run(workdir, dataset, n, args) for n in args.nproc]
    rows += [run(workdir, dataset, 1, args, machines=m) for m in args.machines if m > 1]
    for r in rows:
        print(f"{r['label']}, {args.device}: train {r['train_s_median']:.2f} s/epoch, "
              f"{r['train_cpu_s_median']:.2f} CPU s/epoch over all ranks "
              f"(epochs {r['train_s']}), valid {r['valid_s']}, wall {r['wall_s']} s, recall@20 {r['recall@20']:.4f}")
    one = next((r for r in rows if r["nproc"] == 1 and r["machines"] == 1), None)
    for r in rows:
        if one and r is not one and one["train_cpu_s_median"]:
            # scale-out should divide the work: ideally N ranks spend no more CPU seconds than one process
            print(f"{r['label']} / 1 process: {r['train_cpu_s_median'] / one['train_cpu_s_median']:.2f}x the "
                  f"CPU seconds per epoch, {one['train_s_median'] / r['train_s_median']:.2f}x the speed")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
