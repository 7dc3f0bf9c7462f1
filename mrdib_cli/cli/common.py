"""Shared CLI plumbing: global options, consoles, progress bars, option panels."""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from mrdib_cli.defaults import SEED
from mrdib_cli.job import announces
from mrdib_cli.workspace import Workspace


class _Console(Console):
    """rich's console ends the process with a bare exit 1 when its output pipe closes (``mrdib ... | head``);
    raised instead, the error reaches the command line's handler, which exits like a Unix tool (141)."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


# Results go to stdout, progress and messages to stderr (so `mrdib eval --json - | jq` works).
out = _Console(soft_wrap=True)
err = _Console(stderr=True, soft_wrap=True)

# Option panels in --help, shared by all commands.
PANEL_DATA = "Data"
PANEL_MODEL = "Model"
PANEL_EVAL = "Evaluation"
PANEL_RUNTIME = "Runtime"


@dataclass
class Globals:
    workspace: Workspace
    quiet: bool = False
    verbose: bool = False


_GLOBALS: Globals | None = None


def set_globals(g: Globals) -> None:
    global _GLOBALS
    _GLOBALS = g


def globals_() -> Globals:
    """The global options of this invocation (workdir, quiet, verbose)."""
    if _GLOBALS is None:  # library use without the CLI callback
        return Globals(workspace=Workspace())
    return _GLOBALS


def ws() -> Workspace:
    return globals_().workspace


def info(msg: str) -> None:
    """A status line on stderr, silenced by --quiet."""
    if not globals_().quiet:
        err.print(msg)


def announce(msg: str) -> None:
    """What a command resolved before its work starts (dataset, run), said once per job (job.announces)."""
    if announces():
        info(msg)


def warn(msg: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {msg}")


def progress_enabled() -> bool:
    """Progress bars on stderr: not with --quiet or MRDIB_NO_PROGRESS=1, nor when stderr is no terminal (a
    log file or a pipe), where rich draws no bar and leaves a blank line behind, before an error too."""
    return not globals_().quiet and os.environ.get("MRDIB_NO_PROGRESS") != "1" and err.is_terminal


def make_progress(transient: bool = True) -> Progress:
    """A Rich progress bar on stderr; disabled with --quiet or MRDIB_NO_PROGRESS=1."""
    return Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=err, transient=transient, disable=not progress_enabled())


@contextmanager
def status(msg: str) -> Iterator[None]:
    if progress_enabled():
        with err.status(msg):
            yield
    else:
        yield


def dataset_target(command: str, name: str | None) -> tuple[str, str]:
    """(dataset, why) for the dataset ``command`` acts on.

    A dataset named with ``-d`` becomes the active one, so the next commands follow the user's last
    explicit choice rather than whatever a previous (or concurrent) command left active.
    """
    w = ws()
    resolved = w.resolve_dataset(name)
    if name is None:
        return resolved, f"the active dataset{w.active_by()}; -d NAME picks another"
    if w.state().get("active_dataset") != resolved:
        w.set_active_dataset(resolved, by=f"mrdib {command} -d {resolved}")
    return resolved, "given with -d; now the active dataset"


def target_dataset(command: str, name: str | None) -> str:
    """The dataset ``command`` acts on, announced on its first line with the reason."""
    resolved, why = dataset_target(command, name)
    announce(f"{command}: dataset '{resolved}' ({why})")
    return resolved


def target_run(command: str, name: str | None, dataset: str | None = None) -> str:
    """The run ``command`` acts on, announced on its first line with the reason; a run named with ``--run``
    makes its dataset active (as ``-d`` does), and ``-d`` alone picks that dataset's newest finished run."""
    w = ws()
    if dataset is not None and name is None:
        dataset, _ = dataset_target(command, dataset)
    resolved, why = w.pick_run(name, dataset)
    ds = w.run_dataset(resolved)
    if dataset is not None and ds != dataset:
        return resolved  # refused by Run.open with both names, before anything becomes active
    if name is not None and ds and w.state().get("active_dataset") != ds:
        w.set_active_dataset(ds, by=f"mrdib {command} --run {resolved}")
        why = "given with --run; its dataset is now the active one"
    elif name is not None:
        why = "given with --run"
    else:
        why += "; --run NAME picks another"
    announce(f"{command}: run '{resolved}' of dataset '{ds}' ({why})")
    return resolved


DeviceOption = typer.Option("auto", "--device", envvar="MRDIB_DEVICE", rich_help_panel=PANEL_RUNTIME,
                            help="auto|cpu|cuda[:N]")
SeedOption = typer.Option(SEED, "--seed", envvar="MRDIB_SEED", rich_help_panel=PANEL_RUNTIME,
                          help=f"Random seed (MMRec's default {SEED}).")
DatasetOption = typer.Option(None, "--dataset", "-d", rich_help_panel=PANEL_DATA,
                             help="Dataset name (default: the active dataset).")
NnodesOption = typer.Option(1, "--nnodes", min=1, rich_help_panel=PANEL_RUNTIME,
                            help="Machines in the job, --nproc processes on each: run the same command on "
                                 "every machine, with the same --rdzv-endpoint (docs/scaling.md).")
EndpointOption = typer.Option(None, "--rdzv-endpoint", metavar="HOST:PORT", rich_help_panel=PANEL_RUNTIME,
                              help="Where the machines of a --nnodes job meet: an address and free port that "
                                   "every machine reaches, e.g. the first machine's.")
ForceOption = typer.Option(False, "--force", rich_help_panel=PANEL_RUNTIME,
                           help="Recompute even when the cached result is up to date.")
