"""``mrdib train`` and ``mrdib runs``: thin wrappers around :mod:`mrdib_cli.training.trainer`."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Callable, List, Mapping, Optional

import click
import typer
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from typer.core import TyperCommand

from mrdib_cli.defaults import SEED
from mrdib_cli.cli.common import (PANEL_DATA, PANEL_EVAL, PANEL_MODEL, PANEL_RUNTIME, DatasetOption,
                                  EndpointOption, NnodesOption, dataset_target, err, info, make_progress, out, warn, ws)
from mrdib_cli.errors import MissingInputError, MrdibError, UsageError
from mrdib_cli.options import Option
from mrdib_cli.workspace import read_json, read_run_config

if TYPE_CHECKING:
    from mrdib_cli.training.resolve import RunConfig

SHOWN = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def _extra_hparams(args: list[str], backbone: str | None) -> dict[str, object]:
    """Backbone hyper-parameters given as options (``--n-layers 2``, ``--reg-weight=1e-4``; a boolean one
    as a switch, ``--eval-gumbel``); an option the backbone does not declare is a one-line error."""
    from mrdib_cli.models.base import get_backbone
    from mrdib_cli.training.config import parse_value

    if args and not backbone:
        raise UsageError(f"unexpected option {args[0]!r} (backbone options need --backbone NAME)")
    declared = {o.flag: o for o in get_backbone(backbone).options()} if backbone else {}
    out_: dict[str, object] = {}
    i = 0
    while i < len(args):
        a = args[i]
        flag, eq, val = a.partition("=")
        opt = declared.get(flag)
        if opt is None:
            known = ", ".join(declared) or "none"
            raise UsageError(f"unknown option {flag!r} for {backbone} (its options: {known}; "
                             f"see 'mrdib train --backbone {backbone} --help')")
        if opt.is_switch and not eq:
            val = "true"
        elif not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise UsageError(f"option {flag} needs a value ({opt.type.__name__})")
            val = args[i + 1]
            i += 1
        out_[opt.name] = parse_value(val)
        i += 1
    return out_


def _plugin_opts(items: list[str], selected: str | None) -> dict[str, object]:
    """``--plugin-opt key=value`` items (they need a plug-in chosen by --plugin, a switch or the config)."""
    from mrdib_cli.training.config import parse_value

    opts: dict[str, object] = {}
    for item in items:
        k, eq, v = item.partition("=")
        if not eq:
            raise UsageError(f"--plugin-opt {item!r}: expected key=value")
        if selected is None:
            raise UsageError(f"--plugin-opt {item!r}: no plug-in chosen; add --plugin NAME or its switch "
                             "(e.g. --mrdib)")
        opts[k.strip()] = parse_value(v)
    return opts


def _plugin_name(source: dict | None) -> str | None:
    """The plug-in a config file or stored run names (None where its section is missing or malformed: the
    resolver says what is wrong with it)."""
    section = (source or {}).get("plugin")
    return section.get("name") if isinstance(section, dict) else None


def _fmt_losses(loss: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{k} {v:.2e}"
                     for k, v in loss.items() if k != "total")


def train_cmd(
    ctx: typer.Context,
    backbone: Optional[str] = typer.Option(None, "--backbone", "-b", rich_help_panel=PANEL_MODEL,
                                           help="Backbone: lightgcn, vbpr, lgmrec, ... Its hyper-parameters "
                                                "are options too: mrdib train --backbone NAME --help."),
    dataset: Optional[str] = DatasetOption,
    run_name: Optional[str] = typer.Option(None, "--run-name", "-n", rich_help_panel=PANEL_RUNTIME,
                                           help="Run folder name [default: <backbone>-<dataset>-<time>]."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", rich_help_panel=PANEL_RUNTIME,
                                          help="YAML/TOML run configuration (sections: train, hparams, "
                                               "plugin, features)."),
    sets: List[str] = typer.Option([], "--set", rich_help_panel=PANEL_RUNTIME,
                                   help="Override any key: train.lr=5e-4, n_layers=2, plugin.x=1. "
                                        "Repeatable."),
    print_config: bool = typer.Option(False, "--print-config", rich_help_panel=PANEL_RUNTIME,
                                      help="Print the resolved configuration and exit."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, rich_help_panel=PANEL_MODEL,
                                         help="Maximum epochs [default: 1000]."),
    patience: Optional[int] = typer.Option(None, "--patience", min=0, rich_help_panel=PANEL_MODEL,
                                           help="Early-stopping patience on valid Recall@20 "
                                                "[default: the backbone's default_patience, else 20]."),
    lr: Optional[float] = typer.Option(None, "--lr", rich_help_panel=PANEL_MODEL, help="Adam lr [1e-3]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, rich_help_panel=PANEL_MODEL,
                                             help="Training batch size [2048]."),
    seed: Optional[int] = typer.Option(None, "--seed", envvar="MRDIB_SEED", rich_help_panel=PANEL_RUNTIME,
                                       help=f"Random seed [{SEED}]."),
    device: Optional[str] = typer.Option(None, "--device", envvar="MRDIB_DEVICE", rich_help_panel=PANEL_RUNTIME,
                                         help="auto|cpu|cuda[:N] [auto]."),
    threads: Optional[int] = typer.Option(None, "--threads", min=0, rich_help_panel=PANEL_RUNTIME,
                                          help="CPU threads for torch [free cores: cores minus the "
                                               "1-minute load, at least 1; a resumed run: its stored count]."),
    minibatch: Optional[str] = typer.Option(None, "--minibatch", rich_help_panel=PANEL_MODEL,
                                            help="full: MMRec's whole-graph forward per step \\[default]; sampled: "
                                                 "only the batch's sampled neighbourhoods (docs/scaling.md)."),
    fanout: List[int] = typer.Option([], "--fanout", min=1, rich_help_panel=PANEL_MODEL,
                                     help="Sampled mode: neighbours kept per node, one value per hop, no more "
                                          "values than hops (the last repeats) [10]. Repeatable: --fanout 10 "
                                          "--fanout 5."),
    node_budget: Optional[int] = typer.Option(None, "--node-budget", min=0, rich_help_panel=PANEL_MODEL,
                                              help="Sampled mode only: at most N new nodes per hop of a step's "
                                                   "neighbourhood, so a step's cost stops growing with the "
                                                   "catalogue (VBPR samples no graph: refused) [0: no bound] "
                                                   "(docs/scaling.md)."),
    test_mask: Optional[str] = typer.Option(None, "--test-mask", rich_help_panel=PANEL_EVAL,
                                            help="Items masked at test time: train (MMRec) or train+valid."),
    plugin: Optional[str] = typer.Option(None, "--plugin", rich_help_panel=PANEL_MODEL,
                                         help="Plug-in objective to add (e.g. mrdib); its own switch and "
                                              "options are listed below (docs/mrdib.md)."),
    plugin_opt: List[str] = typer.Option([], "--plugin-opt", rich_help_panel=PANEL_MODEL,
                                         help="Plug-in option key=value. Repeatable."),
    image_features: Optional[str] = typer.Option(None, "--image-features", rich_help_panel=PANEL_DATA,
                                                 help="Image feature table to use [newest]."),
    text_features: Optional[str] = typer.Option(None, "--text-features", rich_help_panel=PANEL_DATA,
                                                help="Text feature table to use [newest]."),
    resume: bool = typer.Option(False, "--resume", rich_help_panel=PANEL_RUNTIME,
                                help="Continue the run --run-name (or the only interrupted run) from its "
                                     "checkpoint."),
    force: bool = typer.Option(False, "--force", rich_help_panel=PANEL_RUNTIME,
                               help="Overwrite an existing run folder of the same name."),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1, rich_help_panel=PANEL_RUNTIME,
                                        help="Train with N processes on this machine (torch.distributed DDP, "
                                             "one GPU each, else CPU/gloo); see docs/scaling.md."),
    nnodes: int = NnodesOption,
    endpoint: Optional[str] = EndpointOption,
) -> None:
    """Train a backbone (BPR, Adam, validation every epoch, early stopping on valid Recall@20, test once
    on the best-validation epoch). Checkpoints every epoch; Ctrl-C stops cleanly; --resume continues."""
    from mrdib_cli.training.config import load_config_file
    from mrdib_cli.training.plugin import claim_plugin_args
    from mrdib_cli.training.resolve import resolve_run
    from mrdib_cli.training.trainer import EpochRecord, Trainer

    w = ws()
    file = load_config_file(config) if config else None
    stored = None
    if resume:  # the run a config file names is the one it resumes, as it is the one it would start
        named = run_name or (file or {}).get("run_name")
        run_name = _run_to_resume(None if named is None else str(named))
        stored = read_run_config(w.run_dir(run_name) / "config.json")
    if stored is not None and backbone and backbone != stored.get("backbone"):
        raise UsageError(f"run '{run_name}' was started with backbone {stored.get('backbone')}, not {backbone}; "
                         "resume it without --backbone, or start a new --run-name")
    train_flags = {"epochs": epochs, "patience": patience, "lr": lr, "batch_size": batch_size, "seed": seed,
                   "device": device, "threads": threads, "test_mask": test_mask, "minibatch": minibatch,
                   "fanout": list(fanout) or None, "node_budget": node_budget}
    selected = plugin or _plugin_name(file) or _plugin_name(stored)
    claimed, extra = claim_plugin_args(list(ctx.args), selected)
    plug = {**(claimed or {}), **({"name": plugin} if plugin else {}),
            **_plugin_opts(plugin_opt, selected or (claimed or {}).get("name"))}
    chosen = backbone or (file or {}).get("backbone") or (stored or {}).get("backbone")
    hparams = _extra_hparams(extra, chosen)
    flags = {"backbone": backbone, "dataset": dataset, "run_name": run_name,
             "train": {k: v for k, v in train_flags.items() if v is not None}, "hparams": hparams,
             "features": {m: t for m, t in (("image", image_features), ("text", text_features)) if t}}
    cfg = resolve_run(w, stored=stored, file=file, file_source=str(config), flags=flags, plugin=plug or None,
                      sets=sets)

    from mrdib_cli import launch as distributed

    if print_config or not distributed.launched():  # a worker would see the folder its rank 0 just made
        # across machines each sees its own disk: whether a new run's name is taken, the workers' rank 0 decides
        cfg = _refuse_early(cfg, stored, run_name, check_name=not force and (print_config or (nnodes or 1) <= 1))
    if print_config:
        workers = nproc or 1 if distributed.wants_launch(nproc, nnodes, endpoint) else None
        out.print_json(json.dumps(_threads(cfg, threads, stored, workers)[0].with_sources()))
        return

    several = distributed.wants_launch(nproc, nnodes, endpoint)
    if not distributed.launched():
        cfg = _announce(cfg, threads, stored, workers=nproc or 1 if several else None)
    if several:
        raise typer.Exit(distributed.launch(nproc, nnodes=nnodes, endpoint=endpoint))
    if distributed.launched():
        from mrdib_cli.training.distributed import DistributedTrainer as trainer_cls
    else:
        trainer_cls = Trainer
    main = distributed.is_main()

    def on_epoch(rec: EpochRecord) -> None:
        mark = " [green]*best*[/green]" if rec.best else ""
        val = "  ".join(f"{k} {rec.valid[k]:.4f}" for k in SHOWN if k in rec.valid)
        err.print(f"epoch {rec.epoch:>4}  {_fmt_losses(rec.loss)}  | valid {val}  | "
                  f"{rec.time['train_s']:.1f}s + {rec.time['valid_s']:.1f}s{mark}", highlight=False)

    progress = make_progress(transient=True)
    with progress:
        task = progress.add_task("training", total=None, visible=False)

        def batches(total: int) -> Callable[..., None]:
            """One bar, reset at every epoch: batches done, the running loss (read twice a second, so a GPU
            is not stalled every step), elapsed time and the epoch's ETA."""
            head = f"epoch {trainer.epoch + 1}/{cfg.train.epochs}"
            progress.reset(task, total=total, visible=True, description=head)
            shown = [time.monotonic()]

            def advance(loss: object = None) -> None:
                progress.advance(task)
                if loss is not None and time.monotonic() - shown[0] > 0.5:
                    shown[0] = time.monotonic()
                    progress.update(task, description=f"{head} loss {float(loss):.4f}")  # type: ignore[arg-type]
            return advance

        trainer = trainer_cls(w, cfg, resume=resume, overwrite=force, on_epoch=on_epoch, on_info=info,
                              on_warn=warn, progress=batches if progress_enabled_() else None)
        if main:
            info(f"run '{trainer.run_name}': {cfg.backbone} on {trainer.handle.name} "
                 f"({trainer.handle.n_users} users, {trainer.handle.n_items} items), device {trainer.device}, "
                 f"{sum(p.numel() for p in trainer.backbone.parameters())} trainable parameters"
                 + (f", {distributed.world_size()} processes" if distributed.launched() else ""))
            _say_features(trainer.feature_tables(), cfg.sources)
        in_step = False  # whether the ranks end together: not after an error, nor after Ctrl-C on one machine
        try:
            result = trainer.fit()
            in_step = result.status != "stopped"
        finally:
            del trainer  # drops DDP's reducer and its pending gloo/NCCL work before the group goes away
            distributed.shutdown(sync=in_step)
    if not main:
        if result.status == "failed":
            raise UsageError(result.message, exit_code=1)
        if result.status == "stopped" and distributed.node_rank() != 0:
            # Ctrl-C on a machine without rank 0, which alone says what was kept: say it here too
            raise MrdibError("interrupted; the job stops on every machine, and the run folder keeps the last "
                             f"checkpoint: continue with 'mrdib train --resume --run-name {result.run_name}' and "
                             "the same launch options on every machine", exit_code=130)
        return

    t = Table(title=f"{result.run_name}: best epoch {result.best_epoch} of {result.epochs_run} ({result.status})")
    t.add_column("split")
    keys = [k for k in SHOWN if k in result.valid or k in result.test]
    for k in keys:
        t.add_column(k, justify="right")
    for split, m in (("valid", result.valid), ("test", result.test)):
        t.add_row(split, *(f"{m[k]:.4f}" if k in m else "-" for k in keys))
    out.print(t)
    info(result.message)
    info(f"run folder: {result.run_dir}")
    if result.status == "failed":
        raise UsageError(result.message, exit_code=1)
    if result.status == "stopped":
        distributed.leave_error(distributed.ALREADY_SAID)  # a launcher has nothing to add (a no-op alone)
        raise typer.Exit(result.exit_code)


