"""The ``mrdib`` Typer application: global options, command discovery, error rendering.

Exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 missing input or model/data unavailable offline,
4 protocol mismatch refused; 130 Ctrl-C, 143 SIGTERM, 141 the output pipe closed (README's table).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import pkgutil
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperGroup, TyperOption
from rich.markup import escape

try:  # typer >= 0.20 vendors click as typer._click
    from typer._click import exceptions as cx
except ImportError:  # pragma: no cover - older typer
    from click import exceptions as cx

from mrdib_cli import __version__
from mrdib_cli.cli.common import Globals, err, set_globals
from mrdib_cli.errors import EXIT_RUNTIME, EXIT_USAGE, MrdibError
from mrdib_cli.job import (INTERRUPTED, Terminated, die_with_launcher, leave_error, one_interrupt_per_press,
                           quiet_store_warnings, stop_exit_code)
from mrdib_cli.workspace import Workspace


class _Interrupted(Exception):
    """Ctrl-C inside a command, on its way to :func:`_run`."""


class _Commands(TyperGroup):
    """The command group. typer turns a Ctrl-C inside a command into a silent exit 130, and click a closed
    output pipe into a silent exit 1; caught here first, the first becomes the one line :func:`_run` prints
    for every interruption, the second SIGPIPE's exit code (:func:`_output_closed`)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            raise _Interrupted(e) from None
        except BrokenPipeError:  # here: click would turn it into a silent exit 1
            _output_closed()


