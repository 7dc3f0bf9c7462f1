"""Comparing runs: mean ± std over seeds, relative change, paired per-user significance tests.

Runs whose configurations are identical apart from the seed form one *group* (one system, several seeds).
The first group is the baseline: every other group gets its relative change and paired tests against it.
Per-user values are averaged over a group's seeds before pairing, so the tests are over users (the unit
the metrics average over), not over seeds.

Numbers are only put side by side when every run was evaluated under the same protocol (same interactions
and split, evaluated split, masking rule, metric definitions and index); otherwise
:class:`ProtocolMismatchError` (exit code 4) unless ``force``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import polars as pl

from mrdib_cli.defaults import EVAL_BATCH_USERS, KS, settled_train
from mrdib_cli.errors import DataError, ProtocolMismatchError, UsageError
from mrdib_cli.evaluation.engine import Protocol
from mrdib_cli.evaluation.runs import NOT_SETTINGS, Run, evaluate_run, result_tag
from mrdib_cli.evaluation.significance import paired_tests
from mrdib_cli.workspace import Workspace


@dataclass
class RunEval:
    """One run's saved (or freshly computed) evaluation."""

    run: Run
    protocol: Protocol
    metrics: dict[str, float]
    per_user: pl.DataFrame


@dataclass
class Group:
    """Runs sharing a configuration apart from the seed."""

    key: str
    members: list[RunEval]

    @property
    def label(self) -> str:
        names = [m.run.name for m in self.members]
        return names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1} seeds)"

    def per_user_mean(self, metrics: list[str]) -> pl.DataFrame:
        """Per-user metric averaged over the group's seeds, on users every seed evaluated."""
        frames = [m.per_user.select(["user_idx", *metrics]) for m in self.members]
        base = frames[0]
        for j, f in enumerate(frames[1:], 1):
            base = base.join(f, on="user_idx", how="inner", suffix=f"__{j}")
        return base.select(["user_idx", *[
            pl.mean_horizontal([pl.col(m)] + [pl.col(f"{m}__{j}") for j in range(1, len(frames))]).alias(m)
            for m in metrics]])


@dataclass
class Comparison:
    groups: list[Group]
    metrics: list[str]
    summary: list[dict[str, Any]]  # one row per group: label, runs, seeds, {metric: {mean, std, rel}}
    tests: list[dict[str, Any]]  # one row per (group != baseline, metric)
    protocol: Protocol
    mismatches: list[str] = field(default_factory=list)  # filled when --force overrode a refusal
    repeats: list[str] = field(default_factory=list)  # runs pooled as seeds that share one (--force)

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol.to_dict(), "metrics": self.metrics, "groups": self.summary,
                "tests": self.tests, "forced_mismatches": self.mismatches, "repeated_seeds": self.repeats}


def _settings(run: Run) -> dict[str, Any]:
    """A run's hyper-parameters, training options and plug-in options, flat (``n_layers``, ``train.lr``)."""
    c = run.config
    flat = {k: v for k, v in (c.get("hparams") or {}).items()}
    flat.update({f"train.{k}": v for k, v in settled_train(c.get("train") or {}, NOT_SETTINGS).items()})
    flat.update({f"plugin.{k}": v for k, v in (c.get("plugin") or {}).items() if k != "name"})
    return flat


def systems(groups: list[Group]) -> list[str]:
    """A name per group: backbone(+plug-in), plus the settings that tell apart groups sharing that name
    (two LightGCN settings must not appear as one "lightgcn" in a table or a figure legend)."""
    names = [g.members[0].run.label() for g in groups]
    out = list(names)
    for name in set(names):
        same = [i for i, n in enumerate(names) if n == name]
        if len(same) < 2:
            continue
        flats = [_settings(groups[i].members[0].run) for i in same]
        keys = sorted({k for f in flats for k in f if any(g.get(k) != f.get(k) for g in flats)})
        for i, f in zip(same, flats):
            extra = ", ".join(f"{k}={f.get(k, 'unset')}" for k in keys)
            out[i] = f"{name} ({extra})" if extra else f"{name} [{groups[i].label}]"
    return out


