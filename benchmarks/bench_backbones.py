"""Seconds per training epoch and per validation pass, and peak memory, per backbone at Amazon Baby scale.

Data: Amazon Baby 5-core interactions (the LATTICE split in ../shared/data, 19,445 users, 7,050 items,
~120k train interactions) imported with ``mrdib import lattice``, plus **random** features of MMRec's Baby
shapes (image 4096-d, text 384-d): values do not matter for timing. Each backbone runs in its own
subprocess (so peak RSS is its own): build the model (graphs included, timed separately), then
``--epochs`` training epochs (MMRec protocol: batch 2048, one uniform negative per positive, a full-graph
forward per batch, Adam) each followed by one validation pass (deterministic embeddings + full-ranking
evaluation with the shared engine). Reported: build s, mean train s/epoch, mean valid s/pass (wall clock
and process CPU seconds: on a shared machine the CPU seconds are the stable figure), peak RSS.

    python benchmarks/bench_backbones.py [--backbones freedom,mgcn,...|all] [--epochs 2] [--threads 2]
                                         [--workdir DIR] [--device cpu|cuda] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BABY = (Path(os.environ.get("MRDIB_SHARED_DATA") or ROOT.parent / "shared" / "data")
        / "amazon2014-baby-5core" / "lattice")
DEFAULT = "freedom,mgcn,bm3,lattice,soil,mmgcn,dualgnn"
ALL = "lightgcn,vbpr,lgmrec," + DEFAULT  # every registered backbone


def prepare(workdir: Path) -> None:
    """Import Baby and attach random 4096-d / 384-d feature tables (once per workdir)."""
    from mrdib_cli.data.handle import DatasetHandle
    from mrdib_cli.data.feature_store import table_path, write_feature_table

    ds = workdir / "datasets" / "baby"
    if not (ds / "dataset.json").exists():
        env = {**os.environ, "MRDIB_HOME": str(workdir)}
        subprocess.run([sys.executable, "-m", "mrdib_cli", "import", "lattice", str(BABY), "--name", "baby"],
                       check=True, env=env, cwd=ROOT, capture_output=True)
    h = DatasetHandle(ds)
    rng = np.random.default_rng(0)
    for m, d in (("image", 4096), ("text", 384)):
        p = table_path(ds, m, "random-bench")
        if not p.exists():
            vec = rng.random((h.n_items, d), dtype=np.float32)  # non-negative like CNN/CLIP activations
            write_feature_table(p, vec, ["ok"] * h.n_items, {"modality": m, "model": "random-bench", "dim": d,
                                                             "source": "bench_backbones.py"})


def child(workdir: Path, name: str, epochs: int, threads: int, device: str) -> dict:
    """Runs in the subprocess: time build, training epochs and validation passes of one backbone."""
    import torch

    from mrdib_cli.data.handle import DatasetHandle
    from mrdib_cli.evaluation.engine import evaluate_split
    from mrdib_cli.models.base import Batch, get_backbone
    from mrdib_cli.training.resolve import resolve_run
    from mrdib_cli.training.trainer import configure_cpu

    configure_cpu(threads)  # as the trainer: threads, denormals flushed
    cfg = resolve_run(flags={"backbone": name, "dataset": "baby"})  # the hyper-parameters a run would use
    torch.manual_seed(cfg.train.seed)
    dev = torch.device(device)
    h = DatasetHandle(workdir / "datasets" / "baby")
    cls = get_backbone(name)
    t0 = time.perf_counter()
    model = cls(h, cfg.hparams, None).to(dev)
    build_s = time.perf_counter() - t0
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    users, items = h.pairs("train")
    train_items = np.unique(items)
    rng = np.random.default_rng(999)
    gen = torch.Generator().manual_seed(999)
    train_s, valid_s, train_cpu, valid_cpu = [], [], [], []
    for ep in range(epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        model.train()
        model.pre_epoch(ep, gen)
        perm = rng.permutation(len(users))
        for s in range(0, len(perm), 2048):
            b = perm[s:s + 2048]
            neg = None if cls.training_mode == "pairs" else torch.from_numpy(rng.choice(train_items, len(b)))
            batch = Batch(torch.from_numpy(users[b]), torch.from_numpy(items[b]), neg).to(dev)
            loss = sum(model.loss(batch, model.propagate()).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t1, c1 = time.perf_counter(), time.process_time()
        model.eval()  # as the trainer does: eval mode, no autograd graph
        with torch.no_grad():
            u, i = model.embeddings_for_eval()
        evaluate_split(h, u.detach().float().cpu().numpy(), i.detach().float().cpu().numpy(), "valid")
        t2, c2 = time.perf_counter(), time.process_time()
        train_s.append(t1 - t0)
        valid_s.append(t2 - t1)
        train_cpu.append(c1 - c0)
        valid_cpu.append(c2 - c1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    out = {"backbone": name, "build_s": round(build_s, 2), "train_s_per_epoch": round(float(np.mean(train_s)), 2),
           "valid_s_per_pass": round(float(np.mean(valid_s)), 2),
           "train_cpu_s_per_epoch": round(float(np.mean(train_cpu)), 2),
           "valid_cpu_s_per_pass": round(float(np.mean(valid_cpu)), 2), "peak_rss_mib": round(peak), "epochs": epochs,
           "threads": threads, "device": device, "train_interactions": int(len(users))}
    if dev.type == "cuda":
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default=DEFAULT, help=f"comma-separated, or 'all' ({ALL})")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mrdib-bench-backbones")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print("RESULT " + json.dumps(child(a.workdir, a.child, a.epochs, a.threads, a.device)))
        return
    prepare(a.workdir)
    rows = []
    for name in (ALL if a.backbones == "all" else a.backbones).split(","):
        p = subprocess.run([sys.executable, __file__, "--child", name, "--epochs", str(a.epochs), "--threads",
                            str(a.threads), "--device", a.device, "--workdir", str(a.workdir)],
                           capture_output=True, text=True, cwd=ROOT)
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        if p.returncode or not line:
            rows.append({"backbone": name, "error": (p.stderr.strip().splitlines() or ["?"])[-1]})
        else:
            rows.append(json.loads(line[-1][7:]))
        print(json.dumps(rows[-1]), flush=True)
    hdr = f"{'backbone':10s} {'build s':>8s} {'train s/ep':>11s} {'valid s':>8s} {'peak RSS MiB':>13s}"
    print(hdr)
    for r in rows:
        if "error" in r:
            print(f"{r['backbone']:10s} error: {r['error']}")
        else:
            print(f"{r['backbone']:10s} {r['build_s']:8.2f} {r['train_s_per_epoch']:11.2f} "
                  f"{r['valid_s_per_pass']:8.2f} {r['peak_rss_mib']:13d}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