def _run_to_resume(run_name: str | None) -> str:
    """The run ``--resume`` continues: the named one, else the only interrupted run; with several a guess
    could continue someone else's sweep run, so they are listed instead."""
    w = ws()
    if run_name is not None:
        return w.resolve_run(run_name)
    cands = w.interrupted_runs()
    if len(cands) == 1:
        return cands[0]
    if not cands:
        raise MissingInputError(f"no interrupted run to resume in {w.runs_dir}; 'mrdib runs' lists the runs")
    raise UsageError(f"{len(cands)} runs are interrupted ({', '.join(cands)}); choose one with "
                     "--resume --run-name NAME")


def _refuse_early(cfg: RunConfig, stored: dict | None, run_name: str | None, check_name: bool) -> RunConfig:
    """What the run would refuse (its data digests aside), refused before a banner, a print or a worker starts;
    ``check_name``: also a new run's name already taken. Returns ``cfg`` with the feature tables the run
    will read (named, else the newest), as config.json records them."""
    from mrdib_cli.data.handle import DatasetHandle
    from mrdib_cli.models.base import get_backbone
    from mrdib_cli.training.resolve import NEWEST
    from mrdib_cli.training.checkpoint import saved_epoch
    from mrdib_cli.training.trainer import check_epoch_cap, check_same_run, resolve_device, run_exists

    if stored is not None:
        check_same_run(run_name, stored, {**stored, **cfg.to_dict()})
        trained = saved_epoch(ws().run_dir(str(run_name)) / "checkpoints" / "last.pt")
        check_epoch_cap(str(run_name), trained or 0, cfg)
    elif check_name and cfg.run_name and (ws().run_dir(cfg.run_name) / "config.json").exists():
        raise run_exists(cfg.run_name)
    resolve_device(cfg.train.device)
    tables = get_backbone(cfg.backbone).feature_tables(DatasetHandle.open(ws(), cfg.dataset), cfg.features)
    sources = {**cfg.sources, **{f"features.{m}": NEWEST for m in tables if m not in cfg.features}}
    return replace(cfg, features=MappingProxyType({m: p.name for m, p in tables.items()}),
                   sources=MappingProxyType(sources))


