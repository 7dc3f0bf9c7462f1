"""Backbone vs backbone+plug-in over several splits: mean ± std of test metrics and a pooled paired test.

`mrdib compare` pairs users within one dataset (one split). A dataset with one test item per user (Amazon
Scientific) is noisy on a single split, so issue #6 asks for several splits with the per-user results
pooled: here each (split, user) is one pair, the per-user rows of every split are concatenated and tested
with the project's own paired tests (`evaluation.significance.paired_tests`).

    python benchmarks/pool_splits.py -w WORKDIR --pair BASE_RUN:NEW_RUN --pair ... [--metric recall@20 ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl

from mrdib_cli.evaluation.significance import paired_tests

METRICS = ["recall@10", "recall@20", "ndcg@10", "ndcg@20"]


def load(runs: Path, name: str) -> tuple[dict, pl.DataFrame, str]:
    """Saved test metrics, per-user rows and dataset digest of one run (the trainer's default protocol)."""
    d = runs / name
    res = json.loads((d / "eval-test.json").read_text())
    cfg = json.loads((d / "config.json").read_text())
    return res["metrics"], pl.read_parquet(d / "per_user-test.parquet"), cfg["dataset_digest"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-w", "--workdir", required=True)
    ap.add_argument("--pair", action="append", required=True, help="BASE_RUN:NEW_RUN (same dataset)")
    ap.add_argument("--metric", action="append", default=None)
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args()
    runs = Path(args.workdir) / "runs"
    metrics = args.metric or METRICS
    per_a, per_b, rows = [], [], []
    for p in args.pair:
        a, b = p.split(":")
        ma, ua, da = load(runs, a)
        mb, ub, db = load(runs, b)
        if da != db:
            raise SystemExit(f"{a} and {b} were trained on different datasets; pair runs of one split")
        j = ua.select(["user_idx", *metrics]).join(ub.select(["user_idx", *metrics]), on="user_idx",
                                                     suffix="__b")
        per_a.append(j.select(metrics).to_numpy())
        per_b.append(j.select([f"{m}__b" for m in metrics]).to_numpy())
        rows.append({"base": a, "new": b, "base_metrics": {m: ma[m] for m in metrics},
                     "new_metrics": {m: mb[m] for m in metrics}})
    A, B = np.concatenate(per_a), np.concatenate(per_b)
    out = {"pairs": rows, "metrics": {}}
    print(f"{len(rows)} splits, {A.shape[0]} pooled (split, user) pairs")
    print(f"{'metric':10s} {'base mean±std':>18s} {'new mean±std':>18s} {'diff':>8s} {'rel':>7s} "
          f"{'p_t':>9s} {'p_wilcoxon':>10s}")
    for k, m in enumerate(metrics):
        va = np.array([r["base_metrics"][m] for r in rows])
        vb = np.array([r["new_metrics"][m] for r in rows])
        t = paired_tests(A[:, k], B[:, k])
        sd = (lambda v: float(v.std(ddof=1)) if len(v) > 1 else float("nan"))
        out["metrics"][m] = {"base_mean": float(va.mean()), "base_std": sd(va), "new_mean": float(vb.mean()),
                             "new_std": sd(vb), "pooled_test": t.to_dict()}
        print(f"{m:10s} {va.mean():.4f} ± {sd(va):.4f}  {vb.mean():.4f} ± {sd(vb):.4f} "
              f"{vb.mean() - va.mean():+.4f} {(vb.mean() - va.mean()) / va.mean():+7.1%} "
              f"{t.p_ttest:9.2g} {t.p_wilcoxon:10.2g}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
