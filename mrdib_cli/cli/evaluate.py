"""``mrdib eval``, ``mrdib compare`` and ``mrdib recommend``: thin wrappers around :mod:`mrdib_cli.evaluation`."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mrdib_cli.defaults import EVAL_BATCH_USERS, KS
from mrdib_cli.cli.common import (PANEL_EVAL, PANEL_RUNTIME, DatasetOption, EndpointOption, NnodesOption, err,
                                  info, make_progress, out, target_run, warn, ws)
from mrdib_cli.errors import UsageError
from mrdib_cli.workspace import atomic_write_text

RunOption = typer.Option(None, "--run", "-r", rich_help_panel=PANEL_EVAL,
                         help="Run name \\[default: the latest run of --dataset, else of the active dataset].")
SplitOption = typer.Option("test", "--split", rich_help_panel=PANEL_EVAL, help="test|valid.")
MaskOption = typer.Option("train", "--mask", rich_help_panel=PANEL_EVAL,
                          help="Items removed from the ranking: 'train' (MMRec's protocol, the published "
                               "numbers) or 'train+valid' (stricter; test only).")
BatchOption = typer.Option(EVAL_BATCH_USERS, "--batch-users", min=1, rich_help_panel=PANEL_RUNTIME,
                           help="Users per search batch: memory is bounded by it, never by users x items.")
IndexOption = typer.Option("flat", "--index", rich_help_panel=PANEL_EVAL,
                           help="flat (exact, default) | ivf | hnsw (approximate, for huge catalogues).")


def _parse_ks(values: list[str], extra: list[str] | None) -> tuple[int, ...]:
    """``--k 10 20``, ``--k 10 --k 20`` and ``--k 10,20`` all mean K in {10, 20}; the values are checked by
    the evaluation's own parse_ks, once."""
    from mrdib_cli.evaluation.metrics import parse_ks

    toks = [t for v in values for t in v.replace(",", " ").split()] + list(extra or [])
    bad = [t for t in toks if not t.lstrip("-").isdigit()]
    if bad:
        raise UsageError(f"unexpected argument '{bad[0]}' (--k takes integers, e.g. --k 10 20)")
    ks = [int(t) for t in toks]
    return parse_ks(ks) if ks else KS