def _threads(cfg: RunConfig, threads: int | None, stored: dict | None, workers: int | None) -> tuple[RunConfig, str]:
    """The CPU threads the run will use, and why, for the first line; fixed in a copy of ``cfg`` for a single
    process, as config.json records them (a resumed run keeps its stored count, see docs/training.md).
    ``workers``: the processes a launcher starts, each of which takes its share of the cores unless --threads
    is given (what each will use is shown, not the launcher's own count)."""
    from mrdib_cli.launch import worker_share
    from mrdib_cli.training.resolve import COMMAND_LINE, DEFAULT, STORED
    from mrdib_cli.training.trainer import resolve_device, train_threads

    if resolve_device(cfg.train.device).type != "cpu":
        return cfg, ""
    given = cfg.sources.get("train.threads") not in (None, DEFAULT, STORED) and cfg.train.threads > 0
    if not threads and given:  # a config file's or --set's count counts as the flag's
        threads = cfg.train.threads
    if workers is not None and not threads:
        n, how = worker_share(workers), f"each of {workers} processes' share of the cores; --threads N overrides"
        return cfg, f"; {n} torch thread{'s' if n > 1 else ''} ({how})"
    n, how = train_threads(threads, ((stored or {}).get("runtime") or {}).get("threads"))
    if given and cfg.sources.get("train.threads") != COMMAND_LINE:
        how = f"from {cfg.sources['train.threads']}"
    if workers is None:
        source = cfg.sources.get("train.threads", DEFAULT) if threads else how
        cfg = replace(cfg, train=replace(cfg.train, threads=n),
                      sources=MappingProxyType({**cfg.sources, "train.threads": source}))
    return cfg, f"; {n} torch thread{'s' if n > 1 else ''} ({how})"


