"""The workdir: layout, active dataset/run, manifests, atomic writes and locks.

Every pipeline step reads artefacts and writes artefacts plus a JSON manifest beside them. The manifest
records input digests, parameters, package version, output digests and wall time; a step whose inputs
and parameters are unchanged is skipped (see :func:`cached_step`). Writes go to a temp file in the same
directory and are renamed into place, so an interrupted step never leaves a half-written artefact and the
previous good result stays in place.

Layout::

    <workdir>/
      state.json                  active dataset and the command that made it active
      raw/                        downloads (Amazon files, images)
      datasets/<name>/            interactions.parquet, items.parquet, users.parquet, dataset.json
        features/                 <modality>-<model-slug>.parquet
        graphs/                   cached graphs
        manifests/<step>.json     one manifest per step
      runs/<run-name>/            config.json, checkpoints, metrics.jsonl, results
      .locks/                     lock files
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrdib_cli import __version__
from mrdib_cli.errors import DataError, LockedError, MissingInputError, UsageError

DEFAULT_WORKDIR = "./mrdib-data"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
TMP_PREFIX = ".tmp-"


# --------------------------------------------------------------------------------------------- atomic IO
def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (``os.umask`` can only be read by
    setting it, which another thread could observe)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: str | os.PathLike) -> None:
    """Give a file or folder made by ``mkstemp``/``mkdtemp`` (always private, 0600/0700) the permissions a
    plain ``open``/``mkdir`` would have had, so that colleagues can read runs and reports as the user's
    umask intends."""
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~current_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success rename it onto ``path``, on failure delete it.

    The temp file lives in the same directory so the final ``os.replace`` is atomic on POSIX.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        honour_umask(tmp_path)
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


class DamagedJSONError(DataError, json.JSONDecodeError):
    """A JSON artefact that does not parse: a one-line error naming the file (a JSONDecodeError still, for the
    callers that fall back on one)."""

    def __init__(self, path: str | os.PathLike, e: json.JSONDecodeError) -> None:
        json.JSONDecodeError.__init__(self, e.msg, e.doc, e.pos)
        self.args = (f"{path} is damaged (not valid JSON: {e.msg}, line {e.lineno} column {e.colno}); restore it, "
                     "or redo the step that wrote it (for a run: train it again with --force)",)

    def __str__(self) -> str:
        return str(self.args[0])


def read_run_config(path: str | os.PathLike) -> dict[str, Any]:
    """A run's ``config.json``: valid JSON with the shape the trainer writes (a backbone and dataset named, a
    train section), else a one-line DataError naming the file, as for torn JSON."""
    conf = read_json(path)
    if not (isinstance(conf, dict) and isinstance(conf.get("backbone"), str)
            and isinstance(conf.get("dataset"), str) and isinstance(conf.get("train"), dict)):
        raise DataError(f"{path} is damaged (not a run configuration: it lacks a backbone, dataset or train "
                        "section); restore it, or train the run again with --force")
    return conf


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        try:
            return json.load(fh)
        except json.JSONDecodeError as e:
            raise DamagedJSONError(path, e) from None


# --------------------------------------------------------------------------------------------- digests
def file_digest(path: str | os.PathLike, algo: str = "sha256", chunk: int = 1 << 20) -> str:
    """Content digest of a file, streamed (no full read into memory)."""
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return f"{algo}:{h.hexdigest()}"


def digest_obj(obj: Any) -> str:
    """Stable digest of a JSON-serialisable object (parameters, configs)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def first_difference(a: dict[str, Any], b: dict[str, Any], at: str = "") -> str:
    """The first key (dotted path) whose value differs between two nested dicts (two configurations)."""
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
                return first_difference(a[k], b[k], f"{at}{k}.")
            return f"{at}{k}"
    return at.rstrip(".")


def value_at(conf: dict[str, Any], key: str) -> str:
    """The value at a dotted ``key`` of a nested dict, as the user would type it (None when absent)."""
    for part in key.split("."):
        conf = conf.get(part) if isinstance(conf, dict) else None
    return repr(conf)


def path_digest(path: str | os.PathLike) -> str:
    """Digest of a file, or of a directory's files (names + contents), for cache keys."""
    p = Path(path)
    if p.is_file():
        return file_digest(p)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file() and not x.name.startswith(TMP_PREFIX)):
            h.update(str(f.relative_to(p)).encode())
            h.update(file_digest(f).encode())
        return "sha256:" + h.hexdigest()
    raise MissingInputError(f"input not found: {p}")


