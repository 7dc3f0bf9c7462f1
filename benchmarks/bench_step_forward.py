"""Paired timing of a training epoch's steps: the full forward (``propagate``) against the step forward of
the default mode (``propagate_step``, e.g. VBPR projecting only the batch's items), and optionally the
``--minibatch sampled`` forward, on Amazon Baby (the LATTICE split, random features of MMRec's shapes).

The paths alternate epoch by epoch in one process (A B A B ...), so a load change on a shared machine hits
both; the report gives every pair and the median ratio.

    python benchmarks/bench_step_forward.py --backbone vbpr --pairs 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def time_epoch(trainer, path: str) -> float:
    """Seconds for one epoch of steps (forward, backward, optimiser) along ``path``."""
    import torch

    from mrdib_cli.models.base import MiniBatch

    model = trainer.backbone
    model.train()
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for batch in trainer.sampler.epoch():
        if path == "sampled":
            emb, batch = model.propagate_batch(batch, MiniBatch((10,), gen))
        else:
            emb = model.propagate() if path == "full" else model.propagate_step(batch)
        loss = sum(model.loss(batch, emb).values())
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="vbpr")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--paths", default="full,step", help="comma list of full, step, sampled")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from benchmarks.bench_train import prepare
    from mrdib_cli.training.resolve import resolve_run
    from mrdib_cli.training.trainer import Trainer
    from mrdib_cli.workspace import Workspace

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mrdib-step-"))
    prepare(workdir)
    paths = args.paths.split(",")
    trainers = {}
    for p in paths:
        mode = "sampled" if p == "sampled" else "full"
        cfg = resolve_run(flags={"backbone": args.backbone, "dataset": "baby", "run_name": f"step-{p}",
                                 "train": {"epochs": 1, "device": "cpu", "threads": args.threads,
                                           "minibatch": mode}})
        trainers[p] = Trainer(Workspace(workdir), cfg, overwrite=True)
    times: dict[str, list[float]] = {p: [] for p in paths}
    for _ in range(args.pairs):
        for p in paths:
            times[p].append(round(time_epoch(trainers[p], p), 2))
    base = paths[0]
    res = {"backbone": args.backbone, "threads": args.threads, "seconds_per_epoch": times,
           "median_ratio_to_" + base: {p: round(statistics.median(a / b for a, b in zip(times[p], times[base])), 3)
                                       for p in paths}}
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
