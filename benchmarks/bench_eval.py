#!/usr/bin/env python
"""Benchmark of the evaluation engine (issue #4). Prints figures; asserts nothing about time.

1. Amazon-Baby-sized problem (19,445 users x 7,050 items, d=64, ~6 train items/user masked, ~1.3 test items/
   user): our full test evaluation (all metrics at K=10,20) vs a straightforward PyTorch reference measured
   side by side in the same process: score matrix per 4096-user batch, train items set to -1e10,
   ``torch.topk(50)``, hit lists built with a Python loop per user and metrics per user, as MMRec does.
   Both sides get the same threads; metric agreement between them is printed as a correctness check.
2. Synthetic 1,000,000 users x 100,000 items (d=64): wall time and peak resident memory of a full
   evaluation, measured in a fresh subprocess so the peak is that of the evaluation alone (plus its data).

Usage::

    python benchmarks/bench_eval.py                 # both parts
    python benchmarks/bench_eval.py --skip-large    # Baby-sized part only
    python benchmarks/bench_eval.py --large-users 200000   # subsample of the 1M users (printed clearly)
    python benchmarks/bench_eval.py --skip-large --json   # last line: the Baby figures as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


# --------------------------------------------------------------------------------------------- data
def synthetic(n_users: int, n_items: int, d: int, train_mean: float, test_mean: float, seed: int,
              chunk: int = 200_000):
    """Popularity-skewed interactions and embeddings correlated with them (so masked items crowd the top).

    Train items per user: 3 + a heavy-tailed count (5-core-like), mean ~``train_mean``; test items >= 1.
    User embeddings are the mean of their train items' embeddings plus noise, as a trained model's would
    roughly be, which makes the train mask matter for the top-K (random embeddings would not stress it).
    """
    rng = np.random.default_rng(seed)
    item = rng.standard_normal((n_items, d), dtype=np.float32)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    pop /= pop.sum()
    pop_cdf = np.cumsum(pop)

    def draw(counts: np.ndarray) -> sp.csr_matrix:
        rows = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        cols = np.searchsorted(pop_cdf, rng.random(len(rows))).clip(0, n_items - 1)
        perm = rng.permutation(n_items)  # decouple popularity from item index
        m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, perm[cols])), shape=(len(counts), n_items))
        m.sum_duplicates()
        m.data[:] = 1
        return m

    extra = np.minimum(rng.geometric(1.0 / max(train_mean - 2.0, 1.01), n_users) - 1, 400)
    train = draw(3 + extra)
    test = draw(1 + rng.poisson(max(test_mean - 1.0, 0.0), n_users))
    test = sp.csr_matrix(test - test.multiply(train))
    test.eliminate_zeros()
    user = np.empty((n_users, d), np.float32)
    deg = np.maximum(np.diff(train.indptr), 1).astype(np.float32)[:, None]
    for s in range(0, n_users, chunk):  # bounded memory for the 1M case
        e = min(n_users, s + chunk)
        user[s:e] = (train[s:e] @ item) / deg[s:e] + 0.5 * rng.standard_normal((e - s, d), dtype=np.float32)
    return user, item, train, test


def real_baby(d: int, seed: int):
    """The real Amazon Baby 5-core LATTICE split from ../shared/data (train mask and test truth as published),
    with embeddings correlated with train as in :func:`synthetic`; None when the data is absent."""
    root = Path(os.environ.get("MRDIB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    base = root / "amazon2014-baby-5core" / "lattice"
    if not (base / "train.json").exists():
        return None

    def csr(name: str, n_users: int = 19_445, n_items: int = 7_050) -> sp.csr_matrix:
        data = json.loads((base / f"{name}.json").read_text())
        rows = np.concatenate([np.full(len(v), int(u)) for u, v in data.items()]).astype(np.int64)
        cols = np.concatenate([np.asarray(v, np.int64) for v in data.values()])
        m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
        m.sum_duplicates()
        m.data[:] = 1
        return m

    train, test = csr("train"), csr("test")
    rng = np.random.default_rng(seed)
    item = rng.standard_normal((train.shape[1], d), dtype=np.float32)
    deg = np.maximum(np.diff(train.indptr), 1).astype(np.float32)[:, None]
    user = (train @ item) / deg + 0.5 * rng.standard_normal((train.shape[0], d), dtype=np.float32)
    return np.ascontiguousarray(user, dtype=np.float32), item, train, test


# --------------------------------------------------------------------------------------------- reference
def torch_reference(user: np.ndarray, item: np.ndarray, train: sp.csr_matrix, test: sp.csr_matrix,
                    ks=(10, 20), topk: int = 50, batch: int = 4096,
                    device: str = "cpu") -> tuple[dict[str, float], float]:
    """MMRec-style evaluation: dense scores per batch, -1e10 mask, torch.topk(50), per-user Python loops."""
    import torch

    dev = torch.device(device)

    users = np.flatnonzero(np.diff(test.indptr) > 0)
    # the mask (user, item) pairs of each batch, prepared outside the timed region (MMRec's data loader
    # precomputes them too), so the reference is not penalised for data preparation
    batches = []
    for s in range(0, len(users), batch):
        ub = users[s:s + batch]
        coo = train[ub].tocoo()
        batches.append((torch.from_numpy(ub).to(dev), torch.from_numpy(coo.row.astype(np.int64)).to(dev),
                        torch.from_numpy(coo.col.astype(np.int64)).to(dev)))
    pos_items = [set(test.indices[test.indptr[u]:test.indptr[u + 1]].tolist()) for u in users]
    U, I = torch.from_numpy(user).to(dev), torch.from_numpy(item).to(dev)
    t0 = time.perf_counter()
    with torch.no_grad():
        tops = []
        for ub, r, c in batches:
            scores = U[ub] @ I.T
            scores[r, c] = -1e10
            tops.append(torch.topk(scores, topk, dim=-1)[1])
        top = torch.cat(tops).cpu().numpy()
    rec = {f"{m}@{k}": [] for m in ("recall", "ndcg", "precision", "map", "hit") for k in ks}
    for pos, row in zip(pos_items, top):  # MMRec: bool_rec_matrix built with a Python loop per user
        hits = [1.0 if int(i) in pos else 0.0 for i in row]
        n = len(pos)
        for k in ks:
            h = hits[:k]
            nh = sum(h)
            dcg = sum(x / np.log2(j + 2) for j, x in enumerate(h))
            idcg = sum(1.0 / np.log2(j + 2) for j in range(min(n, k)))
            cum, ap = 0.0, 0.0
            for j, x in enumerate(h):
                cum += x
                ap += (cum / (j + 1)) * x
            rec[f"recall@{k}"].append(nh / n)
            rec[f"ndcg@{k}"].append(dcg / idcg)
            rec[f"precision@{k}"].append(nh / k)
            rec[f"map@{k}"].append(ap / min(n, k))
            rec[f"hit@{k}"].append(1.0 if nh > 0 else 0.0)
    elapsed = time.perf_counter() - t0
    return {k: float(np.mean(v)) for k, v in rec.items()}, elapsed


# --------------------------------------------------------------------------------------------- parts
def baby(repeats: int, threads: int | None, synthetic_only: bool = False, device: str = "cpu") -> dict:
    """Prints the comparison and returns its figures (medians over ``repeats``)."""
    import faiss
    import torch

    from mrdib_cli.cpu import auto_threads
    from mrdib_cli.evaluation.engine import Prepared, evaluate

    ours_threads = threads or auto_threads(faiss.omp_get_max_threads())
    torch.set_num_threads(ours_threads)  # same threads on both sides
    n_users, n_items, d = 19_445, 7_050, 64
    t = time.perf_counter()
    data = None if synthetic_only else real_baby(d, seed=0)
    what = "real Amazon Baby LATTICE split (train masked, test truth)" if data else "synthetic Baby-sized data"
    user, item, train, test = data or synthetic(n_users, n_items, d, train_mean=6.0, test_mean=1.3, seed=0)
    print(f"{what}: {n_users} users x {n_items} items, d={d}; train mask {train.nnz} "
          f"({train.nnz / n_users:.2f}/user, max {np.diff(train.indptr).max()}), test {test.nnz} "
          f"({int((np.diff(test.indptr) > 0).sum())} users evaluated); built in {time.perf_counter() - t:.1f} s; "
          f"threads: ours {ours_threads}{'' if threads else ' (auto)'}, reference {torch.get_num_threads()}; "
          f"CPU cores={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    evaluate(user, item, test, train, ks=(10, 20), threads=threads)  # warm-up (OpenMP pools, page faults)
    ours_cold, ours_warm, refs, cpu = [], [], [], {"cold": [], "warm": [], "ref": []}
    prep = Prepared.build(test, train)
    for _ in range(repeats):  # interleaved so that machine load affects both sides alike
        t, c = time.perf_counter(), time.process_time()
        res = evaluate(user, item, test, train, ks=(10, 20), threads=threads)
        ours_cold.append(time.perf_counter() - t)
        cpu["cold"].append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        evaluate(user, item, prep, ks=(10, 20), threads=threads)
        ours_warm.append(time.perf_counter() - t)
        cpu["warm"].append(time.process_time() - c)
        c = time.process_time()
        ref_m, ref_t = torch_reference(user, item, train, test, device=device)
        cpu["ref"].append(time.process_time() - c)
        refs.append(ref_t)
    diff = max(abs(res.metrics[k] - ref_m[k]) for k in ref_m)
    oc, ow, rf = (float(np.median(x)) for x in (ours_cold, ours_warm, refs))
    print(f"  ours (cold: builds truth/mask)   median {oc:.3f} s  (runs: {', '.join(f'{x:.3f}' for x in ours_cold)})")
    print(f"  ours (warm: per-epoch, cached)   median {ow:.3f} s  (runs: {', '.join(f'{x:.3f}' for x in ours_warm)})")
    print(f"  PyTorch/MMRec-style reference    median {rf:.3f} s  (runs: {', '.join(f'{x:.3f}' for x in refs)})")
    cc, cw, cr = (float(np.median(cpu[x])) for x in ("cold", "warm", "ref"))
    print(f"  CPU time (all threads) medians: ours cold {cc:.3f} s, warm {cw:.3f} s, reference {cr:.3f} s "
          f"(includes the reference's untimed mask preparation); load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    print(f"  speed-up: {rf / oc:.1f}x (cold), {rf / ow:.1f}x (warm); fallback rows {res.n_fallback}; "
          f"max |metric difference| vs reference {diff:.2e}")
    print(f"  ours: recall@20={res.metrics['recall@20']:.4f} ndcg@20={res.metrics['ndcg@20']:.4f}; "
          f"reference: recall@20={ref_m['recall@20']:.4f} ndcg@20={ref_m['ndcg@20']:.4f}")
    print(f"  breakdown of the last cold run: {res.timing}")
    return {"data": what, "n_users": n_users, "n_items": n_items, "d": d, "train_nnz": int(train.nnz),
            "users_evaluated": int(res.n_users), "threads": ours_threads, "repeats": repeats,
            "reference_device": device, "ours_cold_s": round(oc, 4), "ours_warm_s": round(ow, 4),
            "reference_s": round(rf, 4), "speedup_cold": round(rf / oc, 2), "speedup_warm": round(rf / ow, 2),
            "max_abs_metric_diff": float(diff), "fallback_rows": int(res.n_fallback),
            "ours": {k: float(res.metrics[k]) for k in ref_m}, "reference": ref_m}


def large_child(n_users: int, n_items: int, threads: int | None, batch: int) -> None:
    """Runs in a fresh process: generate, evaluate, print one JSON line with time and peak RSS."""
    from mrdib_cli.evaluation.engine import evaluate

    t = time.perf_counter()
    user, item, train, test = synthetic(n_users, n_items, 64, train_mean=6.0, test_mean=1.3, seed=1)
    gen_s = time.perf_counter() - t
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t, c = time.perf_counter(), time.process_time()
    done = [0]
    last = [time.perf_counter()]

    def tick(n: int) -> None:
        done[0] += n
        if time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            print(f"    ... {done[0]:,} users evaluated ({time.perf_counter() - t:.0f} s)", file=sys.stderr,
                  flush=True)

    res = evaluate(user, item, test, train, ks=(10, 20), batch_users=batch, on_batch=tick, threads=threads)
    eval_s = time.perf_counter() - t
    cpu_s = time.process_time() - c
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"n_users": n_users, "n_items": n_items, "evaluated": res.n_users, "train_nnz": int(train.nnz),
                      "gen_s": gen_s, "eval_s": eval_s, "cpu_s": cpu_s, "load": os.getloadavg()[0], "peak_rss_gib": peak, "rss_after_data_gib": rss_data,
                      "timing": res.timing, "fallback": res.n_fallback, "recall@20": res.metrics["recall@20"]}))


def large(n_users: int, threads: int | None, batch: int) -> None:
    n_items = 100_000
    note = "" if n_users == 1_000_000 else f"  ** SUBSAMPLE: {n_users:,} of 1,000,000 users **"
    print(f"Synthetic {n_users:,} users x {n_items:,} items (d=64, ~6 train items/user masked), "
          f"batch {batch} users, threads={threads or 'auto'}{note}")
    p = subprocess.run([sys.executable, __file__, "--large-child", str(n_users), "--batch-users", str(batch)]
                       + (["--threads", str(threads)] if threads else []), stdout=subprocess.PIPE, text=True)  # progress: stderr
    if p.returncode:
        print(f"  failed (exit {p.returncode})")
        return
    r = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"  data generation {r['gen_s']:.1f} s; evaluation of {r['evaluated']:,} users: {r['eval_s']:.1f} s wall, "
          f"{r['cpu_s']:.1f} s CPU (load average {r['load']:.1f} on {os.cpu_count()} cores) ({r['timing']})")
    print(f"  peak RSS {r['peak_rss_gib']:.2f} GiB for the whole process (data alone: "
          f"{r['rss_after_data_gib']:.2f} GiB); fallback rows {r['fallback']}; recall@20={r['recall@20']:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="FAISS threads [auto: free cores]")
    ap.add_argument("--batch-users", type=int, default=4096)
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--skip-baby", action="store_true")
    ap.add_argument("--synthetic", action="store_true", help="Baby-sized synthetic data even if the real split "
                                                              "is available")
    ap.add_argument("--large-users", type=int, default=1_000_000)
    ap.add_argument("--device", default="cpu", help="device of the PyTorch reference (ours: FAISS on CPU)")
    ap.add_argument("--json", action="store_true", help="print the Baby figures as one JSON line (last line)")
    ap.add_argument("--large-child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.large_child is not None:
        large_child(a.large_child, 100_000, a.threads, a.batch_users)
        return
    if not a.skip_baby:
        figures = baby(a.repeats, a.threads, a.synthetic, a.device)
        if a.json:
            print(json.dumps(figures))
    if not a.skip_large:
        large(a.large_users, a.threads, a.batch_users)


if __name__ == "__main__":
    main()
