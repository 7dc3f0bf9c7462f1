"""Scaling section: how training-epoch time, evaluation time and peak memory grow with dataset size.

Synthetic datasets with 1x, 2x, 4x (quick) up to 16x (full) Amazon Baby's users *and* items. "Same density"
here means the same number of interactions **per user** as Baby (160,792 / 19,445 = 8.27), so interactions
grow like the users (k x) while the user-item matrix gets k times sparser; a fixed fill ratio of the matrix
would make interactions grow k^2 x and the 16x dataset would hold 41M interactions, which is not how real
catalogues grow. Each dataset is written with the project's own dataset writer and trained by the real CLI
(``mrdib train --epochs 1``) in its own subprocess, so the peak RSS is that run's own.

Backbones: LightGCN (the graph baseline every multimodal model builds on) and VBPR (the simplest multimodal
model: item = ID embedding + projection of its features) with small random features (64-d image, 64-d text):
the point is how the interaction/graph part scales, and 4096-d features would make the feature matrix
dominate memory at 16x without telling anything about the trainer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.sections._common import NODE_BUDGET

TITLE = "Scaling with dataset size"
ORDER = 50

ROOT = Path(__file__).resolve().parents[2]
BABY_USERS, BABY_ITEMS, BABY_INTERACTIONS = 19_445, 7_050, 160_792
QUICK_FACTORS, FULL_FACTORS = (1, 2, 4), (1, 2, 4, 8, 16)
#: --minibatch sampled reaches 64x; the full mode stops at 16x (one LightGCN epoch there: 743 s on one thread,
#: and it grows like size^2.3, so 64x would take hours per epoch)
SAMPLED_QUICK_FACTORS, SAMPLED_FULL_FACTORS = (1, 2, 4), (1, 4, 16, 64)
BACKBONES = ("lightgcn", "vbpr")
#: the sampled mode also covers LGMRec (its full mode is left out: slower than LightGCN's, same square law)
SAMPLED_BACKBONES = ("lightgcn", "vbpr", "lgmrec")
#: the sampled points time evaluation for this backbone only: the pass is the same exact full ranking for every
#: backbone and both modes (only the forward before it differs), and at 64x it costs minutes per backbone
EVAL_BACKBONE = "lightgcn"
#: the backbones whose steps sample a graph, measured again with a node budget (VBPR samples nothing)
BUDGET_BACKBONES = ("lightgcn", "lgmrec")
FEATURE_DIM = 64
METRICS = (("train_s_per_epoch", "training epoch (s)"), ("valid_s_per_pass", "full evaluation, valid split (s)"),
           ("peak_rss_mib", "peak RSS (MiB)"))


# --------------------------------------------------------------------------------------------- data
def _zipf(n: int, a: float, rng: np.random.Generator) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** a
    w = w[rng.permutation(n)]  # popularity unrelated to the index
    return w / w.sum()


def generate(factor: int, seed: int = 0) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """Baby-shaped interactions at ``factor`` x Baby's users and items (vectorised; no per-user loops).

    Every user and item starts with 5 interactions (a 5-core shape) and the rest are drawn from Zipf-like
    user activity and item popularity. Duplicate pairs are removed and redrawn in a few vectorised rounds.
    Split per user at random: ~10% test, ~10% valid, at least one of each (72% train overall; Baby: 74%).
    Returns (n_users, n_items, users, items, split) with split codes 0 train, 1 valid, 2 test.
    """
    rng = np.random.default_rng(seed + 1000 * factor)
    n_users, n_items, n_inter = BABY_USERS * factor, BABY_ITEMS * factor, BABY_INTERACTIONS * factor
    deg = 5 + np.bincount(rng.choice(n_users, n_inter - 5 * n_users, p=_zipf(n_users, 0.8, rng)),
                          minlength=n_users)
    pop_cdf = np.cumsum(_zipf(n_items, 0.9, rng))
    items = np.concatenate([np.repeat(np.arange(n_items), 5),
                            np.searchsorted(pop_cdf, rng.random(n_inter - 5 * n_items)).clip(0, n_items - 1)])
    rng.shuffle(items)
    keys = np.unique(np.repeat(np.arange(n_users, dtype=np.int64), deg) * n_items + items)
    for _ in range(20):  # redraw the duplicates' slots
        missing = deg - np.bincount(keys // n_items, minlength=n_users)
        if not missing.any():
            break
        u = np.repeat(np.arange(n_users, dtype=np.int64), missing)
        new = np.searchsorted(pop_cdf, rng.random(len(u))).clip(0, n_items - 1)
        keys = np.unique(np.concatenate([keys, u * n_items + new]))
    users, items = keys // n_items, keys % n_items
    # random order inside each user, then the last ~10% test, the ~10% before valid
    order = np.lexsort((rng.random(len(users)), users))
    users, items = users[order], items[order]
    d = np.bincount(users, minlength=n_users)
    start = np.concatenate([[0], np.cumsum(d)[:-1]])
    rank = np.arange(len(users)) - start[users]
    n_hold = np.maximum(1, np.rint(0.1 * d).astype(np.int64))
    split = np.zeros(len(users), np.int8)
    split[rank >= d[users] - 2 * n_hold[users]] = 1
    split[rank >= d[users] - n_hold[users]] = 2
    return n_users, n_items, users, items, split


def write_dataset(workdir: Path, factor: int, seed: int = 0) -> str:
    """Write ``scale-<factor>x`` with the project's dataset writer (+ random feature tables); returns its name."""
    from mrdib_cli.data.dataset_io import (ImportedFeature, interactions_frame, items_frame, make_card,
                                           publish_dataset, users_frame)

    name = f"scale-{factor}x"
    ds = workdir / "datasets" / name
    if (ds / "dataset.json").exists() and json.loads((ds / "dataset.json").read_text()).get(
            "source", {}).get("seed") == seed:
        return name
    n_users, n_items, users, items, split = generate(factor, seed)
    inter = interactions_frame(users, items, np.array(["train", "valid", "test"])[split])
    card = make_card(name, inter, n_users, n_items, split={"scheme": "random per user ~8:1:1", "seed": seed},
                     k_core=None, source={"kind": "synthetic scaling (benchmarks/sections/scaling.py)",
                                          "factor": factor, "seed": seed})
    rng = np.random.default_rng(seed)
    feats = [ImportedFeature(m, rng.random((n_items, FEATURE_DIM), dtype=np.float32),
                             "random (benchmarks/sections/scaling.py)", f"random-{FEATURE_DIM}")
             for m in ("image", "text")]
    publish_dataset(ds, inter, items_frame(n_items), users_frame(n_users), card, feats, replace_folder=True)
    return name


