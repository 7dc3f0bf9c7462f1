"""``mrdib sweep CONFIG``: a grid over hyper-parameters x seeds, selected on the **validation** split.

Every grid point x seed is one cached training run (the same step as ``mrdib run``). A point's score is its
validation metric (the trainer's best-validation value) averaged over seeds; the winner is the point with
the highest score and only then are its test metrics read. ``select_on="test"`` exists for parity checks
with MMRec, which picks hyper-parameters on test; the outputs then say so loudly (``selected_on: test`` in
the summary, a warning line, and ``mrdib doctor`` flags the runs).

Outputs in ``<workdir>/sweeps/<name>-sweep/`` (``<name>-sweep-selected-on-test/`` for a parity run): ``results.parquet`` and ``results.csv`` (one row per run) and
``summary.json`` (grid, selection rule, per-point means, winner and its test metrics).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl

from mrdib_cli.errors import UsageError
from mrdib_cli.workflow.config import Study
from mrdib_cli.workflow.pipeline import RunSpec, StepRecord, run_pipeline
from mrdib_cli.publish import write_index
from mrdib_cli.workspace import Workspace, atomic_path, check_name, digest_obj, read_json

PARITY_LABEL = "SELECTED ON TEST (MMRec parity only; test metrics are optimistically biased)"


@dataclass
class SweepResult:
    name: str
    dir: Path
    table: pl.DataFrame
    summary: dict[str, Any]
    steps: list[StepRecord]


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]


def point_id(point: dict[str, Any]) -> str:
    return digest_obj(point)[len("sha256:"):][:8]


def short_key(key: str) -> str:
    """``n_layers`` -> ``nl``, ``train.lr`` -> ``lr``: the initials of the key's last part."""
    words = key.rsplit(".", 1)[-1].split("_")
    return words[0] if len(words) == 1 else "".join(w[:1] for w in words)


def short_values(point: dict[str, Any]) -> str:
    """A grid point as run-name text (``nl2-lr0.001``) so that a run list says which point each run is;
    the point's digest when that text would not be a valid, unambiguous name part."""
    keys = [short_key(k) for k in point]
    text = "-".join(f"{k}{re.sub(r'[^A-Za-z0-9_.]+', '_', str(v))}" for k, v in zip(keys, point.values()))
    if len(set(keys)) < len(keys) or len(text) > 60:
        return point_id(point)
    return text


def sweep_specs(study: Study) -> list[RunSpec]:
    """Runs named ``<sweep>-<backbone>[-mrdib]-<short values>-s<seed>`` (the dataset too when a study has
    several)."""
    if study.sweep is None:
        raise UsageError(f"{study.path.name if study.path else 'config'}: no 'sweep' section (sweep: {{grid: "
                         "{n_layers: [1, 2], train.lr: [0.001, 0.0001]}}})")
    specs = []
    for d in study.datasets:
        for b in study.backbones:
            for m in study.mrdib:
                for point in grid_points(study.sweep["grid"]):
                    for s in study.seeds:
                        ds = f"-{d.name}" if len(study.datasets) > 1 else ""
                        name = (f"{study.name}{ds}-{b.name}{'-mrdib' if m else ''}-{short_values(point)}"
                                f"-s{s}")
                        specs.append(RunSpec(d.name, b, s, m, check_name(name, "run name"), dict(point)))
    return specs


def hit_epoch_cap(run_dir: Path, res: dict[str, Any]) -> bool:
    """The run trained to its ``train.epochs`` limit without early stopping: its validation curve may still
    have been rising, so its point's score (and a sweep's choice) can be an underestimate."""
    conf = run_dir / "config.json"
    if res.get("status") != "finished" or not conf.exists():
        return False
    cap = (read_json(conf).get("train") or {}).get("epochs")
    return cap is not None and int(res.get("epochs_run") or 0) >= int(cap) \
        and not str(res.get("message", "")).startswith("early stopping")


def collect(ws: Workspace, specs: list[RunSpec]) -> pl.DataFrame:
    """One row per run: the grid point's values, seed, and every valid_/test_ metric from results.json."""
    rows = []
    for rs in specs:
        res = read_json(ws.run_dir(rs.run_name) / "results.json")
        row: dict[str, Any] = {"run": rs.run_name, "dataset": rs.dataset, "backbone": rs.backbone.name,
                               "mrdib": rs.mrdib, "point": point_id(rs.overrides), "seed": rs.seed,
                               "status": res.get("status"), "best_epoch": res.get("best_epoch"),
                               "epoch_cap": hit_epoch_cap(ws.run_dir(rs.run_name), res)}
        row.update({f"param:{k}": str(v) for k, v in rs.overrides.items()})
        row.update({f"valid_{k}": float(v) for k, v in (res.get("valid") or {}).items()})
        row.update({f"test_{k}": float(v) for k, v in (res.get("test") or {}).items()})
        rows.append(row)
    return pl.DataFrame(rows)


