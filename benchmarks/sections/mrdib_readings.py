"""The MRdIB readings study (issue #25): tuned plain backbones against the plug-in's readings at their
validation-selected alphas, on Amazon Scientific over six splits, with what MMRec's select-on-test rule would
have reported beside every honest number.

The design is bounded to what one 2-core CPU trains in about about two hours (about 130 runs); every cut is a named
constant below and is printed with the table. Protocol, fixed before any number is seen and applied mechanically:

1. **Fair baselines.** Each plain backbone is tuned on validation over its grid (``Backbone.mmrec_grid``, the
   grids of examples/sweeps/) by coordinate search: the first axis at the backbone's defaults, then each next
   axis at the best point so far; chronological split, ``SWEEP_SEEDS``; best valid Recall@20 wins. Every MRdIB
   run below uses the tuned backbone's hyper-parameters.
2. **Alphas per reading** (``READINGS``: today's and the lab's conventions; on ``DEEP_BACKBONES`` both, on the
   others today's only): alpha_kl over the paper's grid at the default alpha_uni and alpha_red, then (on
   ``UNI_BACKBONES``) alpha_uni over the grid at the best alpha_kl (alpha_red stays at its default: the
   redundancy term is nearly inert, see the ablation).
3. **Screen of the single conventions** (``SCREEN``): each of the lab's conventions switched on alone over
   today's reading at today's selected alphas, on ``SCREEN_BACKBONES``, chronological split, ``SWEEP_SEEDS``:
   which convention moves validation, and which way.
4. **Test.** Tuned plain vs each reading at its selected alphas on the chronological split (``ctx.seeds``);
   on ``DEEP_BACKBONES`` also plain vs the reading best on validation over the five leave-one-out re-splits
   (``LOO_SEEDS``); Recall and NDCG at 5, 10 and 20; paired t-test and Wilcoxon
   over the pooled (split, seed, user) pairs. Plus ``--mrdib`` with no option on the chronological split for
   ``DEFAULT_BACKBONES`` (the default's acceptance check).
5. **Selection bias** (labelled): per reading, MMRec's rule over the step-2 runs (the point with the best *test*
   score) against the validation-selected one; and the null control, the same rule over ``NULL_SEEDS`` seeds of
   the tuned plain backbone treated as configurations.
6. **Evidence for the default.** Per reading, the mean relative valid Recall@20 gain over tuned plain at its
   selected alphas, over the backbones that ran every reading (``DEEP_BACKBONES``), splits and seeds (step-4
   runs); and the step-2 point common to those backbones with the best mean relative valid gain. The default of ``--mrdib`` follows this table (docs/mrdib.md).

Backbones run as independent pipelines in threads; ``train_many`` never trains more than ``ctx.jobs`` at once.
``--quick`` is a smoke check on the offline demo (two backbones, two alpha points, one seed, capped epochs): it
proves the pipeline end to end and measures nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from statistics import median
from typing import Any

from benchmarks.sections._common import Context, TrainSpec, fmt_mean_std, md_table, mean_std, paired, train_many

TITLE = "MRdIB readings on Amazon Scientific: tuned baselines, selected alphas, selection bias"
ORDER = 12

BACKBONES = ["vbpr", "lgmrec", "freedom", "mgcn"]
QUICK_BACKBONES = ["vbpr", "lgmrec"]
#: the paper's per-alpha grid
ALPHAS = [1e-4, 1e-3, 5e-3, 1e-2, 5e-2]
#: the readings searched and tested in full: today's and the lab's conventions
READINGS: dict[str, dict[str, Any]] = {"current": {"preset": "current"}, "paper": {"preset": "paper"}}
#: each of the lab's conventions alone over today's reading (screened on validation, step 3)
SCREEN: dict[str, dict[str, Any]] = {
    "mean KL, prior 0.5": {"kl_reduction": "mean", "prior_std": 0.5},
    "input placement, raw units": {"placement": "input", "units": "raw"},
    "dual path": {"dual_path": True},
    "independent decoders": {"unique_decoders": "independent"},
    "redundancy: 5 critic steps, no gate": {"minmax": "step", "critic_steps": 5, "red_gate": "always"},
    "synergy head": {"synergy_head": "mlp"},
}
SCREEN_BACKBONES = ["vbpr"]
DEFAULT_BACKBONES = ["vbpr", "lgmrec"]
SWEEP_SEEDS = [1]
#: the acceptance backbones: both readings, the leave-one-out re-splits, and the first free training slots
#: (the others: today's reading only, the chronological split only)
DEEP_BACKBONES = ["vbpr", "lgmrec"]
#: the backbones whose alpha_uni is searched too (the others keep the default alpha_uni)
UNI_BACKBONES = ["vbpr"]
LOO_SEEDS = [1]
NULL_SEEDS = [1, 2, 3]
METRICS6 = [f"{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10, 20)]
KS = ["--set", "ks=[5,10,20]"]
QUICK_EPOCHS = 3


# ------------------------------------------------------------------------------------------------ specs
def _tag(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def hp_args(hp: dict[str, Any]) -> list[str]:
    """``--set`` arguments for a backbone grid point (``train.lr`` or a hyper-parameter)."""
    return [a for k, v in sorted(hp.items()) for a in ("--set", f"{k}={v}")]


def make_spec(ctx: Context, ds: str, bb: str, seed: int, hp: dict[str, Any],
              opts: dict[str, Any] | None) -> TrainSpec:
    """One run: backbone ``bb`` at grid point ``hp``, plain (``opts`` None) or with MRdIB options ``opts``.

    ``opts == {}`` is ``--mrdib`` with no option: its name carries the defaults it resolves to today, so a
    changed default is a new run, never a stale reuse."""
    from mrdib_cli.mrdib.objectives import MRdIBConfig

    cap = ["--epochs", str(QUICK_EPOCHS)] if ctx.quick else []
    arm = "plain" if opts is None else _tag(opts or {"defaults": asdict(MRdIBConfig.resolve({}))})
    name = f"rd-{bb}-{ds}-s{seed}-{_tag(hp)}-{arm}"
    return TrainSpec(dataset=ds, backbone=bb, seed=seed, name=name, mrdib=opts, args=[*KS, *hp_args(hp), *cap])


def grid_axes(bb: str, quick: bool) -> dict[str, list[Any]]:
    """The backbone's declared grid (quick: the first two values of its first axis)."""
    from mrdib_cli.models.base import get_backbone

    axes = dict(get_backbone(bb).mmrec_grid)
    if quick:
        first = next(iter(axes))
        axes = {first: axes[first][:2]}
    return axes


