"""Amazon Baby (ID only): LightGCN in MMRec's reference setting, next to the number MMRec publishes.

The data is the LATTICE-style split of the Baby 5-core in the shared data folder, imported as is with
``mrdib import lattice``; LightGCN runs with its defaults, which are the first point of MMRec's grid
(n_layers 1, reg_weight 1e-2, 64-d, Adam 1e-3, batch 2048), early stopping on valid Recall@20 with patience
20, test once at the best-validation epoch with train-only masking (MMRec's protocol). ``--quick`` caps the
epochs (the page says so); ``--full`` trains every seed to early stopping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.sections._common import (METRICS, Context, SkipSection, TrainSpec, cli, fmt_mean_std, md_table,
                                         mean_std, train_many)

TITLE = "Amazon Baby (ID only): LightGCN against the published number"
ORDER = 20

DATASET = "baby"
BACKBONE = "lightgcn"
SUBDIR = "amazon2014-baby-5core/lattice"
QUICK_EPOCHS = 30

#: Literature, not our results: LightGCN on Baby as reported in the MMRec toolbox's results table
#: (enoche/MMRec, evaluation/README.md, read at commit e775373; digested in
#: shared/docs/reference-mmrec-backbones.md §3.7 and §3.12). One run, seed 999, MMRec's own Baby split file.
REFERENCE = {
    "source": "MMRec README (enoche/MMRec evaluation/README.md @ e775373), LightGCN on Baby",
    "test": {"recall@10": 0.0479, "recall@20": 0.0754, "ndcg@10": 0.0257, "ndcg@20": 0.0328},
}

LABELS = {"recall@10": "R@10", "recall@20": "R@20", "ndcg@10": "N@10", "ndcg@20": "N@20"}


def data_dir(shared: Path | None) -> Path:
    """The LATTICE split folder, or SkipSection saying what is missing."""
    if shared is None:
        raise SkipSection("shared data not found (set MRDIB_SHARED_DATA or provide ../shared/data)")
    d = Path(shared) / SUBDIR
    missing = [f for f in ("train.json", "val.json", "test.json") if not (d / f).is_file()]
    if missing:
        raise SkipSection(f"Amazon Baby split not found: {d} lacks {', '.join(missing)}")
    return d


def specs(ctx: Context) -> list[TrainSpec]:
    args = ["--epochs", str(QUICK_EPOCHS)] if ctx.quick else []
    return [TrainSpec(DATASET, BACKBONE, s, f"res-baby-{BACKBONE}-{ctx.mode}-s{s}", None, args) for s in ctx.seeds]


def run(ctx: Context) -> dict[str, Any]:
    d = data_dir(ctx.shared)
    ctx.log(f"  import lattice {d} as '{DATASET}'")
    cli(ctx, "import", "lattice", str(d), "--name", DATASET)
    runs = train_many(ctx, specs(ctx))
    conf = json.loads((ctx.ws / "runs" / runs[0]["run"] / "config.json").read_text())
    card = json.loads((ctx.ws / "datasets" / DATASET / "dataset.json").read_text())
    counts = _split_counts(ctx.ws / "datasets" / DATASET)
    return {
        "dataset": {"name": DATASET, "source": SUBDIR, "n_users": card.get("n_users"),
                    "n_items": card.get("n_items"), "split_counts": counts},
        "backbone": BACKBONE,
        "hparams": conf["hparams"],
        "train": {k: conf["train"].get(k) for k in ("epochs", "patience", "lr", "batch_size", "valid_metric",
                                                    "test_mask")},
        "epoch_cap": QUICK_EPOCHS if ctx.quick else None,
        "runs": [{k: r[k] for k in ("run", "seed", "best_epoch", "epochs_run", "test", "valid", "wall_s",
                                    "train_s_per_epoch", "valid_s_per_pass")} for r in runs],
        "reference": REFERENCE,
    }


def _split_counts(ds_dir: Path) -> dict[str, int]:
    import polars as pl

    df = pl.read_parquet(ds_dir / "interactions.parquet", columns=["split"])
    return {str(k): int(v) for k, v in df.group_by("split").len().iter_rows()}


def _signed(v: float) -> str:
    """+0.0012 / -0.0012, and 0.0000 (not -0.0000) for a difference that rounds to zero."""
    return "0.0000" if abs(v) < 5e-5 else f"{v:+.4f}"


def render(res: dict[str, Any]) -> str:
    runs = res["runs"]
    ref = res["reference"]["test"]
    seeds = [r["seed"] for r in runs]
    ours = {m: [r["test"][m] for r in runs] for m in METRICS}
    header = ["", *(f"test {LABELS[m]}" for m in METRICS), "best / last epoch"]
    rows = [[f"mrdib LightGCN ({len(runs)} seed{'s' if len(runs) > 1 else ''}: {', '.join(map(str, seeds))})",
             *(fmt_mean_std(ours[m]) for m in METRICS),
             ", ".join(f"{r['best_epoch']} / {r['epochs_run']}" for r in runs)],
            [f"published: {res['reference']['source']}", *(f"{ref[m]:.4f}" for m in METRICS), "-"],
            ["ours - published", *(_signed(mean_std(ours[m])[0] - ref[m]) for m in METRICS), "-"]]
    h, t, ds = res["hparams"], res["train"], res["dataset"]
    counts = ds.get("split_counts") or {}
    split = " / ".join(f"{counts.get(s, 0):,}" for s in ("train", "valid", "test"))
    cap = res.get("epoch_cap")
    stop = (f"**quick mode: training capped at {cap} epochs** (early stopping may not have been reached; "
            f"`--full` trains to early stopping)" if cap else
            f"trained to early stopping (patience {t['patience']}, at most {t['epochs']} epochs)")
    wall = [r["wall_s"] for r in runs]
    ep = [r["train_s_per_epoch"] for r in runs if r.get("train_s_per_epoch") is not None]
    lines = [
        f"Data: `{ds['source']}` from the shared data, imported with `mrdib import lattice` "
        f"({ds['n_users']:,} users, {ds['n_items']:,} items; train / valid / test {split} interactions). "
        f"LightGCN with its defaults, the first point of MMRec's grid: n_layers {h.get('n_layers')}, "
        f"reg_weight {h.get('reg_weight')}, embedding {h.get('embedding_size')}; Adam lr {t['lr']}, batch "
        f"{t['batch_size']}; {stop}. Model selection on valid {t['valid_metric']}; test evaluated once at the "
        f"best-validation epoch, masking `{t['test_mask']}` items (MMRec's protocol). Mean ± sample std over seeds.",
        "",
        md_table(header, rows),
        "",
        f"The published figure is one run (seed 999) on MMRec's own Baby split file; ours uses the LATTICE split "
        f"files of the same 5-core data (same interactions and protocol, not the same split). "
        f"Wall time per run: {', '.join(f'{w:.0f} s' for w in wall)}"
        + (f"; {sum(ep) / len(ep):.2f} s per training epoch (median within a run, mean over runs)." if ep else "."),
    ]
    return "\n".join(lines)