def load_evals(ws: Workspace, names: list[str], split: str = "test", mask: str = "train", index: str = "flat",
               ks: tuple[int, ...] = KS, batch_users: int = EVAL_BATCH_USERS,
               on_info: Callable[[str], None] | None = None, unfinished: bool = False) -> list[RunEval]:
    """Saved results of each run under the protocol tag; runs without them are evaluated (and saved) now. A run
    killed before it finished is refused unless ``unfinished`` (then said through ``on_info``): its best epoch
    so far would sit beside finished runs as if it were one of them."""
    if len(set(names)) != len(names):
        raise UsageError("a run is listed twice; list each run once")
    tag = result_tag(split, mask, index, ks)
    evals = []
    for name in names:
        run = Run.open(ws, name)
        if why := run.unfinished():
            if not unfinished:
                raise UsageError(f"{why}, or pass --force to compare that epoch")
            if on_info:
                on_info(f"{why}; compared anyway because of --force")
        saved, why = run.saved_result(tag)
        if saved is None:
            if on_info:
                on_info(f"run '{name}' {why}; evaluating it now")
            res, _ = evaluate_run(run, split=split, mask=mask, ks=ks, batch_users=batch_users, index=index)
            evals.append(RunEval(run, res.protocol, res.metrics, res.per_user))
            continue
        again = eval_command(name, split, mask, index, ks)
        try:
            per_user = pl.read_parquet(run.dir / f"per_user-{tag}.parquet")
        except Exception as e:  # polars raises several error types for corrupt files
            raise DataError(f"run '{name}': per_user-{tag}.parquet unreadable ({type(e).__name__}); "
                            f"re-run '{again}'") from None
        proto = Protocol.from_dict(saved["protocol"])
        if (proto.split, proto.mask, proto.index) != (split, mask, index):
            raise DataError(f"run '{name}': eval-{tag}.json holds a {proto.split}/{proto.mask}/{proto.index} "
                            f"evaluation; re-run '{again}' to rewrite it")
        if off := _not_its_users_mean(saved["metrics"], per_user):
            raise DataError(f"run '{name}': eval-{tag}.json says {off}, which its per-user table does not give "
                            f"(the file was edited or damaged); re-run '{again}' to rewrite it")
        evals.append(RunEval(run, proto, dict(saved["metrics"]), per_user))
    return evals


def eval_command(run: str, split: str, mask: str, index: str, ks: tuple[int, ...]) -> str:
    """The ``mrdib eval`` command that rewrites one protocol's saved evaluation (its options, not the
    defaults')."""
    opts = [f"--split {split}" if split != "test" else "", f"--mask {mask}" if mask != "train" else "",
            f"--index {index}" if index != "flat" else "", "--k " + " ".join(map(str, ks)) if tuple(ks) != KS else ""]
    return " ".join(["mrdib eval --run", run, *[o for o in opts if o]])


def _not_its_users_mean(metrics: dict[str, float], per_user: pl.DataFrame) -> str | None:
    """The first saved figure that is not the mean over users of its per-user column (the metrics are
    user-macro averages, so they are exactly that mean, up to summation order), e.g. ``recall@20 0.5 (its
    users' mean is 0.0253)``; None when all agree. The per-user table is the digest-checked part of the unit."""
    for m, v in metrics.items():
        if m in per_user.columns:
            mean = float(per_user[m].mean())
            if not abs(float(v) - mean) <= 1e-9 * max(1.0, abs(mean)):
                return f"{m} {float(v):.6g} (its users' mean is {mean:.6g})"
    return None


def _repeated_seeds(groups: list[Group]) -> list[str]:
    """Runs of one configuration with the same seed: repeats of one run, not seeds. Pooled, they would show a
    standard deviation of about 0 and count twice in n."""
    found = []
    for g in groups:
        first: dict[Any, str] = {}
        for e in g.members:
            if e.run.seed in first:
                found.append(f"runs '{first[e.run.seed]}' and '{e.run.name}' have the same configuration and the "
                             f"same seed ({e.run.seed})")
            first.setdefault(e.run.seed, e.run.name)
    return found