def select(table: pl.DataFrame, metric: str, on: str = "valid") -> dict[str, Any]:
    """Pick the best configuration by ``on``'s ``metric`` (mean over seeds), per dataset/backbone/mrdib.

    Ties are broken by the order of the grid (first point wins), so the choice is deterministic.
    """
    if on not in ("valid", "test"):
        raise UsageError(f"--select-on must be 'valid' or 'test', got '{on}'")
    col = f"{on}_{metric}"
    if col not in table.columns:
        raise UsageError(f"metric '{metric}' is not in the runs' results (have: "
                         f"{', '.join(c[6:] for c in table.columns if c.startswith('valid_'))})")
    metric_cols = [c for c in table.columns if c.startswith(("valid_", "test_"))]
    param_cols = [c for c in table.columns if c.startswith("param:")]
    order = table.with_row_index("_order")
    means = (order.group_by(["dataset", "backbone", "mrdib", "point"], maintain_order=True)
             .agg([pl.col("_order").min(), pl.col("run"), pl.col("seed"), *[pl.col(c).first() for c in param_cols],
                   *[pl.col(c).mean() for c in metric_cols], *[pl.col(c).std().alias(c + "_std") for c in metric_cols]])
             .sort("_order"))
    winners = []
    for _, g in means.group_by(["dataset", "backbone", "mrdib"], maintain_order=True):
        scores = g[col].to_numpy()
        best = int(np.argmax(np.where(np.isfinite(scores), scores, -np.inf)))  # first maximum = grid order
        w = g.row(best, named=True)
        winners.append({
            "dataset": w["dataset"], "backbone": w["backbone"], "mrdib": w["mrdib"], "point": w["point"],
            "params": {c[6:]: w[c] for c in param_cols}, "runs": list(w["run"]), "seeds": list(w["seed"]),
            "selected_on": on, "selection_metric": metric, "selection_score": float(w[col]),
            "valid": {c[6:]: float(w[c]) for c in metric_cols if c.startswith("valid_")},
            "test": {c[5:]: float(w[c]) for c in metric_cols if c.startswith("test_")},
            "test_std": {c[5:]: (None if w[c + "_std"] is None else float(w[c + "_std"]))
                         for c in metric_cols if c.startswith("test_")},
        })
    return {"selected_on": on, "metric": metric, "label": PARITY_LABEL if on == "test" else
            "selected on VALIDATION; test metrics read once for the winner",
            "points": means.drop("_order").with_columns(pl.col("run").list.join(","),
                                                          pl.col("seed").cast(pl.List(pl.Utf8)).list.join(","))
            .to_dicts(), "winners": winners}


def selection_bias_report(table: pl.DataFrame, summary: dict[str, Any], metric: str, *,
                          select_on_test: bool = False) -> str:
    """What MMRec's select-on-test rule would report over this sweep's grid, per dataset/backbone/plug-in,
    and the null control over the seeds of the validation winner (labelled Markdown; refuses unless asked)."""
    from mrdib_cli.evaluation.selection import bias_table, null_control, selection_bias

    results: dict[str, dict[str, Any]] = {}
    for w in summary["winners"]:
        g = table.filter((pl.col("dataset") == w["dataset"]) & (pl.col("backbone") == w["backbone"])
                         & (pl.col("mrdib") == w["mrdib"]))
        rows = [{"run": r["run"], "config": r["point"], "seed": r["seed"],
                 "valid": {metric: r[f"valid_{metric}"]}, "test": {metric: r[f"test_{metric}"]}}
                for r in g.iter_rows(named=True)]
        name = f"{w['dataset']}/{w['backbone']}{'+mrdib' if w['mrdib'] else ''}"
        results[f"{name}: grid"] = selection_bias(rows, metric, select_on_test=select_on_test)
        seeds = [r for r in rows if r["config"] == w["point"]]
        if len(seeds) >= 2:
            results[f"{name}: null control (its seeds as configurations)"] = null_control(
                seeds, metric, select_on_test=select_on_test)
    return bias_table(results)


def write_outputs(out_dir: Path, table: pl.DataFrame, summary: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tagged = table.with_columns(pl.lit(summary["selected_on"]).alias("selected_on"))
    with atomic_path(out_dir / "results.parquet") as tmp:
        tagged.write_parquet(tmp)
    with atomic_path(out_dir / "results.csv") as tmp:
        tagged.write_csv(tmp)
    # the summary is the unit's index, written last: it names the tables' digests (see mrdib_cli.publish)
    write_index(out_dir / "summary.json", summary, [out_dir / "results.parquet", out_dir / "results.csv"])


def run_sweep(ws: Workspace, study: Study, *, select_on: str = "valid", metric: str | None = None,
              dry_run: bool = False, log: Callable[[str], None] = lambda s: None,
              on_step: Callable[[StepRecord], None] | None = None,
              on_epoch: Callable[[Any], None] | None = None) -> SweepResult | list[StepRecord]:
    """Train every grid point x seed (cached), select on ``select_on`` and write the results."""
    if select_on not in ("valid", "test"):
        raise UsageError(f"--select-on must be 'valid' or 'test', got '{select_on}'")
    specs = sweep_specs(study)
    metric = metric or study.sweep["metric"]
    if metric.partition("@")[2] and int(metric.partition("@")[2]) not in study.train_config.ks:
        raise UsageError(f"sweep metric '{metric}': K must be one of train.ks {study.train_config.ks}")
    res = run_pipeline(ws, study, dry_run=dry_run, log=log, on_step=on_step, on_epoch=on_epoch, specs=specs,
                       report=False)
    if dry_run:
        return res.steps
    table = collect(ws, specs)
    summary = select(table, metric, select_on)
    typed = {point_id(s.overrides): dict(s.overrides) for s in specs}
    for w in summary["winners"]:  # the table holds strings (a column per key); report the values as given
        w["params"] = typed.get(w["point"], w["params"])
    # a test-selected sweep never overwrites the validation-selected one
    name = f"{study.name}-sweep" + ("-selected-on-test" if select_on == "test" else "")
    summary.update({"name": name, "grid": study.sweep["grid"], "seeds": study.seeds,
                    "runs": [s.run_name for s in specs],
                    "epoch_cap_runs": table.filter(pl.col("epoch_cap"))["run"].to_list(),
                    "winner_runs": [r for w in summary["winners"] for r in w["runs"]]})
    out_dir = ws.root / "sweeps" / name
    write_outputs(out_dir, table, summary)
    return SweepResult(name, out_dir, table, summary, res.steps)
