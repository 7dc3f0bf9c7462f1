"""A run's folder, as the trainer writes it: ``config.json``, ``metrics.jsonl``, checkpoints, the best
epoch's embeddings, the test result and ``results.json``.

The trainer decides *what* to write and when; this decides *how* (atomically, in the layout every reader of
a run folder expects). It is a collaborator rather than part of the loop so that the distributed trainer
only changes *who* writes: every rank runs the same loop, and ranks other than 0 hold a folder that writes
nothing (``writes=False``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mrdib_cli.training import checkpoint as ckpt
from mrdib_cli.workspace import Workspace, atomic_path, atomic_write_json, file_digest


class RunFolder:
    """Writes one run folder (``<workdir>/runs/<name>/``)."""

    def __init__(self, ws: Workspace, name: str, writes: bool = True) -> None:
        self.ws, self.name, self.writes = ws, name, writes
        self.path = ws.run_dir(name)

    @property
    def ckpt_dir(self) -> Path:
        return self.path / "checkpoints"

    def write_config(self, conf: dict[str, Any]) -> None:
        """``config.json``: what makes the folder a run (commands without ``--run`` pick the newest finished
        run of a dataset from these files)."""
        if self.writes:
            atomic_write_json(self.path / "config.json", conf)

    def keep_metrics(self, lines: list[str]) -> None:
        """Rewrite ``metrics.jsonl`` with only ``lines`` (a resumed run drops the epochs it recomputes)."""
        if self.writes:
            with atomic_path(self.path / "metrics.jsonl") as tmp:
                tmp.write_text("".join(ln + "\n" for ln in lines))

    def append_metrics(self, record: dict[str, Any]) -> str:
        """Append one epoch's line; returns it (the checkpoint keeps every line, see Trainer._state)."""
        line = json.dumps(record, sort_keys=True)
        if self.writes:
            with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        return line

    def save_best(self, unit: dict[str, Any]) -> None:
        """The best epoch's embeddings (what evaluation reads) and its model state (``best.pt``), each with the
        epoch inside, which their readers check against ``results.json``, and the run's identity
        (provenance.run_identity), which they check against ``config.json``: a file copied in from another
        run is refused."""
        if self.writes:
            mark = {"identity": unit["identity"]} if unit.get("identity") else {}  # absent in older checkpoints
            with atomic_path(self.path / "embeddings.npz") as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, user=unit["user"].cpu().numpy(), item=unit["item"].cpu().numpy(),
                             epoch=np.int64(unit["epoch"]), **{k: np.str_(v) for k, v in mark.items()})
            ckpt.save(self.ckpt_dir / "best.pt", {"epoch": unit["epoch"], "model": unit["model"],
                                                  "plugin": unit["plugin"], **mark})

    def save_last(self, state: dict[str, Any]) -> None:
        if self.writes:
            ckpt.save(self.ckpt_dir / "last.pt", state)

    def write_results(self, results: dict[str, Any], test: Any = None) -> None:
        """``results.json``, after the test evaluation's own files (``test`` = its EvalResult, if any)."""
        if self.writes:
            if test is not None:  # the figures name the embeddings they scored (evaluation.runs.Run.saved_result)
                test.save(self.path, "test", embeddings=file_digest(self.path / "embeddings.npz"))
            atomic_write_json(self.path / "results.json", results)