# --------------------------------------------------------------------------------------------- locks
@contextlib.contextmanager
def file_lock(lock_path: str | os.PathLike, *, wait: bool = True, timeout: float | None = None,
              what: str = "this artefact") -> Iterator[None]:
    """Exclusive advisory lock (fcntl) so two processes never write the same artefact.

    With ``wait`` the caller blocks until the lock is free (up to ``timeout`` seconds); otherwise a
    :class:`LockedError` says which process holds it. A lock whose file was unlinked or replaced while we
    waited (a folder swapped away, ``cache gc``) no longer excludes anyone, so it is taken again on the file
    now at ``lock_path``.
    """
    lock_path = Path(lock_path)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock_path, "a+")
        try:
            _acquire(fh, lock_path, wait, deadline, what)
        except BaseException:
            fh.close()
            raise
        if _same_file(fh, lock_path):
            break
        fh.close()  # closing releases the stale lock
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        yield
    finally:
        with contextlib.suppress(Exception):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


def _acquire(fh: Any, lock_path: Path, wait: bool, deadline: float | None, what: str) -> None:
    while True:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if not wait or (deadline is not None and time.monotonic() >= deadline):
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                # flock dies with its holder, so a held lock always has a live owner: never advise
                # deleting it (a second writer would then run beside the first)
                raise LockedError(f"{what} is being written by {holder}; wait for it to finish (the lock "
                                  f"{lock_path} is released when that process ends)") from None
            time.sleep(0.2)


def _same_file(fh: Any, path: Path) -> bool:
    """Is the locked handle still the file at ``path``?"""
    try:
        a, b = os.fstat(fh.fileno()), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# --------------------------------------------------------------------------------------------- manifest
@dataclass
class Manifest:
    """What a step consumed and produced; stored as ``<dir>/manifests/<step>.json``."""

    step: str
    inputs: dict[str, str]
    params: dict[str, Any]
    outputs: dict[str, str] = field(default_factory=dict)
    version: str = __version__
    wall_time_s: float = 0.0
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "inputs": self.inputs, "params": self.params, "outputs": self.outputs,
            "version": self.version, "wall_time_s": self.wall_time_s, "created": self.created,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        return cls(step=d["step"], inputs=dict(d["inputs"]), params=dict(d["params"]),
                   outputs=dict(d.get("outputs", {})), version=d.get("version", ""),
                   wall_time_s=float(d.get("wall_time_s", 0.0)), created=d.get("created", ""),
                   extra=dict(d.get("extra", {})))


@dataclass
class StepResult:
    """Outcome of :func:`cached_step`: whether work was done, and why."""

    cached: bool
    reason: str
    manifest: Manifest


def _why_stale(old: Manifest | None, inputs: dict[str, str], params: dict[str, Any],
               base: Path) -> str | None:
    """Return why a step must rerun, or None when the cached result is still valid."""
    if old is None:
        return "no previous result"
    for key in sorted(set(old.inputs) | set(inputs)):
        if old.inputs.get(key) != inputs.get(key):
            return f"input '{key}' changed"
    for key in sorted(set(old.params) | set(params)):
        if old.params.get(key) != params.get(key):
            return f"parameter '{key}' changed ({old.params.get(key)!r} -> {params.get(key)!r})"
    for rel, digest in old.outputs.items():
        out = base / rel
        if not out.exists():
            return f"output '{rel}' is missing"
        if out.is_file() and file_digest(out) != digest:
            return f"output '{rel}' was modified"
    return None


def cached_step(step: str, base: str | os.PathLike, inputs: dict[str, str], params: dict[str, Any],
                run: Callable[[], dict[str, Any] | None], outputs: list[str], *, force: bool = False,
                manifest_dir: str | os.PathLike | None = None,
                lock_path: str | os.PathLike | None = None) -> StepResult:
    """Run ``run()`` unless a manifest shows the same inputs/params produced intact outputs.

    ``inputs`` maps names to digests (use :func:`path_digest`/:func:`digest_obj`), ``outputs`` are paths
    relative to ``base`` that ``run`` writes (atomically). ``run`` may return extra facts for the manifest.
    The whole step holds a lock so two processes cannot write the same artefact at once; a step that
    publishes by swapping ``base`` away must pass a ``lock_path`` outside it (see :meth:`Workspace.lock`).
    """
    base = Path(base)
    mdir = Path(manifest_dir) if manifest_dir else base / "manifests"
    mpath = mdir / f"{step}.json"
    with file_lock(lock_path or mdir / f".{step}.lock", what=f"step '{step}' in {base}"):
        old = Manifest.from_dict(read_json(mpath)) if mpath.exists() else None
        reason = "--force" if force else _why_stale(old, inputs, params, base)
        if reason is None and old is not None:
            return StepResult(cached=True, reason="inputs and parameters unchanged", manifest=old)
        t0 = time.perf_counter()
        extra = run() or {}
        outs = {}
        for rel in outputs:
            p = base / rel
            outs[rel] = file_digest(p) if p.is_file() else path_digest(p)
        man = Manifest(step=step, inputs=inputs, params=params, outputs=outs,
                       wall_time_s=round(time.perf_counter() - t0, 3),
                       created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), extra=extra)
        atomic_write_json(mpath, man.to_dict())
        return StepResult(cached=False, reason=reason or "", manifest=man)


