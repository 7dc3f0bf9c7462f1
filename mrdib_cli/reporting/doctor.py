"""``mrdib doctor [RUN...]``: evaluation-leakage and protocol checks, each finding explained.

Checks (severity in brackets):

- ``test-selection`` [error]: the run won (or was part of) a sweep whose selection used the **test** split
  (``mrdib sweep --select-on test``, MMRec's practice). Its test numbers are optimistically biased.
- ``graph-leak`` [error]: the dataset's user-item graph contains valid/test interactions (checked on the
  stored adjacency itself, vectorised), or a graph manifest says it was built from non-train interactions.
- ``stale-graph`` [warning]: a graph was built from a different version of the interactions (e.g. before a
  resplit); some of its edges may be today's valid/test interactions.
- ``repeat-interactions`` [info]: test pairs that repeat a train pair of the same user (repeat purchases kept
  by a published split); masked at test, so a bounded pessimistic bias, never a leak (and never counted as
  graph edges that leak).
- ``random-features`` [warning]: a run trained on a feature table extracted with random model weights.
- ``feature-leak`` [error]: a feature table's provenance says it was computed from valid/test interactions.
- ``valid-unmasked`` [info]: test-time ranking masked only train items, so a user's validation items compete
  with the test items (MMRec does this; numbers are comparable to MMRec but slightly pessimistic).
- ``protocol-mismatch`` [warning]: runs of the same dataset were evaluated under different protocols
  (fingerprints differ); comparing their numbers is comparing different measurements.
- ``rng-not-restored`` [error/warning]: the run was resumed without its RNG/sampler state (epochs repeat or
  jump in ``metrics.jsonl``, or the checkpoint has no RNG state to restore from).
- ``training-warning`` [warning]: the trainer warned during training (a plug-in's health problem, e.g. an
  MRdIB bottleneck whose log-variances ran past the clamp); kept in ``results.json`` so that a run trained
  with ``--quiet`` or in a sweep is still flagged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mrdib_cli.workspace import Workspace, read_json, read_run_config

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


@dataclass
class Finding:
    code: str
    severity: str  # error | warning | info
    run: str | None
    message: str
    explanation: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _results(run_dir: Path) -> dict[str, Any]:
    p = run_dir / "results.json"
    try:
        return read_json(p) if p.exists() else {}
    except (OSError, json.JSONDecodeError):
        return {}


# ------------------------------------------------------------------------------------------ per run
def check_test_selection(ws: Workspace, run: str) -> list[Finding]:
    out = []
    sweeps = ws.root / "sweeps"
    for s in sorted(sweeps.glob("*/summary.json")) if sweeps.is_dir() else []:
        try:
            d = read_json(s)
        except (OSError, json.JSONDecodeError):
            continue
        if d.get("selected_on") == "test" and run in (d.get("runs") or []):
            winner = run in (d.get("winner_runs") or [])
            out.append(Finding(
                "test-selection", "error", run,
                f"{'selected as the winner of' if winner else 'part of'} sweep '{s.parent.name}' whose "
                "hyper-parameters were chosen on the TEST split",
                "Choosing hyper-parameters by test metrics (MMRec's practice) makes the reported test numbers an "
                "optimistic, biased estimate. Re-run the sweep with the default --select-on valid and report the "
                "winner's test metrics."))
    return out


def check_graphs(ws: Workspace, dataset_dir: Path, label: str) -> list[Finding]:
    """Graph leakage of a dataset: stored adjacencies vs. its valid/test pairs, and graph manifests."""
    from mrdib_cli.data.handle import DatasetHandle

    out: list[Finding] = []
    if not (dataset_dir / "dataset.json").exists():
        return out
    handle = DatasetHandle(dataset_dir)
    gdir = dataset_dir / "graphs"
    held = None
    out += check_repeats(handle, label)
    for adj_path in sorted(gdir.glob("adj-*.npz")) if gdir.is_dir() else []:
        import scipy.sparse as sp

        m = sp.csr_matrix(sp.load_npz(adj_path))
        nu, ni = handle.n_users, handle.n_items
        if m.shape != (nu + ni, nu + ni):
            out.append(Finding("stale-graph", "warning", label, f"{adj_path.name} has shape {m.shape}, the dataset "
                               f"has {nu} users + {ni} items", "The graph belongs to another version of the "
                               "dataset; rebuild it with 'mrdib build-graph --force'."))
            continue
        if held is None:
            held = {s: _held_out_only(handle, s) for s in ("valid", "test")}
            n_repeat = {s: len(handle.pairs(s)[0]) - len(held[s][0]) for s in held}
        block = m[:nu, nu:]
        for split, (u, i) in held.items():
            n_leak = int(np.count_nonzero(np.asarray(block[u, i]).ravel())) if len(u) else 0
            if n_leak:
                out.append(Finding(
                    "graph-leak", "error", label,
                    f"{adj_path.name} of dataset '{handle.name}' contains {n_leak} of its {len(u)} {split} "
                    "interactions as edges" + (" (repeats of train pairs left out)" if n_repeat[split] else ""),
                    f"Message passing over {split} edges lets the model see the answers it is evaluated on. Build "
                    "graphs from train interactions only: 'mrdib build-graph --force'."))
    mdir = dataset_dir / "manifests"
    for mp in sorted(mdir.glob("graph-*.json")) if mdir.is_dir() else []:
        try:
            man = read_json(mp)
        except (OSError, json.JSONDecodeError):
            continue
        splits = (man.get("params") or {}).get("splits") or []
        if any(s in ("valid", "test") for s in splits):
            out.append(Finding("graph-leak", "error", label, f"graph step '{man.get('step')}' was built from "
                               f"splits {splits}", "Graphs must use train interactions only."))
        ti = (man.get("inputs") or {}).get("train_interactions")
        if ti and ti != handle.digest:
            out.append(Finding(
                "stale-graph", "warning", label,
                f"graph step '{man.get('step')}' was built from different interactions than the dataset now holds",
                "If the dataset was resplit after the graph was built, some graph edges may be current valid/test "
                "interactions. Rebuild with 'mrdib build-graph --force' (training rebuilds stale graphs itself)."))
    return out


def _held_out_only(handle: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``split`` pairs that are not also train pairs: a repeat purchase is a train edge by right, so only
    these can show that held-out interactions leaked into a graph."""
    u, i = handle.pairs(split)
    if not len(u):
        return u, i
    fresh = np.asarray(handle.csr("train")[u, i]).ravel() == 0
    return u[fresh], i[fresh]


