"""Training-step cost of MRdIB: backbone alone vs backbone + MRdIB, interleaved in one process.

On a shared machine, timings of separate runs drift with the load; alternating the two models batch by
batch on the same batches and comparing medians gives a fair ratio. Usage:

    MRDIB_HOME=... python benchmarks/bench_mrdib_overhead.py --backbone vbpr --dataset sci [--steps 40] \
        [--device cuda] [--json out.json]

On a GPU each step is synchronised before it is timed (kernels run asynchronously).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.models.base import Batch, get_backbone
from mrdib_cli.training.plugin import create_plugin, forward_terms
from mrdib_cli.training.resolve import resolve_run
from mrdib_cli.training.trainer import configure_cpu
from mrdib_cli.workspace import Workspace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="vbpr")
    ap.add_argument("--dataset", default=None)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--variants", default="{}", help="JSON list/obj of MRdIB option dicts, e.g. '[{}, {\"mib_only\": true}]'")
    a = ap.parse_args()
    configure_cpu(a.threads)  # as the trainer: threads, denormals flushed
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    ws = Workspace()
    h = DatasetHandle.open(ws, a.dataset)
    cls = get_backbone(a.backbone)
    variants = json.loads(a.variants)
    variants = [variants] if isinstance(variants, dict) else variants
    models = []
    for opts in [None, *variants]:
        torch.manual_seed(0)
        bb = cls(h, resolve_run(flags={"backbone": cls.name, "dataset": h.name}).hparams, None).to(dev)
        pl = None if opts is None else create_plugin("mrdib", opts)
        if pl is not None:
            pl.attach(bb)
            pl.train()
        bb.train()
        params = list(bb.parameters()) + (list(pl.parameters()) if pl is not None else [])
        models.append((opts, bb, pl, torch.optim.Adam(params, lr=1e-3)))
    g = torch.Generator().manual_seed(0)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(a.steps):
        b = Batch(*(torch.randint(n, (a.batch_size,), generator=g).to(dev) for n in (h.n_users, h.n_items,
                                                                                     h.n_items)))
        for k, (_, bb, pl, opt) in enumerate(models):
            sync()
            t = time.perf_counter()
            emb, terms = forward_terms(bb, pl, b)
            opt.zero_grad(set_to_none=True)
            sum(terms.values()).backward()
            opt.step()
            if pl is not None:
                pl.after_step(b, emb)
            sync()
            times[k].append(time.perf_counter() - t)
    warm = min(5, a.steps // 4)
    base = statistics.median(times[0][warm:])
    rows = []
    for (opts, *_), ts in zip(models, times):
        m = statistics.median(ts[warm:])
        label = "backbone alone" if opts is None else f"+MRdIB {json.dumps(opts)}"
        print(f"{a.backbone:8s} {h.name:10s} {label:40s} {m * 1000:8.1f} ms/step  x{m / base:.3f}")
        rows.append({"mrdib": opts, "ms_per_step": round(m * 1000, 3), "ratio": round(m / base, 4)})
    if a.json:
        gpu = torch.cuda.get_device_name(0) if dev.type == "cuda" else None
        with open(a.json, "w") as f:
            json.dump({"backbone": a.backbone, "dataset": h.name, "device": a.device, "gpu": gpu,
                       "threads": a.threads, "steps": a.steps, "batch_size": a.batch_size, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
