"""``mrdib quickstart``: the README demo, offline, a few minutes on a laptop CPU."""

from __future__ import annotations

import json
import time

import typer

from mrdib_cli.defaults import SEED
from mrdib_cli.cli.common import PANEL_RUNTIME, info, out, warn, ws
from mrdib_cli.cli.run import on_epoch_printer, on_step_printer, steps_table


def quickstart_cmd(
    epochs: int = typer.Option(15, "--epochs", min=1, rich_help_panel=PANEL_RUNTIME,
                               help="Epoch cap per training run (keeps the demo to minutes)."),
    users: int = typer.Option(1000, "--users", min=10, rich_help_panel="Demo", help="Demo users."),
    items: int = typer.Option(500, "--items", min=10, rich_help_panel="Demo", help="Demo items."),
    interactions: int = typer.Option(10000, "--interactions", min=100, rich_help_panel="Demo",
                                     help="Demo interactions."),
    seed: int = typer.Option(SEED, "--seed", envvar="MRDIB_SEED", rich_help_panel=PANEL_RUNTIME),
    device: str = typer.Option("auto", "--device", envvar="MRDIB_DEVICE", rich_help_panel=PANEL_RUNTIME,
                               help="auto|cpu|cuda[:N]"),
    as_json: bool = typer.Option(False, "--json", help="Print the steps and report path as JSON."),
) -> None:
    """The README demo, offline: prepare the demo dataset, extract features, build graphs, train LGMRec without and with MRdIB, evaluate, write a report and print where it is."""  # noqa: E501
    from mrdib_cli.training.plugin import available_plugins
    from mrdib_cli.workflow.pipeline import run_name, run_pipeline
    from mrdib_cli.workflow.quickstart import IMAGE_MODEL, quickstart_study

    has_mrdib = "mrdib" in available_plugins()
    if not has_mrdib:
        warn("the MRdIB plug-in is not available in this installation; training LGMRec without it only")
    study = quickstart_study(ws(), epochs=epochs, seed=seed, users=users, items=items, interactions=interactions,
                             mrdib=has_mrdib, device=device)
    warn(f"image features use RANDOM weights ({IMAGE_MODEL}, a 2-layer ViT; offline demo, no pretrained "
         "visual semantics). For real features: 'mrdib extract-features --image-model ViT-B-32 "
         "--image-pretrained laion2b_s34b_b79k'.")
    t0 = time.perf_counter()
    res = run_pipeline(ws(), study, log=info, on_step=on_step_printer, on_epoch=on_epoch_printer)
    wall = time.perf_counter() - t0
    report = res.report / "report.md" if res.report else None
    if as_json:
        out.print_json(json.dumps({**res.to_dict(), "wall_s": round(wall, 1), "report_md": str(report)}))
        return
    out.print(steps_table(res.steps, f"quickstart: {res.n_ran} step(s) ran in {wall:.0f}s"))
    pair = [run_name(study.name, study.datasets[0].name, study.backbones[0].name, m, seed) for m in (False, True)]
    _results_table(pair if has_mrdib else pair[:1])
    out.print(f"[bold]report:[/bold] {report}")
    info("next: 'mrdib doctor --all', 'mrdib compare " + " ".join(res.runs) + "'")
    if has_mrdib:
        info(f"      'mrdib diagnose {pair[1]} --baseline {pair[0]}' (redundancy, per-modality ranking, and which "
             "planted attributes pass the bottleneck)")


def _results_table(runs: list[str]) -> None:
    """The runs' test metrics and, with two, the paired per-user tests: what 'mrdib compare' prints."""
    from mrdib_cli.cli.evaluate import print_comparison
    from mrdib_cli.evaluation.compare import compare, load_evals

    print_comparison(out, compare(load_evals(ws(), runs), metrics=["recall@20", "ndcg@20"]), "test")


def register(app: typer.Typer) -> None:
    app.command("quickstart", rich_help_panel="Workflow")(quickstart_cmd)