# --------------------------------------------------------------------------------------------- runs
def _spec(workdir: Path, dataset: str, **fields: Any) -> dict:
    """What makes a stored point the same measurement: the dataset (with its card's creation stamp) and ``fields``."""
    card = json.loads((workdir / "datasets" / dataset / "dataset.json").read_text())
    return {"dataset": dataset, "created": card.get("created"), **fields}


def _reuse(point: Path, spec: dict) -> dict | None:
    """The stored result of ``point`` when it was measured with ``spec`` (an interrupted run resumes)."""
    if point.exists():
        stored = json.loads(point.read_text())
        if stored.get("spec") == spec:
            return {**stored["result"], "reused": True}
    return None


def _keep(point: Path, spec: dict, res: dict) -> dict:
    point.parent.mkdir(parents=True, exist_ok=True)
    point.write_text(json.dumps({"spec": spec, "result": res}))
    return res


def train_once(workdir: Path, dataset: str, backbone: str, device: str, threads: int, seed: int) -> dict:
    """One training epoch + validation pass via the real CLI in a subprocess; its own peak RSS (os.wait4).

    The figures are also stored in the run folder (``scaling-point.json``, with the spec and the dataset
    card's creation stamp), so an interrupted ``--full`` run resumes without redoing the sizes it measured.
    """
    name = f"{dataset}-{backbone}"
    spec = _spec(workdir, dataset, backbone=backbone, device=device, threads=threads, seed=seed)
    point = workdir / "runs" / name / "scaling-point.json"
    if (stored := _reuse(point, spec)) is not None:
        return stored
    cmd = [sys.executable, "-m", "mrdib_cli", "--workdir", str(workdir), "train", "-b", backbone, "-d", dataset,
           "-n", name, "--epochs", "1", "--device", device, "--threads", str(threads), "--seed", str(seed),
           "--force"]
    wall, usage = measured(cmd, threads, f"train {backbone} on {dataset}")
    line = json.loads((workdir / "runs" / name / "metrics.jsonl").read_text().splitlines()[0])
    res = {"train_s_per_epoch": line["time"]["train_s"], "valid_s_per_pass": line["time"]["valid_s"],
           "wall_s": round(wall, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024)}
    return _keep(point, spec, res)