def _index_params(values: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for v in values:
        key, eq, val = v.partition("=")
        if not eq or not val.strip().isdigit():
            raise UsageError(f"--index-param {v!r}: use KEY=INTEGER, e.g. nprobe=32, efSearch=256, nlist=1024")
        params[key.strip()] = int(val)
    return params


def _fmt(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "–"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


def _metrics_table(metrics: dict[str, float], title: str, caption: str | None = None) -> Table:
    names = list(dict.fromkeys(m.split("@")[0] for m in metrics))
    ks = sorted({int(m.split("@")[1]) for m in metrics})
    t = Table(title=title, caption=caption, title_justify="left")
    t.add_column("metric")
    for k in ks:
        t.add_column(f"@{k}", justify="right")
    for n in names:
        t.add_row(n, *[_fmt(metrics.get(f"{n}@{k}", float("nan"))) for k in ks])
    return t


# --------------------------------------------------------------------------------------------- eval
def eval_cmd(
    run: Optional[str] = RunOption,
    dataset: Optional[str] = DatasetOption,
    split: str = SplitOption,
    k: List[str] = typer.Option([], "--k", rich_help_panel=PANEL_EVAL,
                                help="Cut-offs, e.g. --k 10 20 \\[default: 10 20]."),
    mask: str = MaskOption,
    batch_users: int = BatchOption,
    json_path: Optional[str] = typer.Option(None, "--json", rich_help_panel=PANEL_EVAL,
                                            help="Also write {protocol, split, n_users, metrics} to this "
                                                 "JSON file ('-' for stdout)."),
    index: str = IndexOption,
    index_param: List[str] = typer.Option([], "--index-param", rich_help_panel=PANEL_EVAL,
                                          help="ANN setting KEY=VALUE: nlist, nprobe (ivf); M, efSearch (hnsw)."),
    verify_exact: float = typer.Option(0.0, "--verify-exact", min=0.0, max=1.0, rich_help_panel=PANEL_EVAL,
                                       help="With --index ivf|hnsw: on this fraction of users, measure the "
                                            "ANN's recall@K vs exact search and the metric drift."),
    seed: int = typer.Option(0, "--seed", rich_help_panel=PANEL_RUNTIME,
                             help="Seed of the --verify-exact user sample and of IVF training."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, rich_help_panel=PANEL_RUNTIME,
                                          help="FAISS threads \\[default: the free cores: cores minus the 1-minute "
                                               "load, at least 1]."),
    no_save: bool = typer.Option(False, "--no-save", rich_help_panel=PANEL_RUNTIME,
                                 help="Do not write per-user metrics and top-K lists into the run folder."),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1, rich_help_panel=PANEL_RUNTIME,
                                        help="Shard the users over N processes (torch.distributed); exact "
                                             "search only. See docs/scaling.md."),
    nnodes: int = NnodesOption,
    endpoint: Optional[str] = EndpointOption,
    extra: Optional[List[str]] = typer.Argument(None, hidden=True, metavar="K"),
) -> None:
    """Full-ranking evaluation of a trained run (exact FAISS search over all items, MMRec's metrics)."""
    from mrdib_cli.evaluation.runs import Run, evaluate_run
    from mrdib_cli import launch as distributed

    ks = _parse_ks(k, extra)
    if verify_exact and index == "flat":
        raise UsageError("--verify-exact checks an approximate index; use it with --index ivf or hnsw")
    r = Run.open(ws(), target_run("eval", run, dataset), dataset)
    if why := r.unfinished():
        warn(why)
    h = r.handle
    if ks[-1] > h.n_items:
        raise UsageError(f"K={ks[-1]} is larger than the catalogue ({h.n_items} items); use a smaller --k")
    several = distributed.wants_launch(nproc, nnodes, endpoint)
    if several or distributed.launched():
        if index != "flat" or verify_exact:
            raise UsageError("--nproc shards exact search only; drop --index/--verify-exact or --nproc")
        if several:
            raise typer.Exit(distributed.launch(nproc, nnodes=nnodes, endpoint=endpoint))
        from mrdib_cli.evaluation.sharded import evaluate_run_sharded

        distributed.init("cpu")  # FAISS search runs on CPU: gloo
        try:
            res, paths = evaluate_run_sharded(r, split=split, mask=mask, ks=ks, batch_users=batch_users,
                                              save=not no_save, threads=threads or distributed.default_threads())
        finally:
            distributed.shutdown()
        if res is None:  # not rank 0: rank 0 reports
            return
    else:
        res, paths = None, {}
    if res is None:
        n_eval = int((h.csr(split).getnnz(axis=1) > 0).sum()) if split in ("valid", "test") else 0
        with make_progress() as prog:
            task = prog.add_task(f"evaluating {r.name} on {split}", total=n_eval)
            res, paths = evaluate_run(r, split=split, mask=mask, ks=ks, batch_users=batch_users, index=index,
                                      index_params=_index_params(index_param), verify_exact=verify_exact,
                                      seed=seed, save=not no_save, threads=threads,
                                      on_batch=lambda n: prog.advance(task, n))
    payload = {"run": r.name, **res.to_dict()}
    console: Console = err if json_path == "-" else out
    console.print(f"[bold]Protocol:[/bold] {escape(res.protocol.describe())}", highlight=False)
    console.print(_metrics_table(res.metrics, f"{r.name} · {split} · {res.n_users} users · "
                                              f"{res.timing['total_s']:.2f} s"))
    if res.n_short:
        warn(f"{res.n_short} users have fewer than K={ks[-1]} unmasked items in the catalogue; their missing "
             "ranks count as misses")
    if res.ann_check:
        _print_ann_check(console, res.ann_check, index)
    if json_path == "-":
        sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    elif json_path:
        atomic_write_text(json_path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
        info(f"metrics written to {json_path}")
    if paths:
        info(f"per-user metrics and top-{ks[-1]} lists saved: {paths['per_user'].name}, {paths['topk'].name} "
             f"in {r.dir}")


def _print_ann_check(console: Console, chk: dict[str, Any], index: str) -> None:
    t = Table(title=f"{index} vs exact search on {chk['n_users']} users ({chk['fraction']:.0%}, seed "
                    f"{chk['seed']})", title_justify="left")
    t.add_column("quantity")
    t.add_column("ANN", justify="right")
    t.add_column("exact", justify="right")
    t.add_column("drift", justify="right")
    for name, v in chk["ann_recall"].items():
        t.add_row(f"ANN {name} of exact top-K", f"{v:.4f}", "1.0000", f"{v - 1:+.4f}")
    for name, v in chk["exact_metrics"].items():
        t.add_row(name, _fmt(chk["ann_metrics"][name]), _fmt(v), f"{chk['drift'][name]:+.4f}")
    console.print(t)


# --------------------------------------------------------------------------------------------- compare
def compare_cmd(
    runs: List[str] = typer.Argument(..., help="Runs to compare; the first is the baseline."),
    split: str = SplitOption,
    mask: str = MaskOption,
    index: str = IndexOption,
    metric: List[str] = typer.Option([], "--metric", "-m", rich_help_panel=PANEL_EVAL,
                                     help="Metrics to show and test \\[default: recall and ndcg at every K]."),
    force: bool = typer.Option(False, "--force", rich_help_panel=PANEL_EVAL,
                               help="Compare even when the runs' protocol fingerprints differ."),
    json_path: Optional[str] = typer.Option(None, "--json", rich_help_panel=PANEL_EVAL,
                                            help="Also write the comparison to this JSON file ('-': stdout)."),
    batch_users: int = BatchOption,
) -> None:
    """Runs side by side: mean ± std over seeds, change vs the first run, paired per-user tests."""
    from mrdib_cli.evaluation.compare import compare, load_evals

    evals = load_evals(ws(), list(runs), split=split, mask=mask, index=index, batch_users=batch_users,
                       on_info=info, unfinished=force)
    cmp = compare(evals, metrics=[m for v in metric for m in v.replace(",", " ").split()] or None, force=force)
    for p in cmp.mismatches:
        warn(f"protocols differ ({p}); compared anyway because of --force")
    for p in cmp.repeats:
        warn(f"{p}: pooled as two seeds because of --force (their std and n overstate the evidence)")
    console: Console = err if json_path == "-" else out
    print_comparison(console, cmp, split)
    payload = cmp.to_dict()
    if json_path == "-":
        sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    elif json_path:
        atomic_write_text(json_path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
        info(f"comparison written to {json_path}")


def print_comparison(console: Console, cmp: Any, split: str) -> None:  # cmp: Comparison
    """The protocol line, the metrics table (mean ± std, change vs the first run) and the paired tests."""
    console.print(f"[bold]Protocol:[/bold] {escape(cmp.protocol.describe())}", highlight=False)
    t = Table(title=f"{split} metrics (mean ± std over seeds; change vs {cmp.summary[0]['label']})",
              title_justify="left")
    # run names are long and differ at the end (…-mrdib-s1 vs …-s1): fold them, never cut them
    t.add_column("run", overflow="fold")
    t.add_column("system", overflow="fold")
    t.add_column("seeds", justify="right")
    for m in cmp.metrics:
        t.add_column(m, justify="right")
    for gi, row in enumerate(cmp.summary):
        cells = []
        for m in cmp.metrics:
            s = row["metrics"][m]
            cell = _fmt(s["mean"]) + (f" ± {s['std']:.4f}" if s["n"] > 1 else "")
            if gi:
                rel = s["rel_change"]
                cell += " ([green]" if rel > 0 else " ([red]" if rel < 0 else " ("
                cell += f"{rel:+.1%}" if not math.isnan(rel) else "–"
                cell += "[/])" if rel != 0 and not math.isnan(rel) else ")"
            cells.append(cell)
        t.add_row(row["label"], row["system"], str(len(row["runs"])), *cells)
    console.print(t)
    if cmp.tests:
        st = Table(title="Paired per-user tests vs the baseline (two-sided)", title_justify="left")
        for c in ("run", "metric", "users", "mean diff", "t-test p", "Wilcoxon p"):
            st.add_column(c, justify="left" if c in ("run", "metric") else "right", overflow="fold")
        for tr in cmp.tests:
            st.add_row(tr["group"], tr["metric"], str(tr["n_users"]), f"{tr['mean_diff']:+.4f}",
                       _fmt_p(tr["p_ttest"]), _fmt_p(tr["p_wilcoxon"]))
        console.print(st)
    elif len(cmp.groups) == 1:
        info("all runs share one configuration (seeds of one system): no paired test to run")


# --------------------------------------------------------------------------------------------- recommend
def recommend_cmd(
    user: List[str] = typer.Option([], "--user", "-u", rich_help_panel=PANEL_EVAL,
                                   help="Reviewer id or user index; repeatable, or several after one --user."),
    k: int = typer.Option(10, "--k", min=1, rich_help_panel=PANEL_EVAL, help="List length."),
    run: Optional[str] = RunOption,
    dataset: Optional[str] = DatasetOption,
    mask: str = typer.Option("train", "--mask", rich_help_panel=PANEL_EVAL,
                             help="Items never recommended: train (as in evaluation; held-out hits are marked), "
                                  "train+valid, all (everything the user interacted with), none."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", rich_help_panel=PANEL_EVAL,
                                            help="Write the lists of ALL users (or of --user) to a .parquet "
                                                 "or .csv file."),
    batch_users: int = BatchOption,
    extra: Optional[List[str]] = typer.Argument(None, hidden=True, metavar="USER"),
) -> None:
    """Top-K items for given users (reviewer ids or indices) with titles, from a trained run."""
    from mrdib_cli.evaluation.recommend import recommend, resolve_users, write_table
    from mrdib_cli.evaluation.runs import Run

    tokens = [t for v in [*user, *(extra or [])] for t in v.replace(",", " ").split()]
    if not tokens and out_path is None:
        raise UsageError("name users with --user ID (reviewer id or index), or pass --out FILE for all users")
    r = Run.open(ws(), target_run("recommend", run, dataset), dataset)
    if why := r.unfinished():
        warn(why)
    if out_path is not None and out_path.suffix.lower() not in (".parquet", ".csv"):
        raise UsageError(f"--out {out_path}: use a .parquet or .csv file name")
    users = resolve_users(r, tokens) if tokens else None
    df = recommend(r, users, k=k, mask=mask, batch_users=batch_users)
    if out_path is not None:
        write_table(df, out_path)
        info(f"{df['user_idx'].n_unique()} users x top-{k} written to {out_path}")
        if users is None:
            return
    for u in dict.fromkeys(df["user_idx"].to_list()):
        sub = df.filter(df["user_idx"] == u)
        rid = sub["reviewer_id"][0] if "reviewer_id" in sub.columns else None
        t = Table(title=f"user {u}" + (f" ({rid})" if rid else "") + f" · run {r.name} · mask {mask}",
                  title_justify="left")
        cols = [c for c in ("rank", "item_idx", "asin", "title", "score", "held_out")
                if c in sub.columns and not (c == "title" and sub[c].null_count() == sub.height)]
        for c in cols:
            t.add_column("held out" if c == "held_out" else c,
                         justify="right" if c in ("rank", "item_idx", "score") else "left",
                         max_width=60 if c == "title" else None, overflow="ellipsis")
        for row in sub.iter_rows(named=True):
            t.add_row(*[("✓" if row[c] else "") if c == "held_out" else
                        f"{row[c]:.4f}" if c == "score" else ("" if row[c] is None else str(row[c]))
                        for c in cols])
        out.print(t)


def register(app: typer.Typer) -> None:
    app.command("eval", rich_help_panel="Evaluate")(eval_cmd)
    app.command("compare", rich_help_panel="Evaluate")(compare_cmd)
    app.command("recommend", rich_help_panel="Evaluate")(recommend_cmd)