# --------------------------------------------------------------------------------------------- workspace
def old_copy_prefix(name: str) -> str:
    """Prefix of the side folder that holds a dataset's previous copy while a replacement is moved in."""
    return f"{TMP_PREFIX}{name}.old."


def restore_old_copy(folder: Path, lock_path: Path) -> bool:
    """If ``folder`` lost its card between the two renames of a replacement, move the old copy back.

    Done under the dataset's lock, so a replacement that is still running is waited for, not undone.
    """
    sides = lambda: sorted(folder.parent.glob(old_copy_prefix(folder.name) + "*"))  # noqa: E731
    if (folder / "dataset.json").exists() or not folder.parent.exists() or not sides():
        return False
    with file_lock(lock_path, what=f"dataset '{folder.name}'"):
        for side in sides():
            if (folder / "dataset.json").exists() or not (side / "d" / "dataset.json").exists():
                continue
            if folder.exists():  # a half-made folder in the way holds nothing published
                import shutil

                shutil.rmtree(folder)
            os.replace(side / "d", folder)
            side.rmdir()
            return True
    return False


def check_name(name: str, what: str = "name") -> str:
    """Names become directory names: refuse anything that could escape the workdir."""
    if not NAME_RE.match(name or "") or ".." in name:
        raise UsageError(f"invalid {what} '{name}': use letters, digits, '_', '-', '.' (no '..', no '/')")
    return name


