"""``mrdib diagnose RUN``: redundancy (MINE) and per-modality ranking quality of a run vs. its baseline."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from mrdib_cli.cli.common import PANEL_EVAL, PANEL_RUNTIME, make_progress, out, target_run, warn, ws

METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def diagnose_cmd(
    run: Optional[str] = typer.Argument(None, help="Run to diagnose (default: the latest run)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", "-B", rich_help_panel=PANEL_EVAL,
                                           help="The same backbone trained without MRdIB, for comparison."),
    mi_steps: int = typer.Option(2000, "--mi-steps", min=50, rich_help_panel=PANEL_EVAL,
                                 help="Training steps of the fresh MINE critic."),
    seed: int = typer.Option(0, "--seed", rich_help_panel=PANEL_RUNTIME, help="Seed of the critic and item split."),
    device: str = typer.Option("cpu", "--device", rich_help_panel=PANEL_RUNTIME,
                               help="Device to rebuild the model on (cpu|cuda)."),
    as_json: bool = typer.Option(False, "--json", help="Print the diagnostics as JSON on stdout."),
) -> None:
    """Check MRdIB's claims on a trained run: I(Z_v;Z_t) on held-out items (fresh critic) and ranking with
    z_v alone, z_t alone and fused, for the run and its --baseline; on a demo dataset also which planted
    attributes each representation carries. Writes diagnose.json and diagnose.png into the run folder."""
    from mrdib_cli.mrdib.diagnostics import STAGES_PER_RUN, diagnose

    name = target_run("diagnose", run)
    with make_progress() as prog:
        task = prog.add_task("diagnose", total=STAGES_PER_RUN * (2 if baseline else 1))
        started = [False]

        def stage(msg: str) -> None:
            if started[0]:  # a stage starting means the one before it is done
                prog.advance(task)
            started[0] = True
            prog.update(task, description=msg)

        report, jpath, ppath = diagnose(ws(), name, baseline, mi_steps=mi_steps, seed=seed, device=device,
                                        on_stage=stage)
    if as_json:
        import json

        out.print_json(json.dumps({**report, "json": str(jpath), "png": str(ppath)}))
        return
    for table in tables(report):
        out.print(table)
    for r in (report["run"], report["baseline"]):
        if r and (r.get("probes") or {}).get("skipped"):
            warn(f"planted-attribute probes skipped for {r['run']}: {r['probes']['skipped']}")
    out.print(f"wrote {jpath}\nwrote {ppath}")


def tables(report: dict) -> list[Table]:
    """The two result tables of a diagnose report (MI estimates; ranking per representation)."""
    runs = [r for r in (report["run"], report["baseline"]) if r]
    t = Table(title="I(Z_v; Z_t) estimate (MINE, held-out items)")
    for col in ("run", "plugin", "representation", "MI [nats]", "MI train"):
        # run names are long and alike (baseline vs +MRdIB): fold them rather than cut the telling end off
        t.add_column(col, justify="right" if col.startswith("MI") else "left", overflow="fold")
    for r in runs:
        mi = r["mi"]
        t.add_row(r["run"], r["plugin"] or "-", r["representation"],
                  "n/a" if mi.get("mi") is None else f"{mi['mi']:.4f}",
                  "n/a" if mi.get("mi_train") is None else f"{mi['mi_train']:.4f}")
    t2 = Table(title=f"Test ranking by representation (mask: {report['run']['mask']})")
    t2.add_column("run", overflow="fold")
    t2.add_column("scored with")
    for m in METRICS:
        t2.add_column(m, justify="right")
    for r in runs:
        groups = list(r["ranking"].items())
        for i, (g, vals) in enumerate(groups):
            name = r["run"] if i == 0 else ""  # one name per block of rows, blocks separated by a rule
            cells = ["-"] * len(METRICS) if "skipped" in vals else [f"{vals[m]:.4f}" for m in METRICS]
            label = g if "skipped" in vals or g == "fused" else f"{g} alone"
            t2.add_row(name, label, *cells, end_section=i == len(groups) - 1)
    t3 = probe_table(runs)
    return [t, t2] + ([t3] if t3 is not None else [])


#: where each planted attribute shows, in a header's second line (the table must fit 80 columns)
_SHOWS_SHORT = {"image+text": "i+t", "image": "img", "text": "txt", "both (XOR)": "XOR", "text, noise": "noise"}


def probe_table(runs: list[dict]) -> Table | None:
    """Planted attributes (demo datasets) decodable from each representation: one row per (run, representation),
    one column per attribute (eight attributes x up to eight representations fit 80 columns this way round)."""
    probed = [r for r in runs if (r.get("probes") or {}).get("attributes")]
    if not probed:
        return None
    t = Table(title="Planted attributes: linear-probe accuracy on held-out items",
              caption="mu: bottleneck mean; z: one sample of it (what passes the channel); base: the baseline's "
                      "hook input h; item: the ranked item embedding (ID and content together); 2nd header line: "
                      "where the attribute shows (i+t: image and text; XOR: only both together; noise: text "
                      "users ignore)",
              show_edge=False)
    t.add_column("probe of", no_wrap=True)
    attrs = probed[0]["probes"]["attributes"]
    for row in attrs:
        t.add_column(f"{row['name']}\n{_SHOWS_SHORT.get(row['shows'], row['shows'])}", justify="right")
    t.add_row("chance", *[f"{row['chance']:.2f}" for row in attrs], end_section=True)
    # the baseline (if probed) first, as the reference each MRdIB row is read against
    for r in sorted(probed, key=lambda r: bool(r["plugin"])):
        by = {row["name"]: row for row in r["probes"]["attributes"]}
        reps = r["probes"]["representations"]
        for k, rep in enumerate(reps):
            t.add_row(_probe_label(rep, baseline=not r["plugin"]),
                      *[f"{by[row['name']][rep]:.2f}" for row in attrs], end_section=k == len(reps) - 1)
    return t


def _probe_label(rep: str, baseline: bool) -> str:
    """'image sample' -> 'img z'; a baseline's 'text h' -> 'base txt'; 'item scored' -> 'item' / 'base item'."""
    modality, kind = rep.rsplit(" ", 1)
    if modality == "item":
        return "base item" if baseline else "item"
    short = {"image": "img", "text": "txt"}.get(modality, modality)
    return f"base {short}" if baseline else f"{short} {'z' if kind == 'sample' else kind}"


def register(app: typer.Typer) -> None:
    app.command("diagnose", rich_help_panel="Results")(diagnose_cmd)