app = typer.Typer(
    cls=_Commands,
    name="mrdib",
    help="Multimodal recommendation from raw Amazon reviews to evaluated models, with MRdIB.\n\n"
         "Exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 missing input/offline, 4 protocol mismatch, "
         "130 Ctrl-C, 143 SIGTERM, 141 output pipe closed.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_NOT_COMMANDS = {"app", "common"}
# file-system failures a user can fix, with the fix (disk full, read-only or foreign-owned workdir)
_WRITE_ERRNOS = {
    errno.ENOSPC: "free some space or point --workdir/MRDIB_HOME at a larger disk",
    errno.EDQUOT: "free some space or point --workdir/MRDIB_HOME at a larger disk",
    errno.EACCES: "make the workdir writable or point --workdir/MRDIB_HOME elsewhere",
    errno.EPERM: "make the workdir writable or point --workdir/MRDIB_HOME elsewhere",
    errno.EROFS: "the file system is read-only; point --workdir/MRDIB_HOME at a writable one",
    errno.ENOTDIR: "a path component is a file; point --workdir/MRDIB_HOME at a directory",
    errno.EFBIG: "a file outgrew the file-size limit; raise it ('ulimit -f') or point --workdir/MRDIB_HOME elsewhere",
}
# the same failures on a path outside the workdir (an --out file or folder): the workdir is not the fix
_OUTSIDE_ERRNOS = {
    errno.ENOSPC: "free some space there or write elsewhere",
    errno.EDQUOT: "free some space there or write elsewhere",
    errno.EACCES: "make that folder writable or write elsewhere",
    errno.EPERM: "make that folder writable or write elsewhere",
    errno.EROFS: "that file system is read-only; write elsewhere",
    errno.ENOTDIR: "a path component is a file; write elsewhere",
    errno.EFBIG: "a file outgrew the file-size limit; raise it ('ulimit -f') or write elsewhere",
}
# Rust-backed libraries (polars) report an OS error only inside their message
_OS_ERROR_RE = re.compile(r"\(os error (\d+)\)")
# Help lists commands (and their panels) in pipeline order; modules not named here follow alphabetically.
_ORDER = ["quickstart", "run", "prepare", "importers", "features", "graph", "train", "evaluate", "diagnose",
          "sweep", "report", "doctor", "backbones", "cache"]


def _flag_type(self: TyperOption, ctx: object) -> str | None:
    """A flag takes no value, so its help shows no metavar (typer would print ``<bool>``)."""
    return None if self.is_flag and not self.count else _TYPER_DISPLAY_TYPE(self, ctx)


_TYPER_DISPLAY_TYPE = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mrdib {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    workdir: Optional[Path] = typer.Option(None, "--workdir", "-w",
                                           help="Working directory for data, features, graphs and runs "
                                                "[default: $MRDIB_HOME, else ./mrdib-data]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only print results; no progress."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks and debug output."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    set_globals(Globals(workspace=Workspace(workdir), quiet=quiet, verbose=verbose))


def _load_commands() -> None:
    """Import every ``mrdib_cli.cli.<module>`` that defines ``register(app)``."""
    import mrdib_cli.cli as pkg

    rank = {name: i for i, name in enumerate(_ORDER)}
    mods = sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: (rank.get(m.name, len(rank)), m.name))
    for mod in mods:
        if mod.name in _NOT_COMMANDS or mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"mrdib_cli.cli.{mod.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_load_commands()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and turn user errors into one line and an exit code.

    A worker of a multi-process job (``--nproc``, torchrun) ends with ``os._exit`` once its output is flushed:
    its process group is already shut down by then, but gloo's background threads can still be torn down
    by the interpreter's C++ teardown while a peer's last messages are in flight, which aborts a worker that
    had finished cleanly ("terminate called without an active exception", exit code 1 for the whole job).
    """
    quiet_store_warnings(sys.argv[1:] if argv is None else argv)
    die_with_launcher()
    try:
        with one_interrupt_per_press():
            _run(argv)
    except SystemExit as e:
        if not _in_worker():
            raise
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    else:
        if not _in_worker():
            return
        code = 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _in_worker() -> bool:
    """True in a worker of a multi-process job (looked up, not imported: a command that never loaded the
    launch helpers, and torch with them, cannot be one)."""
    dist_mod = sys.modules.get("mrdib_cli.launch")
    return dist_mod is not None and dist_mod.launched()


def _run(argv: list[str] | None) -> None:
    verbose = "--verbose" in (argv or sys.argv) or "-v" in (argv or sys.argv)
    try:
        rc = app(args=argv, standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except MrdibError as e:
        if verbose:
            err.print_exception()
        _say(str(e))
        sys.exit(e.exit_code)
    except (_Interrupted, KeyboardInterrupt, typer.Abort) as e:
        if threading.current_thread() is threading.main_thread():  # saying so and exiting: nothing left to stop
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        cause = e.args[0] if isinstance(e, _Interrupted) else e
        _say("stopped by SIGTERM" if isinstance(cause, Terminated) else INTERRUPTED)
        sys.exit(stop_exit_code(cause))
    except BrokenPipeError:
        _output_closed()
    except cx.ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # help was already printed
            sys.exit(0)
        err.print(f"[red]error:[/red] {escape(e.format_message())}", highlight=False)
        sys.exit(EXIT_USAGE if isinstance(e, cx.UsageError) else e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except SystemExit:
        raise
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS:
            _bug(e, verbose)
        _write_failure(e.errno, e.strerror, e.filename, verbose)
    except Exception as e:  # a bug, or an OS error wrapped by a Rust library
        launch = sys.modules.get("mrdib_cli.launch")
        if launch is not None and launch.lost_peer(e):  # another rank stopped: say so, not the socket's words
            if verbose:
                err.print_exception()
            _say(launch.LOST_PEER_MESSAGE)
            sys.exit(EXIT_RUNTIME)
        code = _wrapped_errno(e)
        if code is None:
            _bug(e, verbose)
        _write_failure(code, os.strerror(code), None, verbose)
    except BaseException as e:  # pyo3's PanicException (a corrupt Arrow/Parquet file) is a BaseException
        if type(e).__name__ != "PanicException":
            raise
        _bug(e, verbose)


def _wrapped_errno(e: Exception) -> int | None:
    """The errno of a disk-full/permission failure that a library reported only in its message: Rust's
    "(os error 28)", or C's strerror and number, as torch's shared memory says it ("File too large (27)")."""
    m = _OS_ERROR_RE.search(str(e))
    code = int(m.group(1)) if m else None
    if code is None:
        code = next((c for c in _WRITE_ERRNOS if f"{os.strerror(c)} ({c})" in str(e)), None)
    return code if code in _WRITE_ERRNOS else None


def _output_closed() -> None:
    """stdout or stderr was a pipe whose reader went away (``mrdib ... | head``): end quietly with SIGPIPE's
    exit code (141), as Unix tools do; there is no one left to tell. A training run stopped this way keeps its
    last checkpoint and shows as interrupted in ``mrdib runs``. Both streams go to /dev/null first, or
    Python's own flush at exit would report the closed pipe."""
    null = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            os.dup2(null, stream.fileno())
    sys.exit(128 + int(signal.SIGPIPE))


def _write_failure(code: int, strerror: str, filename: str | None, verbose: bool) -> None:
    """One line naming the failure (ENOSPC, EFBIG, EACCES...) and its fix; exit code 1."""
    if verbose:
        err.print_exception()
    where = f"{filename}: " if filename else ""
    fix = _OUTSIDE_ERRNOS[code] if filename and not _in_workdir(filename) else _WRITE_ERRNOS[code]
    _say(f"{where}{strerror} ({errno.errorcode.get(code, code)}); {fix} "
         "(finished artefacts are untouched; rerun afterwards)")
    sys.exit(EXIT_RUNTIME)


def _in_workdir(filename: str | os.PathLike) -> bool:
    """Whether a path lies in the workdir (or where the workdir is unknown, as the workdir advice assumes)."""
    from mrdib_cli.cli.common import ws

    if not isinstance(filename, (str, os.PathLike)):
        return True
    try:
        root = Path(ws().root).resolve()
    except Exception:  # noqa: BLE001 - no workdir set up yet: the workdir advice it was
        return True
    return Path(filename).resolve().is_relative_to(root)


def _bug(e: BaseException, verbose: bool) -> None:
    """An unexpected exception: one line; the traceback only with --verbose."""
    if verbose:
        raise e
    first = (str(e).strip().splitlines() or [""])[0]
    _say(f"{type(e).__name__}: {first} (rerun with --verbose for the traceback)")
    sys.exit(EXIT_RUNTIME)


def _say(message: str) -> None:
    """The one error line: printed here or, in a worker of mrdib's launcher, handed to it to print once for the
    job with the worker's exit code (a worker's own line was followed by the launcher's about the ranks it
    then stopped, with their signal's exit code)."""
    if not leave_error(message):
        err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