def measured(cmd: list[str], threads: int, what: str) -> tuple[float, Any]:
    """Run ``cmd`` (output discarded) and return its wall seconds and its own resource usage (os.wait4: the
    peak RSS is that process's, not this one's); a failure raises with its last error line."""
    env = {**os.environ, "MRDIB_NO_PROGRESS": "1", "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{what} failed: {(err.strip().splitlines() or ['?'])[-1]}")
    return time.perf_counter() - t0, usage


def sampled_epoch(workdir: Path, dataset: str, backbone: str, threads: int, seed: int, evaluate: bool = False,
                  budget: int = 0) -> dict:
    """One ``--minibatch sampled`` training epoch (``benchmarks/scaling_epoch.py``; with ``evaluate``, then one
    full-ranking validation pass, timed apart; with ``budget``, under that ``--node-budget``) in a subprocess;
    stored beside the run like :func:`train_once`'s points."""
    name = f"{dataset}-{backbone}-sampled" + (f"-budget{budget}" if budget else "")
    point = workdir / "runs" / f"{name}.json"
    spec = _spec(workdir, dataset, backbone=backbone, threads=threads, seed=seed, minibatch="sampled",
                 evaluate=evaluate, **({"node_budget": budget} if budget else {}))
    if (stored := _reuse(point, spec)) is not None:
        return stored
    cmd = [sys.executable, str(ROOT / "benchmarks" / "scaling_epoch.py"), str(workdir), dataset, backbone,
           "--minibatch", "sampled", "--threads", str(threads), "--seed", str(seed), "--node-budget", str(budget)
           ] + (["--eval"] if evaluate else [])
    env = {**os.environ, "MRDIB_NO_PROGRESS": "1", "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sampled epoch of {backbone} on {dataset} failed: "
                           f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return _keep(point, spec, json.loads(proc.stdout.strip().splitlines()[-1]))


def variant_label(backbone: str, budget: int) -> str:
    """How a sampled point is named in the tables: the backbone, and its node budget when it has one."""
    return f"{backbone}, node budget {budget}" if budget else backbone


def run_sampled(ctx, ws: Path, seed: int) -> dict:
    """The sampled-mode points (1x..64x in full mode) and their fitted exponents."""
    factors = SAMPLED_QUICK_FACTORS if ctx.mode == "quick" else SAMPLED_FULL_FACTORS
    if os.environ.get("MRDIB_SCALING_SAMPLED_FACTORS"):
        factors = tuple(int(f) for f in os.environ["MRDIB_SCALING_SAMPLED_FACTORS"].split(","))
    rows = []
    for f in factors:
        ds = write_dataset(ws, f)
        card = json.loads((ws / "datasets" / ds / "dataset.json").read_text())
        variants = [(b, 0) for b in SAMPLED_BACKBONES] + [(b, NODE_BUDGET) for b in BUDGET_BACKBONES]
        for b, budget in variants:
            r = sampled_epoch(ws, ds, b, ctx.threads, seed, evaluate=b == EVAL_BACKBONE and not budget,
                              budget=budget)
            label = variant_label(b, budget)
            ctx.log(f"scaling (sampled): {ds} {label}: train {r['train_s_per_epoch']:.1f} s/epoch, "
                    f"peak RSS {r['peak_rss_mib']} MiB"
                    + (f", valid pass {r['valid_s_per_pass']:.1f} s" if "valid_s_per_pass" in r else ""))
            rows.append({"factor": f, "backbone": label, "n_interactions": card["n_interactions"],
                         "n_users": card["n_users"], "n_items": card["n_items"], **r})
    labels = list(dict.fromkeys(r["backbone"] for r in rows))
    exps = {b: {m: fit_exponent([r["factor"] for r in rows if r["backbone"] == b],
                                [r[m] for r in rows if r["backbone"] == b])
                for m in ("train_s_per_epoch", "train_cpu_s", "peak_rss_mib", "valid_s_per_pass")
                if all(m in r for r in rows if r["backbone"] == b)} for b in labels}
    return {"factors": list(factors), "rows": rows, "exponents": exps, "eval_backbone": EVAL_BACKBONE,
            "graph": graph_point(ctx, ws, factors[-1])}


def graph_point(ctx, ws: Path, largest: int) -> dict:
    """``mrdib build-graph`` at the largest sampled size (MRDIB_SCALING_GRAPH_FACTOR names another)."""
    gf = int(os.environ.get("MRDIB_SCALING_GRAPH_FACTOR", largest))
    graph = build_graph_point(ws, write_dataset(ws, gf), ctx.threads)
    ctx.log(f"scaling: build-graph at {gf}x: {graph['wall_s']:.0f} s, peak RSS {graph['peak_rss_mib']} MiB")
    return {"factor": gf, **graph}


def build_graph_point(workdir: Path, dataset: str, threads: int) -> dict:
    """``mrdib build-graph`` (user-item adjacency and both modalities' item-item kNN graphs, blockwise) in a
    subprocess: wall and CPU seconds and its peak RSS; stored like the other points."""
    point = workdir / "runs" / f"{dataset}-build-graph.json"
    spec = _spec(workdir, dataset, threads=threads)
    if (stored := _reuse(point, spec)) is not None:
        return stored
    cmd = [sys.executable, "-m", "mrdib_cli", "--workdir", str(workdir), "build-graph", "-d", dataset, "--force"]
    wall, usage = measured(cmd, threads, f"build-graph on {dataset}")
    return _keep(point, spec, {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                               "peak_rss_mib": round(usage.ru_maxrss / 1024)})


def fit_exponent(x: Any, y: Any) -> float:
    """Least-squares slope of log(y) on log(x): cost ~ size^exponent."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    return float(np.polyfit(lx, ly, 1)[0])


def run(ctx) -> dict:
    factors = QUICK_FACTORS if ctx.mode == "quick" else FULL_FACTORS
    if os.environ.get("MRDIB_SCALING_FACTORS"):  # e.g. "1,2,4,8": a shorter full run (stated on the page)
        factors = tuple(int(f) for f in os.environ["MRDIB_SCALING_FACTORS"].split(","))
    ws = Path(ctx.workdir) / "ws"
    seed = ctx.seeds[0]
    if os.environ.get("MRDIB_SCALING_PARTS") == "graph":
        return keep_all_but_graph(ctx, graph_point(ctx, ws, SAMPLED_FULL_FACTORS[-1]))
    sampled = run_sampled(ctx, ws, seed) if ctx.device == "cpu" else None
    if os.environ.get("MRDIB_SCALING_PARTS") == "sampled":
        return keep_full_part(ctx, sampled)
    rows = []
    for f in factors:
        t = time.perf_counter()
        ds = write_dataset(ws, f)
        card = json.loads((ws / "datasets" / ds / "dataset.json").read_text())
        ctx.log(f"scaling: {ds} ({card['n_users']:,} users, {card['n_items']:,} items, "
                f"{card['n_interactions']:,} interactions) written in {time.perf_counter() - t:.1f} s")
        for b in BACKBONES:
            r = train_once(ws, ds, b, ctx.device, ctx.threads, seed)
            ctx.log(f"scaling: {ds} {b}: train {r['train_s_per_epoch']:.1f} s/epoch, valid "
                    f"{r['valid_s_per_pass']:.1f} s, peak RSS {r['peak_rss_mib']} MiB"
                    + (" (stored from an earlier run)" if r.get("reused") else ""))
            rows.append({"factor": f, "backbone": b, "n_users": card["n_users"], "n_items": card["n_items"],
                         "n_interactions": card["n_interactions"], "train_interactions": card["split_sizes"]["train"],
                         **r})
    exps = {b: {m: fit_exponent([r["factor"] for r in rows if r["backbone"] == b],
                                [r[m] for r in rows if r["backbone"] == b]) for m, _ in METRICS}
            for b in BACKBONES}
    res = {"factors": list(factors), "backbones": list(BACKBONES), "feature_dim": FEATURE_DIM, "rows": rows,
           "exponents": exps, "device": ctx.device, "threads": ctx.threads, "seed": seed, "mode": ctx.mode,
           "figures": [], "sampled": sampled}
    fig = plot(res, Path(ctx.out_dir) / "scaling-loglog.png")
    res["figures"].append(fig)
    return res


def _stored(ctx) -> tuple[dict, dict]:
    """The stored section's result, and the run it came from (date, commit, CPU)."""
    stored = json.loads((Path(ctx.out_dir) / "scaling.json").read_text())
    return stored["result"], {k: stored["meta"].get(k) for k in ("date", "commit", "cpu")}


def keep_full_part(ctx, sampled: dict | None) -> dict:
    """``MRDIB_SCALING_PARTS=sampled``: measure the sampled points only and keep the stored full-mode rows (the
    full mode's 16x point alone costs a quarter of an hour); the page names the run they come from."""
    res, origin = _stored(ctx)
    # a page already rebuilt this way names the run its full-mode rows come from; its own meta is that rebuild's
    res = {k: v for k, v in res.items() if k != "sampled_from"}
    return {**res, "sampled": sampled, "full_from": res.get("full_from") or origin}


def keep_all_but_graph(ctx, graph: dict) -> dict:
    """``MRDIB_SCALING_PARTS=graph``: measure ``mrdib build-graph`` only (at 64x: minutes) and keep every stored
    training row (hours); the page names the runs those rows come from."""
    res, origin = _stored(ctx)
    return {**res, "sampled": {**res["sampled"], "graph": graph}, "full_from": res.get("full_from") or origin,
            "sampled_from": res.get("sampled_from") or origin}


def plot(res: dict, path: Path) -> str:
    """Three log-log panels (epoch, evaluation, memory) with one fitted line per backbone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (m, label) in zip(axes, METRICS):
        for b in res["backbones"]:
            pts = [r for r in res["rows"] if r["backbone"] == b]
            x = np.array([r["factor"] for r in pts], float)
            y = np.array([r[m] for r in pts], float)
            slope, icpt = np.polyfit(np.log(x), np.log(y), 1)
            line = ax.loglog(x, y, "o", label=f"{b}: exponent {slope:.2f}")[0]
            ax.loglog(x, np.exp(icpt) * x ** slope, "-", color=line.get_color(), alpha=0.6)
        ax.set_xlabel("size (x Baby users and items)")
        ax.set_title(label)
        ax.set_xticks(res["factors"], [str(f) for f in res["factors"]])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_locator(LogLocator(subs=(2, 5)))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    from benchmarks.sections._common import save_figure

    return save_figure(fig, path)


def render(res: dict) -> str:
    dev = "GPU (cuda)" if res["device"] == "cuda" else f"CPU, {res['threads']} torch thread(s)"
    full = list(FULL_FACTORS if res["mode"] == "full" else QUICK_FACTORS)
    quick = (" Quick mode: sizes 1x, 2x and 4x only (`--full` goes to 16x)." if res["mode"] == "quick" else "")
    if res["factors"] != full:
        quick = (f" Sizes set by MRDIB_SCALING_FACTORS ({res['mode']} mode runs "
                  f"{', '.join(f'{f}x' for f in full)}).")
    out = [
        f"Synthetic Baby-shaped datasets at {', '.join(f'{f}x' for f in res['factors'])} Amazon Baby's users "
        f"and items ({BABY_USERS:,} x {BABY_ITEMS:,} at 1x).{quick} *Same density* = the same interactions per "
        "user as Baby (8.27), so interactions grow like the users and the user-item matrix gets sparser. "
        f"Each point: one `mrdib train --epochs 1` subprocess on {dev}, seed {res['seed']}; training epoch = "
        "BPR, batch 2048, one negative per positive, MMRec protocol; evaluation = one full-ranking pass over the "
        "valid split (all items, train masked); peak RSS of that process. Backbones: LightGCN (graph baseline) "
        f"and VBPR with small random {res['feature_dim']}-d image and text features (the interaction side is "
        "what scales). Exponent = least-squares slope on log-log axes (cost ~ size^exponent).",
        "",
        "| size | users | items | interactions | backbone | train s/epoch | eval s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        out.append(f"| {r['factor']}x{' *' if r.get('reused') else ''} | {r['n_users']:,} | {r['n_items']:,} | {r['n_interactions']:,} | "
                   f"{r['backbone']} | {r['train_s_per_epoch']:.2f} | {r['valid_s_per_pass']:.2f} | "
                   f"{r['peak_rss_mib']:,} |")
    if any(r.get("reused") for r in res["rows"]):
        out += ["", "\\* measured by an earlier run with the same dataset, backbone, device, threads and seed "
                "(stored in its run folder; delete the workdir for fresh timings)."]
    out += ["", "| backbone | exponent: train epoch | exponent: evaluation | exponent: peak RSS |", "|---|---|---|---|"]
    for b, e in res["exponents"].items():
        out.append(f"| {b} | {e['train_s_per_epoch']:.2f} | {e['valid_s_per_pass']:.2f} | "
                   f"{e['peak_rss_mib']:.2f} |")
    out += ["", "Why: an epoch has one batch per 2048 train interactions (grows like the size) and each batch runs a "
            "forward over all users and items (LightGCN: the whole graph; VBPR: every item's feature "
            "projection), so an epoch is expected to approach exponent 2. Full-ranking evaluation scores every "
            "evaluated user against every item (also ~2 asymptotically); at small sizes its fixed costs (masks, "
            "embedding export) lower the fitted slope. Peak RSS includes the ~1 GB baseline of a Python process "
            "with torch loaded, which dominates the small sizes."]
    if res.get("full_from"):
        again = ("the build-graph point below was measured again (`MRDIB_SCALING_PARTS=graph`)"
                 if res.get("sampled_from") else
                 "the sampled part below was measured again (`MRDIB_SCALING_PARTS=sampled`)")
        out += ["", f"The full-mode rows above are from the run of {_run_of(res['full_from'])}; {again}."]
    out += render_sampled(res.get("sampled"), res["threads"], res.get("sampled_from"))
    out += [f"\n![Scaling on log-log axes](results/{f})" for f in res.get("figures", [])]
    return "\n".join(out)


def _run_of(origin: dict) -> str:
    return f"{origin['date']} ({origin['cpu']}, commit {origin['commit']})"


def render_sampled(sampled: dict | None, threads: int, sampled_from: dict | None = None) -> list[str]:
    """The ``--minibatch sampled`` table up to 64x: train epoch, one evaluation pass (one backbone), peak RSS;
    their exponents; the graph build at the largest size."""
    if not sampled:
        return []
    ev = sampled.get("eval_backbone")
    out = ["", f"**`--minibatch sampled`** (fan-out 10, the defaults; CPU, {threads} thread(s)): one training "
           "epoch (`benchmarks/scaling_epoch.py`), peak RSS of that process after it; the rows named with a node "
           "budget add `--node-budget N` (each hop adds at most N nodes to a step's neighbourhood)"
           + (f"; for {ev}, then one full-ranking pass over the valid split (the trainer's per-epoch validation: "
              "the full forward, exact ranking over every item, train masked) and the peak RSS after it. The pass "
              "is the same exact ranking for every backbone and both modes" if ev else "")
           + ". The full mode above stops at 16x: it grows like size^2 and 64x would take hours per epoch here.", "",
           "| size | users | items | interactions | backbone | train s/epoch | train CPU s/epoch | peak RSS MiB "
           "| eval s | peak RSS with eval MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sampled["rows"]:
        users = f"{r['n_users']:,}" if "n_users" in r else "-"
        items = f"{r['n_items']:,}" if "n_items" in r else "-"
        out.append(f"| {r['factor']}x | {users} | {items} | {r['n_interactions']:,} | {r['backbone']} | "
                   f"{r['train_s_per_epoch']:.2f} | {r['train_cpu_s']:.2f} | {r['peak_rss_mib']:,} | "
                   + (f"{r['valid_s_per_pass']:.1f} | {r['peak_rss_eval_mib']:,} |" if "valid_s_per_pass" in r
                      else "- | - |"))
    out += ["", "| backbone | exponent: train epoch (s) | exponent: train epoch (CPU s) | exponent: peak RSS "
            "| exponent: evaluation |", "|---|---|---|---|---|"]
    for b, e in sampled["exponents"].items():
        ex = f"{e['valid_s_per_pass']:.2f}" if "valid_s_per_pass" in e else "-"
        out.append(f"| {b} | {e['train_s_per_epoch']:.2f} | {e['train_cpu_s']:.2f} | {e['peak_rss_mib']:.2f} | {ex} |")
    if sampled_from:
        out += ["", f"The sampled rows above are from the run of {_run_of(sampled_from)}."]
    g = sampled.get("graph")
    if g:
        out += ["", f"`mrdib build-graph` at {g['factor']}x (user-item adjacency and the image and text item-item "
                f"kNN graphs, k = 10, blockwise exact cosine): {g['wall_s']:.0f} s wall, {g['cpu_s']:.0f} CPU s, "
                f"peak RSS {g['peak_rss_mib']:,} MiB."
                + (f" Not measured at {sampled['factors'][-1]}x (MRDIB_SCALING_GRAPH_FACTOR): exact kNN compares every "
                   "pair of items, so its time grows like items^2 (x16 from 16x to 64x) while its memory stays "
                   "bounded by the block." if g["factor"] != sampled["factors"][-1] else "")]
    out += ["", "CPU seconds are the process's own: on a shared machine they move far less than wall seconds. "
            "Evaluation scores every user against every item, so it grows like users x items (exponent ~2): "
            "it is streamed in user batches, so its memory stays bounded, but its time is the cost of exact "
            "full ranking."]
    return out
