"""Reading trained runs for evaluation, comparison and recommendation, without any model code.

A run folder (written by the trainer) holds ``config.json`` and ``embeddings.npz`` (best-validation user and
item embeddings); that is all ``mrdib eval|compare|recommend`` need. The dataset is located from the config
and its content digest is checked: evaluating embeddings against interactions that changed since training
would produce numbers that mean nothing, so it is refused with a one-line error.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mrdib_cli.defaults import EVAL_BATCH_USERS, KS, settled_train
from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.errors import DataError, MissingInputError, UsageError
from mrdib_cli.evaluation.engine import MASKS, EvalResult, evaluate_split, result_tag  # noqa: F401
from mrdib_cli.provenance import foreign_file, run_identity
from mrdib_cli.publish import read_index
from mrdib_cli.workspace import Workspace, file_lock, read_json, read_run_config

#: the best epoch's user and item embeddings in a run folder (training.run_folder writes it)
EMBEDDINGS = "embeddings.npz"


# training options that change how fast or on which random draw a run trains, not which setting it is
NOT_SETTINGS = ("seed", "device", "threads", "num_workers", "eval_batch_users")


@dataclass
class Run:
    """A trained run folder: its config, dataset and embeddings (loaded lazily)."""

    name: str
    dir: Path
    config: dict[str, Any]
    workspace: Workspace

    @classmethod
    def open(cls, ws: Workspace, name: str | None = None, dataset: str | None = None) -> Run:
        """The named run, or the latest run of the (active) dataset; one-line errors otherwise."""
        name = ws.resolve_run(name, dataset)
        d = ws.run_dir(name)
        ws.refuse_written(name)
        try:
            cfg = read_run_config(d / "config.json")
        except OSError as e:
            raise DataError(f"run '{name}': cannot read config.json ({type(e).__name__})") from None
        if dataset is not None and cfg.get("dataset") != dataset:
            raise UsageError(f"run '{name}' was trained on dataset '{cfg.get('dataset')}', not '{dataset}'; "
                             f"train one on '{dataset}' or name the run with --run")
        return cls(name=name, dir=d, config=cfg, workspace=ws)

    @cached_property
    def handle(self) -> DatasetHandle:
        """The run's dataset, refused if its interactions changed since training."""
        cands = []
        if self.config.get("dataset_dir"):
            cands.append(Path(self.config["dataset_dir"]))
        if self.config.get("dataset"):
            cands.append(self.workspace.dataset_dir(self.config["dataset"]))
        for c in cands:
            if (c / "dataset.json").exists():
                h = DatasetHandle(c)
                break
        else:
            raise MissingInputError(f"run '{self.name}': its dataset '{self.config.get('dataset')}' is not in "
                                    f"{self.workspace.datasets_dir}; prepare or import it again")
        want = self.config.get("dataset_digest")
        if want and h.digest != want:
            raise DataError(f"run '{self.name}': dataset '{h.name}' changed since training (interactions "
                            "digest differs); retrain the run or restore the dataset it was trained on")
        return h

    @cached_property
    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """(user [n_users, d], item [n_items, d]) float32 from ``embeddings.npz`` (no pickle). The file is read
        once, so :attr:`embeddings_digest` names exactly the bytes these arrays came from."""
        p = self.dir / EMBEDDINGS
        if not p.exists():
            raise MissingInputError(f"run '{self.name}' has no embeddings.npz (training did not finish an "
                                    "epoch); train it first or pick another --run")
        try:
            data = p.read_bytes()
            self._embeddings_digest = "sha256:" + hashlib.sha256(data).hexdigest()
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                if "user" not in z or "item" not in z:
                    raise DataError(f"{p}: expected arrays 'user' and 'item', found {sorted(z.files)}")
                if "identity" in z.files and str(z["identity"]) != run_identity(self.config):
                    raise DataError(foreign_file(p, self.name))
                self._check_epoch(p, int(z["epoch"]) if "epoch" in z.files else None)
                return np.asarray(z["user"], np.float32), np.asarray(z["item"], np.float32)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f"{p}: unreadable ({type(e).__name__}); retrain the run") from None

    @property
    def embeddings_digest(self) -> str:
        """Digest of the ``embeddings.npz`` that :attr:`embeddings` read: what a saved evaluation records."""
        self.embeddings  # noqa: B018 - reads (and checks) the file once
        return self._embeddings_digest

    def _check_epoch(self, path: Path, epoch: int | None) -> None:
        """Embeddings must be those of the epoch results.json reports (a crash can leave them one ahead)."""
        res = self.dir / "results.json"
        if epoch is None or not res.exists():
            return
        try:
            best = read_json(res).get("best_epoch")
        except (OSError, ValueError, AttributeError):
            return
        if best and int(best) != epoch:
            raise DataError(f"{path} holds epoch {epoch} but results.json reports epoch {best}; rewrite them with "
                            f"'mrdib train --resume --run-name {self.name}'")

    def unfinished(self) -> str | None:
        """Why the run's embeddings are not a finished run's (killed before results.json), else None."""
        if self.workspace.run_status(self.name) != "interrupted":
            return None
        return (f"run '{self.name}' did not finish (killed after a checkpoint; no results.json), so its embeddings "
                f"are of its best epoch so far; continue it with 'mrdib train --resume --run-name {self.name}'")

    @property
    def seed(self) -> Any:
        return (self.config.get("train") or {}).get("seed")

    def config_key(self) -> str:
        """Identity of the configuration *apart from the seed* (runs sharing it are seeds of one setting)."""
        from mrdib_cli.workspace import digest_obj

        cfg = {k: v for k, v in self.config.items()
               if k not in ("run_name", "created", "version", "code", "runtime", "dataset_dir")}
        cfg["train"] = settled_train(cfg.get("train") or {}, NOT_SETTINGS)
        return digest_obj(cfg)

    def label(self) -> str:
        plug = self.config.get("plugin")
        name = self.config.get("backbone", "?")
        if isinstance(plug, dict) and plug.get("name"):
            name += f"+{plug['name']}"
        return name

    def saved_result(self, tag: str) -> tuple[dict[str, Any] | None, str]:
        """The saved evaluation of ``tag`` when its files are one intact unit and it scored the run's current
        embeddings (a resume that found a better epoch rewrote them); else None and why, to evaluate again."""
        saved = read_index(self.dir / f"eval-{tag}.json")
        if saved is None:
            return None, f"has no saved {tag} evaluation"
        if saved.get("embeddings_digest") != self.embeddings_digest:
            return None, f"has a saved {tag} evaluation of other embeddings than its current best epoch's"
        return saved, ""


def evaluate_run(run: Run, split: str = "test", mask: str = "train", ks: tuple[int, ...] = KS,
                 batch_users: int = EVAL_BATCH_USERS, index: str = "flat", index_params: dict[str, Any] | None = None,
                 verify_exact: float = 0.0, seed: int = 0, save: bool = True, threads: int | None = None,
                 on_batch: Callable[[int], None] | None = None) -> tuple[EvalResult, dict[str, Path]]:
    """Evaluate a run's saved embeddings; save per-user metrics and top-K lists in the run folder."""
    if mask not in MASKS:
        raise UsageError(f"unknown mask '{mask}' (choose from {', '.join(MASKS)})")
    # a training run started meanwhile would rewrite the embeddings these files name
    with file_lock(run.workspace.lock("run", run.name), wait=False, what=f"run '{run.name}'") if save \
            else contextlib.nullcontext():
        user, item = run.embeddings
        res = evaluate_split(run.handle, user, item, split=split, mask=mask, ks=ks, batch_users=batch_users,
                             index=index, index_params=index_params, verify_exact=verify_exact, seed=seed,
                             on_batch=on_batch, threads=threads)
        paths = res.save(run.dir, split, embeddings=run.embeddings_digest) if save else {}
    return res, paths