def _announce(cfg: RunConfig, threads: int | None, stored: dict | None, workers: int | None) -> RunConfig:
    """The first line: which run, on which dataset and why, and the CPU threads (:func:`_threads`). The
    dataset and default run name are fixed here, in a copy of ``cfg``, so that the line tells the truth."""
    from mrdib_cli.training.resolve import DEFAULT
    from mrdib_cli.training.trainer import default_run_name

    resume = stored is not None
    if resume:
        ds, why = cfg.dataset, "the resumed run's dataset"
        if ws().state().get("active_dataset") != ds:
            ws().set_active_dataset(ds, by=f"mrdib train --resume --run-name {cfg.run_name}")
            why += "; now the active dataset"
    else:
        given = cfg.dataset if cfg.sources.get("dataset") not in (None, DEFAULT) else None
        ds, why = dataset_target("train", given)
    run_name, sources = cfg.run_name, dict(cfg.sources)
    line = f"train: {'resuming ' if resume else ''}run "
    if workers is None and run_name is None:  # a job of several processes takes rank 0's default name
        run_name, sources["run_name"] = default_run_name(cfg.backbone, ds), DEFAULT
    if run_name is not None:
        line += f"'{run_name}' "
    cfg, threads_said = _threads(replace(cfg, sources=MappingProxyType(sources)), threads, stored, workers)
    info(f"{line}on dataset '{ds}' ({why}){threads_said}")
    return replace(cfg, dataset=ds, run_name=run_name)