def check_repeats(handle: Any, label: str) -> list[Finding]:
    """Test pairs that repeat a train pair of the same user (published splits keep repeat purchases).

    Not a leak: the test ranking masks train items, so such an item can never be ranked and counts as a
    miss. The bias is pessimistic and bounded by the mean, over test users, of the share of their test
    items that are repeats (the most Recall@K can lose).
    """
    u, i = handle.pairs("test")
    if not len(u):
        return []
    rep = np.asarray(handle.csr("train")[u, i]).ravel() != 0
    n_rep = int(rep.sum())
    if not n_rep:
        return []
    per_user = np.bincount(u, minlength=handle.n_users)
    seen = per_user > 0
    share = np.bincount(u, weights=rep.astype(np.float64), minlength=handle.n_users)[seen] / per_user[seen]
    return [Finding(
        "repeat-interactions", "info", label,
        f"{n_rep} of the {len(u)} test interactions of dataset '{handle.name}' repeat a train interaction of the "
        f"same user; Recall@K is lower by at most {share.mean():.4f} ({int((share > 0).sum())} users affected)",
        "Repeat purchases are masked at test time as train items, so they can never be ranked: a small, "
        "pessimistic bias, not a leak. 'mrdib resplit' makes a split without repeated pairs (it keeps each "
        "pair's earliest interaction) if you want them gone.")]


def check_random_features(run: str, dataset_dir: Path, conf: dict[str, Any]) -> list[Finding]:
    """Feature tables the run used that were extracted with random weights (a smoke-test leftover)."""
    from mrdib_cli.data.feature_store import read_meta

    out = []
    for modality, table in (conf.get("features") or {}).items():
        path = dataset_dir / "features" / str(table)
        try:
            meta = read_meta(path)
        except Exception:  # noqa: BLE001 - a missing or unreadable table is the data checks' business
            continue
        if meta.get("random_weights"):
            out.append(Finding(
                "random-features", "warning", run,
                f"its {modality} features ({table}) come from RANDOM model weights",
                "Random-weight features (--image-pretrained none --allow-random-weights) are for smoke tests; "
                "numbers trained on them say nothing about the modality. Extract features with real weights "
                "and retrain with --image-features/--text-features naming that table."))
    return out