def backbone_grid(bb: str, quick: bool) -> list[dict[str, Any]]:
    """Every point of the backbone's grid (what a full search would train)."""
    axes = grid_axes(bb, quick)
    return [dict(zip(axes, vals)) for vals in itertools.product(*axes.values())]


def backbone_defaults(bb: str, axes: dict[str, list[Any]]) -> dict[str, Any]:
    """The backbone's own value of every grid axis (``train.*`` axes: the trainer's default)."""
    from mrdib_cli.models.base import get_backbone
    from mrdib_cli.training.config import TrainConfig

    d = get_backbone(bb).defaults
    return {k: getattr(TrainConfig(), k.split(".", 1)[1]) if k.startswith("train.") else d[k] for k in axes}


def alpha_stage(stage: str, best_kl: float | None, quick: bool) -> list[dict[str, float]]:
    """Step 2: alpha_kl over the grid at the default alpha_uni / alpha_red, or alpha_uni at the best alpha_kl."""
    from mrdib_cli.mrdib.objectives import MRdIBConfig

    d = MRdIBConfig()
    grid = [ALPHAS[0], ALPHAS[2]] if quick else ALPHAS
    if stage == "kl":
        return [{"alpha_kl": k, "alpha_uni": d.alpha_uni, "alpha_red": d.alpha_red} for k in grid]
    return [] if quick else [{"alpha_kl": best_kl, "alpha_uni": u, "alpha_red": d.alpha_red} for u in grid]


# ------------------------------------------------------------------------------------------------ steps
def valid_mean(runs: list[dict[str, Any]]) -> float:
    return mean_std([r["valid"]["recall@20"] for r in runs])[0]


