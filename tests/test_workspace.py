"""Workspace: atomic writes, cache manifests, locks, name checks, CLI exit codes."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

import pytest

from mrdib_cli.errors import LockedError, MissingInputError, UsageError
from mrdib_cli.workspace import (Workspace, atomic_path, atomic_write_json, cached_step, check_name,
                                 digest_obj, file_lock)


def test_atomic_path_keeps_previous_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_cached_step_skips_and_recomputes(tmp_path: Path) -> None:
    calls = []

    def run() -> dict:
        calls.append(1)
        (tmp_path / "out.txt").write_text(f"n={len(calls)}")
        return {"n": len(calls)}

    r1 = cached_step("s", tmp_path, {"in": "d1"}, {"k": 5}, run, ["out.txt"])
    r2 = cached_step("s", tmp_path, {"in": "d1"}, {"k": 5}, run, ["out.txt"])
    assert (r1.cached, r2.cached, len(calls)) == (False, True, 1)
    r3 = cached_step("s", tmp_path, {"in": "d1"}, {"k": 6}, run, ["out.txt"])
    assert not r3.cached and "parameter 'k'" in r3.reason and len(calls) == 2
    r4 = cached_step("s", tmp_path, {"in": "d2"}, {"k": 6}, run, ["out.txt"])
    assert not r4.cached and "input 'in'" in r4.reason
    (tmp_path / "out.txt").write_text("tampered")
    r5 = cached_step("s", tmp_path, {"in": "d2"}, {"k": 6}, run, ["out.txt"])
    assert not r5.cached and "modified" in r5.reason
    r6 = cached_step("s", tmp_path, {"in": "d2"}, {"k": 6}, run, ["out.txt"], force=True)
    assert not r6.cached and len(calls) == 5


def _hold(path: str, secs: float) -> None:
    with file_lock(path):
        time.sleep(secs)


def test_lock_excludes_second_writer(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    p = mp.get_context("spawn").Process(target=_hold, args=(str(lock), 3.0))
    p.start()
    deadline = time.time() + 10
    while time.time() < deadline and not (lock.exists() and lock.read_text().startswith("pid")):
        time.sleep(0.05)
    with pytest.raises(LockedError, match="being written"):
        with file_lock(lock, wait=False):
            pass
    p.join()
    with file_lock(lock, wait=False):
        pass


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "..", ".hidden", "x" * 200])
def test_check_name_rejects_escapes(bad: str) -> None:
    with pytest.raises(UsageError):
        check_name(bad)


def test_resolve_dataset_errors(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    with pytest.raises(MissingInputError, match="no active dataset"):
        ws.resolve_dataset(None)
    with pytest.raises(MissingInputError, match="not found"):
        ws.resolve_dataset("nope")


def test_a_run_stopped_before_its_training_began_is_named_as_such(tmp_path: Path) -> None:
    """A run folder without config.json (stopped between its creation and its first write, e.g. a job whose
    other machine was interrupted while starting) is not a run to resume; say why instead of only "not
    found" beside a folder the user can see."""
    ws = Workspace(tmp_path)
    with pytest.raises(MissingInputError, match=r"^run 'gone' not found in [^(]*$"):
        ws.resolve_run("gone")
    (ws.run_dir("early") / "checkpoints").mkdir(parents=True)
    with pytest.raises(MissingInputError, match="stopped before its training began: start it again"):
        ws.resolve_run("early")


def test_digest_obj_is_order_independent() -> None:
    assert digest_obj({"a": 1, "b": 2}) == digest_obj({"b": 2, "a": 1})


def test_cli_exit_codes(cli) -> None:
    rc, out, err = cli("--version")
    assert rc == 0 and out.startswith("mrdib ")
    rc, out, err = cli("no-such-command")
    assert rc == 2 and err.strip().startswith("error:") and "Traceback" not in err


def test_error_text_with_brackets_is_not_markup(monkeypatch, capsys) -> None:
    """Messages quoting paths like '[/x/pair.cc:561]' (gloo, file names) must print verbatim, not crash."""
    import mrdib_cli.cli.app as appmod

    def boom(**_: object) -> None:
        raise UsageError("bad value [/x/pair.cc:561] here")

    monkeypatch.setattr(appmod, "app", boom)
    with pytest.raises(SystemExit) as ex:
        appmod.main([])
    assert ex.value.code == 2
    assert "bad value [/x/pair.cc:561] here" in capsys.readouterr().err