def check_features(dataset_dir: Path, label: str) -> list[Finding]:
    from mrdib_cli.data.feature_store import list_tables, read_meta

    out = []
    if not (dataset_dir / "features").is_dir():
        return out
    for p in list_tables(dataset_dir):
        try:
            meta = read_meta(p)
        except Exception:  # noqa: BLE001 - an unreadable table is the data checks' business
            continue
        used = meta.get("interactions_used") or meta.get("splits") or []
        if isinstance(used, str):
            used = [used]
        bad = [s for s in used if s in ("valid", "test", "all")]
        if bad:
            out.append(Finding(
                "feature-leak", "error", label,
                f"feature table {p.name} was computed from {'/'.join(bad)} interactions",
                "Collaborative features fitted on held-out interactions leak the evaluation targets into the "
                "model's inputs. Recompute them from train interactions only."))
    return out


def check_mask(run: str, results: dict[str, Any]) -> list[Finding]:
    proto = results.get("protocol") or {}
    if proto.get("mask") == "train":
        return [Finding(
            "valid-unmasked", "info", run, "test ranking masked train items only; validation items stay rankable",
            "MMRec does the same, so the numbers are comparable to MMRec papers; they are slightly pessimistic "
            "because a user's validation items compete with the test items. Use --test-mask train+valid "
            "(or 'mrdib eval --mask train+valid') for the stricter protocol.")]
    return []


def check_training_warnings(run: str, results: dict[str, Any]) -> list[Finding]:
    """One finding per warning the trainer gave (first epoch of each kind)."""
    return [Finding("training-warning", "warning", run, f"epoch {w.get('epoch')}: {w.get('message')}",
                    "The trainer warned about this while the run trained (once per kind); the run's numbers stand, "
                    "but they come from a regime the method was not calibrated for. The per-epoch figures are "
                    "in metrics.jsonl ('health'), and docs/mrdib.md ('Health, per epoch') says what each means.")
            for w in results.get("warnings") or [] if isinstance(w, dict)]