class Workspace:
    """The workdir and its small state file (the active dataset and what made it active)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root or os.environ.get("MRDIB_HOME") or DEFAULT_WORKDIR).expanduser().resolve()

    # layout --------------------------------------------------------------------------------
    @property
    def raw_dir(self) -> Path:
        return self.root / "raw"

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def dataset_dir(self, name: str) -> Path:
        return self.datasets_dir / check_name(name, "dataset name")

    def run_dir(self, name: str) -> Path:
        return self.runs_dir / check_name(name, "run name")

    # state ---------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def state(self) -> dict[str, Any]:
        if self.state_path.exists():
            try:
                return read_json(self.state_path)
            except (json.JSONDecodeError, OSError):
                return {}
        return {}

    def lock(self, kind: str, name: str) -> Path:
        """Lock file of one ``kind`` of artefact (``dataset``, ``run``...), outside anything that is swapped."""
        return self.root / ".locks" / f"{kind}-{check_name(name)}.lock"

    def run_writer(self, name: str) -> str | None:
        """Who is writing run ``name`` now (``pid N``: a training run, or an evaluation saving into it), else
        None. Asked without waiting and without taking the lock from anyone."""
        path = self.lock("run", name)
        if not path.exists():
            return None
        with open(path, "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                return fh.read().strip() or "another process"
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return None

    def refuse_written(self, name: str) -> None:
        """Refuse to read run ``name`` while a process writes it: its best epoch changes under the reader."""
        if writer := self.run_writer(name):
            raise LockedError(f"run '{name}' is being written by {writer} (training, or an evaluation saving "
                              "into it); wait for it to end")

    def _update_state(self, **changes: Any) -> None:
        with file_lock(self.root / ".locks" / "state.lock", what="the workdir state"):
            st = self.state()
            st.update(changes)
            atomic_write_json(self.state_path, st)

    def set_active_dataset(self, name: str, by: str) -> None:
        """Make ``name`` the dataset later commands use; ``by`` (the command that did it) is kept so that
        those commands can say why they act on it."""
        self._update_state(active_dataset=check_name(name, "dataset name"),
                           active_by={"command": by, "at": time.strftime("%Y-%m-%d %H:%M")})

    def active_dataset_note(self) -> str:
        """What the next command without ``--dataset`` would use, in words (for errors and first lines)."""
        name = self.state().get("active_dataset")
        if name is None:
            return f"no dataset is active in {self.root}"
        return f"the active dataset is '{name}'{self.active_by()}"

    def active_by(self) -> str:
        """", set by 'COMMAND' at TIME" for the active dataset, or "" when not recorded."""
        by = self.state().get("active_by") or {}
        return f", set by '{by['command']}' at {by.get('at', '?')}" if by.get("command") else ""

    def datasets(self) -> list[str]:
        if not self.datasets_dir.exists():
            return []
        return sorted(p.name for p in self.datasets_dir.iterdir() if (p / "dataset.json").exists())

    def resolve_dataset(self, name: str | None) -> str:
        """The dataset to work on: the explicit one, else the active one; one-line error otherwise."""
        if name is None:
            name = self.state().get("active_dataset")
            if name is None:
                raise MissingInputError(
                    f"no active dataset in {self.root}; run 'mrdib prepare demo' (or prepare/import one) first")
        restore_old_copy(self.dataset_dir(name), self.lock("dataset", name))
        if not (self.dataset_dir(name) / "dataset.json").exists():
            have = ", ".join(self.datasets()) or "none"
            raise MissingInputError(f"dataset '{name}' not found in {self.root} (available: {have})")
        return name

    def resolve_run(self, name: str | None, dataset: str | None = None) -> str:
        """The run to work on: the explicit one, else the newest finished run of the (active) dataset."""
        return self.pick_run(name, dataset)[0]

    def pick_run(self, name: str | None, dataset: str | None = None) -> tuple[str, str]:
        """(run, why): the explicit run, else the newest *finished* run of ``dataset`` (default: the active
        one). A run still training, interrupted or failed is never picked silently: its numbers are not the
        ones a user means by "the latest result"."""
        if name is not None:
            if (self.run_dir(name) / "config.json").exists():
                return name, "given"
            if self.run_dir(name).is_dir():  # its job was stopped between making the folder and writing it
                raise MissingInputError(f"run '{name}' in {self.runs_dir} was stopped before its training began: "
                                        "start it again with 'mrdib train'")
            raise MissingInputError(f"run '{name}' not found in {self.runs_dir}")
        ds = dataset or self.state().get("active_dataset")
        if ds is None:
            raise MissingInputError(f"no run given and no dataset is active in {self.root}; pass --run NAME "
                                    "('mrdib runs' lists them)")
        done = [(self._run_created(r), r) for r in self.runs()
                if self.run_dataset(r) == ds and self.run_status(r) == "finished"]
        if not done:
            raise MissingInputError(f"no finished run of dataset '{ds}' in {self.runs_dir}; train one with "
                                    "'mrdib train --backbone NAME' or pass --run NAME ('mrdib runs' lists them)")
        src = "given" if dataset else "active"
        return max(done)[1], f"newest finished run of the {src} dataset '{ds}'"

    def run_dataset(self, name: str) -> str | None:
        with contextlib.suppress(OSError, DataError):
            return read_run_config(self.run_dir(name) / "config.json").get("dataset")
        return None

    def _run_created(self, name: str) -> float:
        """When a run last wrote its results (finish time orders runs; names need not)."""
        p = self.run_dir(name) / "results.json"
        return p.stat().st_mtime if p.exists() else (self.run_dir(name) / "config.json").stat().st_mtime

    def run_status(self, name: str) -> str:
        """running (a process holds the run's lock); finished / stopped / failed from results.json; else
        interrupted (a checkpoint but no results: a crash or kill) or created (nothing trained yet)."""
        if self.run_writer(name):  # a resumed run still has the results.json of its earlier end
            return "running"
        d = self.run_dir(name)
        with contextlib.suppress(OSError, json.JSONDecodeError):
            return str(read_json(d / "results.json").get("status") or "created")
        return "interrupted" if (d / "checkpoints" / "last.pt").exists() else "created"

    def interrupted_runs(self) -> list[str]:
        """Runs that ``train --resume`` can continue: stopped with Ctrl-C or killed after a checkpoint."""
        # "interrupted" has a checkpoint by definition; a run stopped before its first epoch ended has none, and
        # resumed, it starts from epoch 0
        return [r for r in self.runs() if self.run_status(r) in ("stopped", "interrupted")]

    def runs(self) -> list[str]:
        if not self.runs_dir.exists():
            return []
        return sorted(p.name for p in self.runs_dir.iterdir() if (p / "config.json").exists())
