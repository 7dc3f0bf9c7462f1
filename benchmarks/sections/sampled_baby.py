"""Amazon Baby: `--minibatch sampled` against the full-graph mode (LightGCN and LGMRec), same seeds.

The sampled mode estimates each step's neighbourhoods from fan-out samples and updates the tables with a lazy
Adam, so it is close to, not equal to, the full mode; this section measures how close on real interactions.
Data: the LATTICE split of the Baby 5-core (the shared data folder), imported with ``mrdib import lattice``.
The shared data holds Baby's interactions only, so LGMRec reads random 64-d image and text tables (seeded,
imported with ``mrdib features import``): the same tables in both modes, so the comparison measures the
training mode, not the features. Every run uses its backbone's defaults and MMRec's protocol (early stopping
on valid Recall@20, test at the best-validation epoch).

LGMRec is capped at ``LGMREC_EPOCH_CAP`` epochs in both modes: a full-mode LGMRec epoch costs about 47 s on one
thread of the development machine, so three seeds to early stopping would take hours. The table says so and
compares the two modes under the same cap. Raising the cap continues the stored runs (``--resume``, which ends
where one run trained with the new cap would) instead of training them again.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from benchmarks.sections._common import (NODE_BUDGET, Context, TrainSpec, cli, fmt_mean_std, md_table, paired,
                                         train_many)
from benchmarks.sections.quality_baby import data_dir

TITLE = "Amazon Baby: the sampled mode against the full-graph mode"
ORDER = 21

DATASET = "baby-rand64"
BACKBONES = ("lgmrec", "lightgcn")  # the slow one first, so two slots finish together
#: how each mode trains: MMRec's full-graph step, fan-out neighbourhoods, and the same with a node budget
MODE_ARGS = {"full": ["--minibatch", "full"], "sampled": ["--minibatch", "sampled"],
             "budget": ["--minibatch", "sampled", "--node-budget", str(NODE_BUDGET)]}
MODES = tuple(MODE_ARGS)
LABELS = {"full": "full", "sampled": "sampled", "budget": f"sampled, node budget {NODE_BUDGET}"}
FEATURE_DIM, FEATURE_SEED = 64, 0
#: epochs LGMRec may train in either mode (full mode: ~47 s per epoch here; LightGCN trains to early stopping)
LGMREC_EPOCH_CAP = 100
QUICK_EPOCHS = 3
TOLERANCE = 0.03  # the acceptance: sampled within 3% of full on test Recall@20


def epoch_cap(ctx: Context, backbone: str) -> int | None:
    if ctx.quick:
        return QUICK_EPOCHS
    return LGMREC_EPOCH_CAP if backbone == "lgmrec" else None


def specs(ctx: Context) -> list[tuple[str, TrainSpec]]:
    """(mode, run) for every backbone, mode and seed."""
    out = []
    for b in BACKBONES:
        cap = epoch_cap(ctx, b)
        for mode, margs in MODE_ARGS.items():
            args = margs + (["--epochs", str(cap)] if cap else [])
            out += [(mode, TrainSpec(DATASET, b, s, f"mb-baby-{b}-{mode}-{ctx.mode}-s{s}", None, args))
                    for s in ctx.seeds]
    return out


def _import(ctx: Context) -> None:
    """The LATTICE split as DATASET, with seeded random feature tables (rewritten only when absent)."""
    d = data_dir(ctx.shared)
    ctx.log(f"  import lattice {d} as '{DATASET}' (+ random {FEATURE_DIM}-d features, seed {FEATURE_SEED})")
    cli(ctx, "import", "lattice", str(d), "--name", DATASET)
    card = json.loads((ctx.ws / "datasets" / DATASET / "dataset.json").read_text())
    rng = np.random.default_rng(FEATURE_SEED)
    for modality in ("image", "text"):
        table = ctx.ws / "datasets" / DATASET / "features" / f"{modality}-random-{FEATURE_DIM}.parquet"
        if table.exists():
            continue
        npy = ctx.workdir / f"{DATASET}-{modality}.npy"
        np.save(npy, rng.random((card["n_items"], FEATURE_DIM), dtype=np.float32))
        cli(ctx, "features", "import", str(npy), "-m", modality, "-d", DATASET, "--model", f"random-{FEATURE_DIM}")


def run(ctx: Context) -> dict[str, Any]:
    _import(ctx)
    plan = specs(ctx)
    runs = train_many(ctx, [spec for _, spec in plan])
    by: dict[tuple[str, str], list[dict[str, Any]]] = {(b, m): [] for b in BACKBONES for m in MODES}
    for (mode, spec), r in zip(plan, runs):
        by[(spec.backbone, mode)].append(r)
    keep = ("run", "seed", "best_epoch", "epochs_run", "test", "valid", "wall_s", "train_s_per_epoch",
            "train_cpu_s_per_epoch")
    out: dict[str, Any] = {"dataset": DATASET, "features": f"random {FEATURE_DIM}-d image and text, seed "
                           f"{FEATURE_SEED}", "tolerance": TOLERANCE, "node_budget": NODE_BUDGET, "backbones": {}}
    for b in BACKBONES:
        full = by[(b, "full")]
        out["backbones"][b] = {"epoch_cap": epoch_cap(ctx, b),
                               "runs": {m: [{k: r[k] for k in keep} for r in by[(b, m)]] for m in MODES},
                               "paired": {m: paired(full, by[(b, m)]) for m in MODES[1:]}}
    return out


def _cap_note(r: dict[str, Any]) -> str:
    """How the cap bound each mode: a run that reached it was still improving, one below it stopped early."""
    at_cap = {m: sum(x["epochs_run"] >= r["epoch_cap"] for x in r["runs"][m]) for m in MODES}
    return (f", every mode capped at {r['epoch_cap']} epochs; runs that reached the cap: "
            + ", ".join(f"{m} {at_cap[m]} of {len(r['runs'][m])}" for m in MODES))


def _mean_or_dash(xs: list[float | None]) -> str:
    return f"{np.mean(xs):.1f}" if xs and all(x is not None for x in xs) else "-"


def render(res: dict[str, Any]) -> str:
    header = ["backbone", "mode", "test R@20", "test N@20", "best / last epoch", "train s/epoch", "train CPU s/epoch",
              "against full (R@20)", "paired t p (R@20)"]
    rows, verdicts = [], []
    for b, r in sorted(res["backbones"].items(), key=lambda kv: BACKBONES.index(kv[0])):
        cap = _cap_note(r) if r["epoch_cap"] else ", to early stopping"
        for mode in MODES:
            runs = r["runs"][mode]
            p = r["paired"][mode]["recall@20"] if mode != "full" else None
            rows.append([b, LABELS[mode], fmt_mean_std([x["test"]["recall@20"] for x in runs]),
                         fmt_mean_std([x["test"]["ndcg@20"] for x in runs]),
                         ", ".join(f"{x['best_epoch']} / {x['epochs_run']}" for x in runs),
                         f"{np.mean([x['train_s_per_epoch'] for x in runs]):.1f}",
                         _mean_or_dash([x.get("train_cpu_s_per_epoch") for x in runs]),
                         f"{p['new'] / p['base']:.3f}" if p else "-", f"{p['p_ttest']:.2g}" if p else "-"])
            if p:
                ok = abs(p["new"] / p["base"] - 1) <= res["tolerance"]
                verdicts.append(f"{b} {LABELS[mode]}: {p['new'] / p['base'] - 1:+.1%} ({'within' if ok else 'outside'} "
                                f"{res['tolerance']:.0%}{cap})")
    return "\n".join([
        f"Data: the LATTICE split of the Baby 5-core from the shared data (`{res['dataset']}`); LGMRec reads "
        f"{res['features']} (Baby's shared data has no item contents; every mode reads the same tables). "
        "Each backbone with its defaults, `--minibatch full` (MMRec's full-graph step) against `--minibatch "
        "sampled` (fan-out neighbourhoods, lazy Adam) and against the same with `--node-budget "
        f"{res['node_budget']}` (each hop adds at most that many nodes to a step's neighbourhood), the same "
        "seeds; test at the best-validation epoch. Mean ± sample std over seeds; the ratio and the paired "
        "t-test pool every (seed, user) pair. Epoch times are medians over a run's epochs, wall and the "
        "process's CPU seconds (runs shared the machine's two cores, so the wall seconds depend on the load).",
        "", md_table(header, rows), "",
        "Against full, test Recall@20: " + "; ".join(verdicts) + ".",
    ])