def check_resume(run: str, run_dir: Path) -> list[Finding]:
    out = []
    mpath = run_dir / "metrics.jsonl"
    if mpath.exists():
        epochs = []
        for ln in mpath.read_text(encoding="utf-8").splitlines():
            if ln.strip():
                try:
                    epochs.append(int(json.loads(ln)["epoch"]))
                except (ValueError, KeyError, TypeError):
                    continue
        if epochs and epochs != list(range(1, len(epochs) + 1)):
            out.append(Finding(
                "rng-not-restored", "error", run,
                f"metrics.jsonl epochs are not 1..{len(epochs)} in order (repeated or skipped epochs)",
                "The run was restarted or resumed without restoring its state: repeated epochs mean training "
                "began again from a different random state. Its curve and results are not those of one "
                "reproducible run; retrain it, or resume with 'mrdib train --resume' which restores RNG and "
                "sampler state."))
    for rec in (_results(run_dir).get("resumes") or []):
        if isinstance(rec, dict) and rec.get("rng_restored") is False:
            out.append(Finding("rng-not-restored", "error", run,
                               f"resumed after epoch {rec.get('epoch')} without restoring the RNG state",
                               "A resumed run must continue the same random streams (negative sampling, "
                               "dropout) to reproduce an uninterrupted run."))
    last = run_dir / "checkpoints" / "last.pt"
    if last.exists() and (run_dir / "results.json").exists() is False:
        try:
            import torch

            st = torch.load(last, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - check_files names it
            st = None
        if isinstance(st, dict) and ("rng" not in st or "sampler" not in st):
            out.append(Finding("rng-not-restored", "warning", run,
                               "checkpoints/last.pt holds no RNG/sampler state",
                               "Resuming from it would continue with fresh random streams, so the resumed run "
                               "would not match an uninterrupted one."))
    return out


def check_files(run: str, run_dir: Path) -> list[Finding]:
    """The run folder's files that a later step opens, each opened as that step would: a damaged one is
    otherwise found only when a resume, diagnose or eval needs it."""
    import numpy as np
    import torch

    out = []
    for rel in ("config.json", "results.json", "checkpoints/last.pt", "checkpoints/best.pt", "embeddings.npz"):
        path = run_dir / rel
        if not path.exists():
            continue
        try:
            if rel == "config.json":
                read_run_config(path)
            elif rel.endswith(".json"):
                read_json(path)
            elif rel.endswith(".pt"):
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            else:
                with np.load(path, allow_pickle=False) as z:
                    z.files  # noqa: B018 - the archive's directory, at its end: a torn file has none
        except Exception as e:  # noqa: BLE001 - torn, foreign or hostile (code in a pickle): never loaded
            checkpoint = rel.endswith(".pt")
            out.append(Finding(
                "unreadable-checkpoint" if checkpoint else "damaged-file", "error", run,
                f"{rel} cannot be read as plain data ({type(e).__name__}): it is damaged"
                + (", or holds objects that would run code when unpickled" if checkpoint else ""),
                "Steps that need it refuse the run: restore this run's own file, or train the run again with "
                "'mrdib train --force' (never load a checkpoint with weights_only=False)."))
    return out


def check_protocols(runs: list[tuple[str, str, dict[str, Any]]]) -> list[Finding]:
    """Runs of the same dataset with different protocol fingerprints."""
    from mrdib_cli.evaluation.engine import Protocol

    by_ds: dict[str, list[tuple[str, Protocol]]] = {}
    for name, ds, results in runs:
        if results.get("protocol"):
            by_ds.setdefault(ds, []).append((name, Protocol.from_dict(results["protocol"])))
    out = []
    for ds, items in by_ds.items():
        base_name, base = items[0]
        for name, p in items[1:]:
            diff = base.differences(p)
            if diff:
                out.append(Finding(
                    "protocol-mismatch", "warning", name,
                    f"evaluated under a different protocol than '{base_name}' ({', '.join(diff)} differ)",
                    "Metrics from different protocols (split, masking, dataset version, metric definitions, "
                    "index) are different measurements; 'mrdib compare' refuses to put them side by side. "
                    "Re-evaluate both with the same options ('mrdib eval --run NAME --mask ...')."))
    return out


def check_runs(ws: Workspace, runs: list[str]) -> list[Finding]:
    """All checks on ``runs`` (and their datasets); findings sorted by severity."""
    findings: list[Finding] = []
    seen_ds: set[str] = set()
    proto_rows = []
    for name in runs:
        rdir = ws.run_dir(name)
        damaged = check_files(name, rdir)
        findings += damaged
        if any(f.message.startswith("config.json") for f in damaged):
            continue  # what it would check is unknown
        conf = read_run_config(rdir / "config.json") if (rdir / "config.json").exists() else {}
        results = _results(rdir)
        ds = str(conf.get("dataset"))
        findings += check_test_selection(ws, name)
        findings += check_mask(name, results)
        findings += check_training_warnings(name, results)
        findings += check_resume(name, rdir)
        proto_rows.append((name, ds, results))
        ds_dir = Path(conf["dataset_dir"]) if conf.get("dataset_dir") else ws.dataset_dir(ds)
        findings += check_random_features(name, ds_dir, conf)
        if str(ds_dir) not in seen_ds:
            seen_ds.add(str(ds_dir))
            findings += check_graphs(ws, ds_dir, f"dataset {ds}")
            findings += check_features(ds_dir, f"dataset {ds}")
    findings += check_protocols(proto_rows)
    return sorted(_merge_info(findings), key=lambda f: SEVERITY_ORDER.get(f.severity, 9))


def _merge_info(findings: list[Finding]) -> list[Finding]:
    """One line for the same informational note on many runs (the explanation is identical)."""
    notes = [f for f in findings if f.code == "valid-unmasked"]
    if len(notes) <= 1:
        return findings
    rest = [f for f in findings if f.code != "valid-unmasked"]
    runs = [f.run or "" for f in notes]
    shown = ", ".join(runs[:4]) + (f" (+{len(runs) - 4} more)" if len(runs) > 4 else "")
    return rest + [Finding("valid-unmasked", "info", shown, f"{len(runs)} runs: {notes[0].message}",
                           notes[0].explanation)]