def _say_features(tables: dict[str, Path], sources: Mapping[str, str]) -> None:
    """Which feature table each modality uses: "newest wins" would otherwise silently pick up a leftover
    smoke-test table, so random-weight tables are also warned about."""
    from mrdib_cli.data.feature_store import read_meta
    from mrdib_cli.training.resolve import NEWEST

    for modality, path in tables.items():
        named = sources.get(f"features.{modality}") not in (None, NEWEST)
        how = "named" if named else f"newest; --{modality}-features NAME picks another"
        info(f"{modality} features: {path.name} ({how})")
        if read_meta(path).get("random_weights"):
            warn(f"{path.name} comes from RANDOM model weights (a smoke-test table): these results say nothing "
                 f"about the {modality} modality")


def progress_enabled_() -> bool:
    from mrdib_cli.cli.common import progress_enabled

    return progress_enabled()


def runs_cmd(
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Only runs of this dataset."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List training runs with their dataset, backbone, status and best metrics."""
    w = ws()
    rows = []
    for name in w.runs():
        d = w.run_dir(name)
        try:
            conf = read_run_config(d / "config.json")
            res = read_json(d / "results.json") if (d / "results.json").exists() else {}
            status = w.run_status(name)
        except MrdibError as e:  # one damaged run does not hide the others
            warn(str(e))
            conf, res, status = {"dataset": None, "backbone": "?"}, {}, "damaged"
        if dataset and conf.get("dataset") != dataset:
            continue
        rows.append({"run": name, "dataset": conf.get("dataset"), "backbone": conf.get("backbone"),
                     "plugin": (conf.get("plugin") or {}).get("name"), "status": status,
                     "best_epoch": res.get("best_epoch"), "valid": res.get("valid", {}),
                     "test": res.get("test", {}), "created": conf.get("created")})
    if w.runs_dir.exists():  # a folder without config.json is no run: say so rather than leave it out unseen
        for d in sorted(p for p in w.runs_dir.iterdir() if p.is_dir() and not (p / "config.json").exists()
                        and not p.name.startswith(".")):
            warn(f"{d} has no config.json, so it is not listed (not a run, one being created, or its config.json "
                 "was deleted)")
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        info(f"no runs yet in {w.runs_dir}" + (f" for dataset '{dataset}'" if dataset else "")
             + "; train one with 'mrdib train --backbone NAME'")
        return
    t = Table(title=f"runs in {w.runs_dir}")
    numeric = ("best ep", "valid R@20", "test R@20", "test N@20")
    for col in ("run", "dataset", "model", "status", *numeric):
        t.add_column(col, justify="right" if col in numeric else "left", overflow="fold")
    for r in rows:
        f = lambda m, k: f"{m[k]:.4f}" if k in m else "-"  # noqa: E731
        model = r["backbone"] + (f"+{r['plugin']}" if r["plugin"] else "")
        t.add_row(r["run"], r["dataset"] or "", model, r["status"], str(r["best_epoch"] or "-"),
                  f(r["valid"], "recall@20"), f(r["test"], "recall@20"), f(r["test"], "ndcg@20"))
    out.print(t)


class TrainCommand(TyperCommand):
    """``mrdib train``: its help also lists the declared backbone and plug-in options, which are parsed
    from the extra arguments (so click itself does not know them)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["train_args"] = list(args)  # --help is eager: --backbone is not parsed yet when help prints
        return super().parse_args(ctx, args)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help(ctx, formatter)
        print_declared_options(_backbone_in(ctx.meta.get("train_args", [])))


def _backbone_in(args: list[str]) -> str | None:
    for i, a in enumerate(args):
        if a in ("--backbone", "-b") and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--backbone="):
            return a.partition("=")[2]
    return None


def _options_panel(title: str, options: tuple[Option, ...], lead: tuple[str, str] | None = None) -> Panel:
    t = Table(box=None, show_header=False, padding=(0, 1), pad_edge=False)
    t.add_column(style="bold cyan", no_wrap=True)
    t.add_column(style="yellow", no_wrap=True)
    t.add_column()
    if lead:
        t.add_row(lead[0], "", lead[1])
    for o in options:
        default = (f" [default: on; {o.off_flag} turns it off]" if o.off_flag else
                   "" if o.is_switch or o.default is None else f" [default: {o.default}]")
        t.add_row(o.flag, "" if o.is_switch else f"<{o.type.__name__}>", escape(f"{o.help}{default}".strip()))
    return Panel(t, title=title, title_align="left", border_style="dim")


def print_declared_options(backbone: str | None) -> None:
    """The backbone's hyper-parameters (or how to see them) and every plug-in's switch and options."""
    from mrdib_cli.errors import MrdibError
    from mrdib_cli.models.base import available, get_backbone
    from mrdib_cli.training.plugin import plugin_switches

    try:
        cls = get_backbone(backbone) if backbone else None
    except MrdibError as e:
        out.print(f"[red]{e}[/red]")
        cls = None
    if cls is None:
        out.print(f"Backbone options: mrdib train --backbone NAME --help ({', '.join(available())}).")
    else:
        out.print(_options_panel(f"Backbone options ({cls.name})", cls.options()))
    for name, (switch, declared) in plugin_switches().items():
        out.print(_options_panel(f"Plug-in options ({name})", declared, (switch, f"Add the {name} plug-in.")))


def register(app: typer.Typer) -> None:
    app.command("train", rich_help_panel="Pipeline", cls=TrainCommand,
                context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(train_cmd)
    app.command("runs", rich_help_panel="Results")(runs_cmd)
