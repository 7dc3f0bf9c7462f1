"""One training epoch (no validation) of a backbone on a scaling dataset, in this process; prints JSON.

Used by ``benchmarks/sections/scaling.py`` for the ``--minibatch sampled`` points, where a full-ranking
validation pass at 64x Baby would take far longer than the epoch being measured: ``--eval`` times one pass
after the epoch, separately (the section asks it of one backbone). Peak RSS is this process's, after the
epoch and (``peak_rss_eval_mib``) after the evaluation.

    python benchmarks/scaling_epoch.py WORKDIR DATASET BACKBONE --minibatch sampled --threads 1
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir", type=Path)
    ap.add_argument("dataset")
    ap.add_argument("backbone")
    ap.add_argument("--minibatch", default="sampled")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=999)
    ap.add_argument("--node-budget", type=int, default=0, help="the sampled mode's node budget (0: none)")
    ap.add_argument("--eval", action="store_true", help="also time one full-ranking pass over the valid split")
    args = ap.parse_args()
    from mrdib_cli.training.resolve import resolve_run
    from mrdib_cli.training.trainer import Trainer
    from mrdib_cli.workspace import Workspace

    cfg = resolve_run(flags={"backbone": args.backbone, "dataset": args.dataset,
                             "run_name": f"{args.dataset}-{args.backbone}-{args.minibatch}-{args.node_budget}-epoch",
                             "train": {"epochs": 1, "device": "cpu", "threads": args.threads, "seed": args.seed,
                                       "minibatch": args.minibatch, "node_budget": args.node_budget}})
    t0 = time.perf_counter()
    tr = Trainer(Workspace(args.workdir), cfg, overwrite=True)
    t1 = time.perf_counter()
    cpu0 = time.process_time()
    tr._train_epoch()
    t2 = time.perf_counter()
    out = {"setup_s": round(t1 - t0, 2), "train_s_per_epoch": round(t2 - t1, 2),
           "train_cpu_s": round(time.process_time() - cpu0, 2), "batches": len(tr.sampler),
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if args.eval:  # the trainer's own per-epoch validation: the full forward, then exact full ranking
        u, i = tr._eval_embeddings()
        tr._evaluate(u, i, "valid")
        out.update(valid_s_per_pass=round(time.perf_counter() - t2, 2),
                   peak_rss_eval_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