def pick(groups: dict[str, list[dict[str, Any]]]) -> str:
    """The key whose runs have the best mean valid Recall@20 (ties: the first key)."""
    keys = list(groups)
    scores = [valid_mean(groups[k]) for k in keys]
    return keys[scores.index(max(scores))]


def with_at5(ctx: Context, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs with every METRICS6 value (the shared reader keeps @10/@20 only)."""
    for r in runs:
        res = json.loads((ctx.ws / "runs" / r["run"] / "results.json").read_text())
        r["test6"] = {m: res["test"][m] for m in METRICS6}
        r["valid6"] = {m: res["valid"][m] for m in METRICS6}
    return runs


def tune_plain(ctx: Context, bb: str) -> dict[str, Any]:
    """Step 1 for one backbone: coordinate search over its grid; returns the selection and every point tried."""
    axes = grid_axes(bb, ctx.quick)
    best = backbone_defaults(bb, axes)
    tried: dict[str, dict[str, Any]] = {}
    for axis, values in axes.items():
        points = [{**best, axis: v} for v in values]
        specs = [make_spec(ctx, "sci", bb, s, hp, None) for hp in points for s in SWEEP_SEEDS]
        done = {r["run"]: r for r in train_many(ctx, specs, _prio(bb))}
        groups = {_tag(hp): [done[make_spec(ctx, "sci", bb, s, hp, None).name] for s in SWEEP_SEEDS]
                  for hp in points}
        for hp in points:
            tried[_tag(hp)] = {"hp": hp, "valid_recall@20": valid_mean(groups[_tag(hp)])}
        best = next(hp for hp in points if _tag(hp) == pick(groups))
    return {"hp": best, "grid_size": len(backbone_grid(bb, ctx.quick)), "points_trained": len(tried),
            "valid_recall@20": tried[_tag(best)]["valid_recall@20"], "table": list(tried.values())}


def readings_for(bb: str, quick: bool = False) -> list[str]:
    """The readings a backbone is searched and tested with."""
    return list(READINGS) if bb in DEEP_BACKBONES or quick else ["current"]


def _prio(bb: str) -> int:
    """The acceptance backbones' runs take free slots first."""
    return 0 if bb in DEEP_BACKBONES else 1


def select_alphas(ctx: Context, bb: str, hp: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list]]:
    """Step 2 for one backbone, every reading at once: returns ({reading: selection}, {reading: every run})."""
    def train(points: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
        specs = [make_spec(ctx, "sci", bb, s, hp, {**READINGS[n], **p}) for n, ps in points.items()
                 for p in ps for s in SWEEP_SEEDS]
        done = with_at5(ctx, train_many(ctx, specs, _prio(bb)))
        return {n: {json.dumps(p, sort_keys=True): [r for r in done if r["mrdib"] == {**READINGS[n], **p}]
                    for p in ps} for n, ps in points.items()}

    names = readings_for(bb, ctx.quick)
    first = train({n: alpha_stage("kl", None, ctx.quick) for n in names})
    best_kl = {n: json.loads(pick(g))["alpha_kl"] for n, g in first.items()}
    second = train({n: alpha_stage("uni", best_kl[n], ctx.quick) if bb in UNI_BACKBONES else [] for n in names})
    sel, every = {}, {}
    for n in names:
        groups = {**first[n], **second[n]}
        key = pick(groups)
        sel[n] = {"selected": json.loads(key), "valid_recall@20": valid_mean(groups[key]),
                  "table": [{"point": json.loads(k), "valid_recall@20": valid_mean(v)} for k, v in groups.items()]}
        every[n] = [dict(r, point=k) for k, rs in groups.items() for r in rs]
    return sel, every


def screen(ctx: Context, bb: str, hp: dict[str, Any], current: dict[str, float]) -> dict[str, Any]:
    """Step 3: each convention alone over today's reading at today's selected alphas (validation only)."""
    base = {**READINGS["current"], **current}
    specs = {n: [make_spec(ctx, "sci", bb, s, hp, {**base, **sw}) for s in SWEEP_SEEDS] for n, sw in SCREEN.items()}
    done = {r["run"]: r for r in train_many(ctx, [sp for g in specs.values() for sp in g], _prio(bb))}
    return {n: valid_mean([done[sp.name] for sp in g]) for n, g in specs.items()}


def grid_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Step-2 runs as :func:`mrdib_cli.evaluation.selection.selection_bias` rows (one per distinct run)."""
    seen: dict[str, dict[str, Any]] = {}
    for r in runs:
        seen.setdefault(r["run"], {"run": r["run"], "config": r["point"], "seed": r["seed"],
                                   "valid": r["valid"], "test": r["test"]})
    return list(seen.values())


def run_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"n": len(runs), "test": {m: [r["test6"][m] for r in runs] for m in METRICS6},
            "valid_recall@20": [r["valid"]["recall@20"] for r in runs],
            "best_epoch": [r["best_epoch"] for r in runs],
            "train_s_per_epoch": [r["train_s_per_epoch"] for r in runs]}


def rel_valid_gain(arm: list[dict[str, Any]], plain: list[dict[str, Any]]) -> float:
    """Mean over (split, seed) pairs of the relative valid Recall@20 gain of ``arm`` over ``plain``."""
    base = {(r["dataset"], r["seed"]): r["valid"]["recall@20"] for r in plain}
    gains = [r["valid"]["recall@20"] / base[(r["dataset"], r["seed"])] - 1 for r in arm
             if base.get((r["dataset"], r["seed"]))]
    return mean_std(gains)[0] if gains else float("nan")


def test_specs(ctx: Context, splits: list[str], bb: str, hp: dict[str, Any],
               opts: dict[str, Any] | None, resplits: bool) -> list[TrainSpec]:
    """Step 4's runs of one arm: the chronological split at every seed, and with ``resplits`` each
    leave-one-out re-split at ``LOO_SEEDS``."""
    return [make_spec(ctx, ds, bb, s, hp, opts) for ds in splits
            for s in (ctx.seeds if ds == "sci" else LOO_SEEDS if resplits else [])]


def compare(ctx: Context, plain: list[dict[str, Any]], arm: list[dict[str, Any]]) -> dict[str, Any]:
    """The arm's summary and its pooled paired tests against the plain runs of the same (split, seed)s."""
    by_key = {(r["dataset"], r["seed"]): r for r in plain}
    base = [by_key[(r["dataset"], r["seed"])] for r in arm]
    return {**run_summary(arm), "paired": paired(base, arm, METRICS6), "valid_gain": rel_valid_gain(arm, base)}


def pipeline(ctx: Context, bb: str, splits: list[str], null_seeds: list[int]) -> dict[str, Any]:
    """Steps 1 to 5 for one backbone (independent of the others, so backbones run side by side)."""
    from mrdib_cli.evaluation.selection import null_control, selection_bias

    ctx.log(f"[{bb}] 1. tuning the plain backbone")
    plain = tune_plain(ctx, bb)
    hp = plain["hp"]
    ctx.log(f"[{bb}] 2. alphas per reading at {hp}")
    alphas, grids = select_alphas(ctx, bb, hp)
    scr = None
    if bb in SCREEN_BACKBONES and not ctx.quick:
        ctx.log(f"[{bb}] 3. screening the single conventions")
        scr = screen(ctx, bb, hp, alphas["current"]["selected"])
    ctx.log(f"[{bb}] 4. test: every split and seed")
    names = readings_for(bb, ctx.quick)
    on_resplits = max(names, key=lambda n: alphas[n]["valid_recall@20"]) if bb in DEEP_BACKBONES else None
    arms = {"plain": None, **{n: {**READINGS[n], **alphas[n]["selected"]} for n in names}}
    specs = {a: test_specs(ctx, splits, bb, hp, o, a in ("plain", on_resplits) and on_resplits is not None)
             for a, o in arms.items()}
    nulls = [make_spec(ctx, "sci", bb, s, hp, None) for s in null_seeds]
    unique = list({sp.name: sp for sp in [*itertools.chain(*specs.values()), *nulls]}.values())
    by_name = {r["run"]: r for r in with_at5(ctx, train_many(ctx, unique, _prio(bb)))}
    res = {a: [by_name[sp.name] for sp in g] for a, g in specs.items()}
    test = {"plain": run_summary(res["plain"])}
    if on_resplits:  # the rows tested on the chronological split only are read against these
        test["plain, chronological"] = run_summary([r for r in res["plain"] if r["dataset"] == "sci"])
    test.update({n: compare(ctx, res["plain"], res[n]) for n in names})
    bias = {f"{bb} + MRdIB ({n})": selection_bias(grid_rows(grids[n]), select_on_test=True) for n in names}
    bias[f"{bb} plain, {len(null_seeds)} seeds as configurations (null control)"] = null_control(
        [{"seed": by_name[sp.name]["seed"], "valid": by_name[sp.name]["valid"], "test": by_name[sp.name]["test"]}
         for sp in nulls], select_on_test=True)
    return {"plain": plain, "alphas": alphas, "screen": scr, "test": test, "bias": bias, "grids": grids,
            "plain_runs": res["plain"]}


def run(ctx: Context) -> dict[str, Any]:
    from benchmarks.sections import quality_demo, quality_scientific

    if ctx.quick:  # the offline demo under the Scientific split's name, so every step below is the same
        quality_demo.build_dataset(ctx)
        splits = ["sci"]
        _alias_demo(ctx)
    else:
        splits = quality_scientific.prepare(ctx)
    backbones = QUICK_BACKBONES if ctx.quick else BACKBONES
    null_seeds = [ctx.seeds[0], ctx.seeds[0] + 1] if ctx.quick else NULL_SEEDS
    with ThreadPoolExecutor(max_workers=len(backbones)) as pool:
        per = dict(zip(backbones, pool.map(lambda bb: pipeline(ctx, bb, splits, null_seeds), backbones)))
    out: dict[str, Any] = {
        "splits": splits, "seeds": ctx.seeds, "sweep_seeds": SWEEP_SEEDS, "loo_seeds": LOO_SEEDS,
        "deep_backbones": DEEP_BACKBONES, "uni_backbones": UNI_BACKBONES,
        "readings": READINGS, "screen_options": SCREEN, "alpha_grid": ALPHAS,
        "epochs_cap": QUICK_EPOCHS if ctx.quick else None,
        **{k: {bb: per[bb][k] for bb in backbones} for k in ("plain", "alphas", "test")},
        "screen": {bb: per[bb]["screen"] for bb in backbones if per[bb]["screen"] is not None},
        "bias": {k: v for bb in backbones for k, v in per[bb]["bias"].items()}}
    every = [bb for bb in backbones if set(readings_for(bb, ctx.quick)) == set(READINGS)]
    out["default_evidence"] = default_evidence(out, {(bb, n): per[bb]["grids"][n] for bb in every
                                                     for n in READINGS}, every, READINGS)
    ctx.log(f"5. --mrdib with no option on the chronological split: {DEFAULT_BACKBONES}")
    from mrdib_cli.mrdib.objectives import MRdIBConfig

    out["default_options"] = asdict(MRdIBConfig.resolve({}))
    out["trained"] = trained(ctx)
    for bb in [b for b in DEFAULT_BACKBONES if b in backbones]:
        hp = out["plain"][bb]["hp"]
        runs = with_at5(ctx, train_many(ctx, [make_spec(ctx, "sci", bb, s, hp, {}) for s in ctx.seeds]))
        out["test"][bb]["--mrdib"] = compare(ctx, per[bb]["plain_runs"], runs)
    return out


def trained(ctx: Context) -> dict[str, float]:
    """Every finished run of the study in the workspace and their summed wall time: the section may be resumed
    many times, so its own wall time says little about what the table cost."""
    stamps = [json.loads(p.read_text()) for p in (ctx.ws / "runs").glob("rd-*/bench-spec.json")]
    return {"runs": len(stamps), "wall_h": sum(s["wall_s"] for s in stamps) / 3600}


def _alias_demo(ctx: Context) -> None:
    """Quick mode: the demo dataset is imported under the name the study uses for the chronological split."""
    from benchmarks.sections._common import cli

    if not (ctx.ws / "datasets" / "sci" / "dataset.json").exists():
        cli(ctx, "--quiet", "resplit", "demo", "-n", "sci", "--scheme", "loo", "--seed", "1")


def default_evidence(out: dict[str, Any], grids: dict[tuple[str, str], list[dict[str, Any]]],
                     backbones: list[str], readings: dict[str, Any]) -> dict[str, Any]:
    """Step 6: per reading, the mean relative valid gain at the selected alphas over backbones x splits, and
    the step-2 point (common to every backbone) with the best mean relative valid gain over backbones."""
    per_reading = {name: mean_std([out["test"][bb][name]["valid_gain"] for bb in backbones])[0]
                   for name in readings}
    common = {}
    for name in readings:
        points = {r["point"] for bb in backbones for r in grids[(bb, name)]}
        shared = [p for p in points if all(any(r["point"] == p for r in grids[(bb, name)]) for bb in backbones)]
        for p in shared:
            gains = [valid_mean([r for r in grids[(bb, name)] if r["point"] == p])
                     / out["plain"][bb]["valid_recall@20"] - 1 for bb in backbones]
            common[(name, p)] = mean_std(gains)[0]
    best = max(common, key=common.get) if common else None
    point = None if best is None else {"reading": best[0], "point": json.loads(best[1]),
                                       "mean_valid_gain": common[best]}
    return {"selected_alphas": per_reading, "common_point": point, "choice": choose_default(per_reading, point)}


def choose_default(per_reading: dict[str, float], point: dict[str, Any] | None) -> dict[str, Any]:
    """The rule for ``--mrdib``'s default, fixed before the study ran: the best common point's reading and
    alphas when that reading gains on validation at its selected alphas and the point itself gains on
    validation; otherwise the lab's conventions at the paper's alphas (no reading has earned the default)."""
    if point and per_reading.get(point["reading"], float("nan")) > 0 and point["mean_valid_gain"] > 0:
        return {"options": {**READINGS[point["reading"]], **point["point"]}, "why": "gains on validation"}
    return {"options": {"preset": "paper"}, "why": "no reading gains on validation"}


# ------------------------------------------------------------------------------------------------ render
def _p(p: float) -> str:
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _opts(o: dict[str, Any]) -> str:
    return ", ".join(f"{k.replace('alpha_', 'α_')} {v:g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in sorted(o.items())) or "defaults"


def _ordered(d: dict[str, Any], order: list[str]) -> list[tuple[str, Any]]:
    """``d``'s items in ``order`` (the stored JSON has sorted keys), unknown keys last."""
    return sorted(d.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))


def render(res: dict[str, Any]) -> str:
    from mrdib_cli.evaluation.selection import bias_table

    cap = (f" **Quick mode: the offline demo, training capped at {res['epochs_cap']} epochs: a smoke check of the "
           "protocol, not a result.**" if res.get("epochs_cap") else "")
    deep = ", ".join(res.get("deep_backbones", BACKBONES))
    parts = [f"Splits {', '.join(res['splits'])}: the chronological split at seeds {res['seeds']}; on {deep} "
             f"also each leave-one-out re-split at seeds {res.get('loo_seeds', res['seeds'])} (plain and the "
             f"reading best on validation). Both readings on {deep}, today's elsewhere; alpha_uni searched on "
             f"{', '.join(res.get('uni_backbones', BACKBONES))}. Selection on the chronological split at seeds "
             f"{res['sweep_seeds']}; alpha grid {res['alpha_grid']}. Test metrics at the best-validation epoch. "
             "The protocol and its bounds: benchmarks/sections/mrdib_readings.py." + cap
             + (f" Trained runs: {res['trained']['runs']}, summed training wall time {res['trained']['wall_h']:.1f} h "
                "(two at a time)." if res.get("trained") else ""), "",
             "### Tuned plain backbones (selected on validation over the backbone's grid)", ""]
    parts.append(md_table(["backbone", "grid points", "trained (coordinate search)", "selected", "valid R@20"],
                          [[bb, p["grid_size"], p.get("points_trained", p["grid_size"]), _opts(p["hp"]),
                            f"{p['valid_recall@20']:.4f}"] for bb, p in _ordered(res["plain"], BACKBONES)]))
    parts += ["", "### Alphas selected on validation, per reading", ""]
    rows = [[bb, name, _opts(a["selected"]), f"{a['valid_recall@20']:.4f}",
             f"{100 * (a['valid_recall@20'] / res['plain'][bb]['valid_recall@20'] - 1):+.1f}%"]
            for bb, per in _ordered(res["alphas"], BACKBONES) for name, a in _ordered(per, list(READINGS))]
    parts += [md_table(["backbone", "reading", "selected alphas", "valid R@20", "vs tuned plain"], rows), ""]
    if res.get("screen"):
        parts += _render_screen(res)
    parts += ["### Tuned plain vs each reading (pooled per-user paired tests on R@20)", "",
              "s/epoch: the median training seconds per epoch of the arm's runs (CPU, one thread, two runs at a "
              "time): what the reading costs.", ""]
    for bb, rows_bb in _ordered(res["test"], BACKBONES):
        parts += [f"**{bb}** (tuned: {_opts(res['plain'][bb]['hp'])}; each ΔR@20 pairs a row's runs with the "
                  "plain runs of the same splits and seeds)", "", _test_table(rows_bb), ""]
    if res.get("default_options"):
        d = res["default_options"]
        parts += [f"`--mrdib` rows: the default at the time of the run (preset {d['preset']}, "
                  f"{_opts({k: d[k] for k in ('alpha_kl', 'alpha_uni', 'alpha_red')})}), chronological split only.",
                  ""]
    parts += ["### What MMRec's select-on-test rule would have reported", "",
              "Per seed, the alpha point with the best test Recall@20 against the one selected on validation; the "
              "null control applies the same rule to seeds of the tuned plain backbone.", "",
              bias_table(res["bias"]), ""]
    return "\n".join(parts + _render_evidence(res["default_evidence"]))


def _test_table(rows_bb: dict[str, Any]) -> str:
    rows = []
    for name, r in _ordered(rows_bb, ["plain", "plain, chronological", "--mrdib", *READINGS]):
        cells = [name, r["n"]] + [fmt_mean_std(r["test"][m]) for m in METRICS6]
        cells.append(f"{median(r['train_s_per_epoch']):.2f}" if r.get("train_s_per_epoch") else "")
        if name.startswith("plain"):
            cells += ["", "", "", ""]
        else:
            p = r["paired"]["recall@20"]
            cells += [f"{100 * p['rel']:+.1f}%", _p(p["p_ttest"]), _p(p["p_wilcoxon"]),
                      f"{100 * r['valid_gain']:+.1f}%"]
        rows.append(cells)
    return md_table(["arm", "runs", "R@5", "R@10", "R@20", "N@5", "N@10", "N@20", "s/epoch", "ΔR@20", "p (t)",
                     "p (Wilcoxon)", "Δ valid R@20"], rows)


def _render_screen(res: dict[str, Any]) -> list[str]:
    """Step 3's table: each convention alone over today's reading at today's selected alphas (validation)."""
    rows = []
    for bb, per in _ordered(res["screen"], BACKBONES):
        ref = res["alphas"][bb]["current"]["valid_recall@20"]
        rows += [[bb, name, f"{v:.4f}", f"{100 * (v / ref - 1):+.1f}%"] for name, v in per.items()]
    return ["### Each convention alone (validation, chronological split)", "",
            "Today's reading at its selected alphas with one of the lab's conventions switched on; the change is "
            "against today's reading at the same alphas.", "",
            md_table(["backbone", "convention", "valid R@20", "vs current"], rows), ""]


def _render_evidence(ev: dict[str, Any]) -> list[str]:
    gains = "; ".join(f"{k} {100 * v:+.1f}%" for k, v in ev["selected_alphas"].items())
    out = ["### Evidence for the default", "",
           f"Mean relative valid R@20 gain over tuned plain at each reading's selected alphas, over the backbones "
           f"that ran every reading, their splits and seeds: {gains}."]
    if ev["common_point"]:
        c = ev["common_point"]
        out.append(f"Best alpha point common to those backbones: {c['reading']} at {_opts(c['point'])}, mean "
                   f"relative valid R@20 gain {100 * c['mean_valid_gain']:+.1f}%.")
    if ev.get("choice"):
        ch = ev["choice"]
        out.append(f"Default of `--mrdib` by the rule fixed before the run ({ch['why']}): {_opts(ch['options'])}.")
    return out