def check_protocols(evals: list[RunEval], force: bool = False) -> list[str]:
    """Refuse (or with ``force`` list) protocol differences between the first run and the others."""
    base = evals[0]
    problems = []
    for e in evals[1:]:
        diff = base.protocol.differences(e.protocol)
        if diff:
            a, b = base.protocol.fingerprint_fields(), e.protocol.fingerprint_fields()
            parts = []
            for k in diff:
                va, vb = a.get(k), b.get(k)
                if isinstance(va, str) and isinstance(vb, str) and len(va) > 20:
                    va, vb = va[:19] + "…", vb[:19] + "…"
                parts.append(f"{k}: {va} vs {vb}" if not isinstance(va, dict) else f"{k} differ")
            problems.append(f"'{base.run.name}' and '{e.run.name}' ({'; '.join(parts)})")
    if problems and not force:
        raise ProtocolMismatchError(
            f"runs were evaluated under different protocols: {problems[0]}"
            f"{f' and {len(problems) - 1} more' if len(problems) > 1 else ''}; re-evaluate them with the same "
            "dataset, --split, --mask and --index, or pass --force to compare anyway")
    return problems


def default_metrics(evals: list[RunEval]) -> list[str]:
    """Recall and NDCG at every cut-off all runs have (the numbers papers report)."""
    common = set.intersection(*[set(e.metrics) for e in evals])
    ks = sorted({int(m.split("@")[1]) for m in common if "@" in m})
    return [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks if f"{m}@{k}" in common]


def compare(evals: list[RunEval], metrics: list[str] | None = None, force: bool = False) -> Comparison:
    """Group runs by configuration, summarise mean ± std, test every group against the first."""
    if not evals:
        raise UsageError("give at least one run to compare")
    mismatches = check_protocols(evals, force)
    metrics = list(metrics) if metrics else default_metrics(evals)
    for m in metrics:
        missing = [e.run.name for e in evals if m not in e.metrics or m not in e.per_user.columns]
        if missing:
            raise UsageError(f"metric '{m}' is not in the results of run(s) {', '.join(missing)}; "
                             "re-evaluate with a matching --k or choose another --metric")
    groups: dict[str, Group] = {}
    for e in evals:
        key = e.run.config_key()
        groups.setdefault(key, Group(key, [])).members.append(e)
    glist = list(groups.values())
    repeats = _repeated_seeds(glist)
    if repeats and not force:
        raise UsageError(f"{repeats[0]}: repeats of one run, not two seeds; compare one of them, train the other "
                         "with another --seed, or pass --force")
    summary = []
    base_means: dict[str, float] = {}
    for gi, g in enumerate(glist):
        row: dict[str, Any] = {"label": g.label, "runs": [m.run.name for m in g.members],
                               "system": g.members[0].run.label(),
                               "seeds": [m.run.seed for m in g.members], "metrics": {}}
        for m in metrics:
            vals = np.array([e.metrics[m] for e in g.members], dtype=np.float64)
            mean = float(vals.mean())
            std = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
            if gi == 0:
                base_means[m] = mean
            rel = (mean - base_means[m]) / base_means[m] if base_means[m] else float("nan")
            row["metrics"][m] = {"mean": mean, "std": std, "n": int(len(vals)), "rel_change": rel}
        summary.append(row)
    for row, system in zip(summary, systems(glist)):
        row["system"] = system
    tests = []
    if len(glist) > 1:
        base_pu = glist[0].per_user_mean(metrics)
        for g in glist[1:]:
            joined = base_pu.join(g.per_user_mean(metrics), on="user_idx", how="inner", suffix="__b")
            for m in metrics:
                t = paired_tests(joined[m].to_numpy(), joined[f"{m}__b"].to_numpy())
                tests.append({"group": g.label, "baseline": glist[0].label, "metric": m, **t.to_dict()})
    return Comparison(groups=glist, metrics=metrics, summary=summary, tests=tests,
                      protocol=evals[0].protocol, mismatches=mismatches, repeats=repeats)
