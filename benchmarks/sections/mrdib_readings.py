"""The MRdIB readings study (issue #25): tuned plain backbones against each reading of the plug-in at its
validation-selected alphas, on Amazon Scientific over six splits, with what MMRec's select-on-test rule would
have reported beside every honest number.

Protocol, fixed before any number is seen and applied mechanically:
1. **Fair baselines.** Each plain backbone is tuned on validation over its grid (``Backbone.mmrec_grid``,
   the grids of examples/sweeps/), chronological split, sweep seeds; best mean valid Recall@20 wins. Every
   MRdIB run below uses the tuned backbone's hyper-parameters.
2. **Alphas per reading.** For each reading (``READINGS``: today's, the lab's conventions, and each
   convention switched on alone) and backbone: alpha_kl x alpha_uni over the paper's grid at alpha_red
   0.05, then alpha_red over the paper's grid at the best pair (coordinate search); best mean valid Recall@20.
3. **Test.** Tuned plain vs each reading at its selected alphas on the chronological split and the five
   leave-one-out re-splits, every seed; Recall and NDCG at 5, 10 and 20; paired t-test and Wilcoxon over the
   pooled (split, seed, user) pairs. Plus ``--mrdib`` with no option on the chronological split (the default's
   acceptance check).
4. **Selection bias** (labelled): per reading, MMRec's rule over the step-2 grid runs (the point with the best
   *test* score, per seed) against the validation-selected one; and the null control, the same rule over
   ``NULL_SEEDS`` seeds of the tuned plain backbone treated as configurations.
5. **Evidence for the default.** Per reading, the mean relative valid Recall@20 gain over tuned plain, over
   backbones and splits (step-3 runs); and the step-2 alpha point common to every backbone with the best mean
   relative valid gain. The default of ``--mrdib`` follows this table, not the other way round.

``--quick`` is a smoke check on the offline demo (two backbones, two readings, two alpha points, one seed,
capped epochs): it proves the pipeline end to end and measures nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

from benchmarks.sections._common import Context, TrainSpec, fmt_mean_std, md_table, mean_std, paired, train_many

TITLE = "MRdIB readings on Amazon Scientific: tuned baselines, selected alphas, selection bias"
ORDER = 12

BACKBONES = ["vbpr", "lgmrec", "freedom", "mgcn"]
QUICK_BACKBONES = ["vbpr", "lgmrec"]
#: the paper's per-alpha grid
ALPHAS = [1e-4, 1e-3, 5e-3, 1e-2, 5e-2]
#: each reading as plug-in options: today's, the lab's conventions (preset paper), and each convention alone
READINGS: dict[str, dict[str, Any]] = {
    "current": {"preset": "current"},
    "paper": {"preset": "paper"},
    "mean KL, prior 0.5": {"kl_reduction": "mean", "prior_std": 0.5},
    "input placement, raw units": {"placement": "input", "units": "raw"},
    "dual path": {"dual_path": True},
    "independent decoders": {"unique_decoders": "independent"},
    "redundancy: 5 critic steps, no gate": {"minmax": "step", "critic_steps": 5, "red_gate": "always"},
    "synergy head": {"synergy_head": "mlp"},
}
QUICK_READINGS = ["current", "paper"]
METRICS6 = [f"{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10, 20)]
KS = ["--set", "ks=[5,10,20]"]
QUICK_EPOCHS = 3
NULL_SEEDS = list(range(1, 11))


# ------------------------------------------------------------------------------------------------ specs
def _tag(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def hp_args(hp: dict[str, Any]) -> list[str]:
    """``--set`` arguments for a backbone grid point (``train.lr`` or a hyper-parameter)."""
    return [a for k, v in sorted(hp.items()) for a in ("--set", f"{k}={v}")]


def make_spec(ctx: Context, ds: str, bb: str, seed: int, hp: dict[str, Any],
              opts: dict[str, Any] | None) -> TrainSpec:
    """One run: backbone ``bb`` at grid point ``hp``, plain (``opts`` None) or with MRdIB options ``opts``."""
    cap = ["--epochs", str(QUICK_EPOCHS)] if ctx.quick else []
    name = f"rd-{bb}-{ds}-s{seed}-{_tag(hp)}-{'plain' if opts is None else _tag(opts)}"
    return TrainSpec(dataset=ds, backbone=bb, seed=seed, name=name, mrdib=opts, args=[*KS, *hp_args(hp), *cap])


def backbone_grid(bb: str, quick: bool) -> list[dict[str, Any]]:
    """The backbone's declared grid (quick: the first two values of its first axis)."""
    from mrdib_cli.models.base import get_backbone

    axes = dict(get_backbone(bb).mmrec_grid)
    if quick:
        first = next(iter(axes))
        axes = {first: axes[first][:2]}
    return [dict(zip(axes, vals)) for vals in itertools.product(*axes.values())]


def alpha_grid(quick: bool) -> list[dict[str, float]]:
    """Step 2a: alpha_kl x alpha_uni at alpha_red 0.05 (quick: two alpha_kl values)."""
    if quick:
        return [{"alpha_kl": k, "alpha_uni": 5e-3, "alpha_red": 5e-2} for k in (1e-4, 5e-3)]
    return [{"alpha_kl": k, "alpha_uni": u, "alpha_red": 5e-2} for k in ALPHAS for u in ALPHAS]


def red_grid(best: dict[str, float], quick: bool) -> list[dict[str, float]]:
    """Step 2b: alpha_red over the paper's grid at the selected (alpha_kl, alpha_uni)."""
    return [] if quick else [{**best, "alpha_red": r} for r in ALPHAS]


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


def tune_plain(ctx: Context, backbones: list[str], seeds: list[int]) -> dict[str, Any]:
    """Step 1: each plain backbone's grid point with the best mean valid Recall@20."""
    specs = {(bb, _tag(hp)): [make_spec(ctx, "sci", bb, s, hp, None) for s in seeds]
             for bb in backbones for hp in backbone_grid(bb, ctx.quick)}
    by_name = {r["run"]: r for r in train_many(ctx, [sp for g in specs.values() for sp in g])}
    out = {}
    for bb in backbones:
        grid = backbone_grid(bb, ctx.quick)
        groups = {_tag(hp): [by_name[sp.name] for sp in specs[(bb, _tag(hp))]] for hp in grid}
        best = pick(groups)
        out[bb] = {"hp": next(h for h in grid if _tag(h) == best), "grid_size": len(grid),
                   "valid_recall@20": valid_mean(groups[best]),
                   "table": [{"hp": h, "valid_recall@20": valid_mean(groups[_tag(h)])} for h in grid]}
    return out


def select_alphas(ctx: Context, bb: str, hp: dict[str, Any], reading: dict[str, Any],
                  seeds: list[int]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Step 2 for one backbone and reading: the coordinate search; returns (selected point, every run)."""
    def runs_for(points: list[dict[str, float]]) -> dict[str, list[dict[str, Any]]]:
        specs = [make_spec(ctx, "sci", bb, s, hp, {**reading, **p}) for p in points for s in seeds]
        done = with_at5(ctx, train_many(ctx, specs))
        return {json.dumps(p, sort_keys=True): [r for r in done if r["mrdib"] == {**reading, **p}] for p in points}

    first = runs_for(alpha_grid(ctx.quick))
    best = json.loads(pick(first))
    second = runs_for(red_grid(best, ctx.quick))
    groups = {**first, **second}
    sel = json.loads(pick(groups))
    every = [dict(r, point=k) for k, rs in groups.items() for r in rs]
    return sel, every


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
            "best_epoch": [r["best_epoch"] for r in runs]}


def rel_valid_gain(arm: list[dict[str, Any]], plain: list[dict[str, Any]]) -> float:
    """Mean over (split, seed) pairs of the relative valid Recall@20 gain of ``arm`` over ``plain``."""
    base = {(r["dataset"], r["seed"]): r["valid"]["recall@20"] for r in plain}
    gains = [r["valid"]["recall@20"] / base[(r["dataset"], r["seed"])] - 1 for r in arm
             if base.get((r["dataset"], r["seed"]))]
    return mean_std(gains)[0] if gains else float("nan")


def run(ctx: Context) -> dict[str, Any]:
    from benchmarks.sections import quality_demo, quality_scientific
    from mrdib_cli.evaluation.selection import null_control, selection_bias

    if ctx.quick:  # the offline demo under the Scientific split's name, so every step below is the same
        quality_demo.build_dataset(ctx)
        splits = ["sci"]
        _alias_demo(ctx)
    else:
        splits = quality_scientific.prepare(ctx)
    backbones = QUICK_BACKBONES if ctx.quick else BACKBONES
    readings = {k: READINGS[k] for k in (QUICK_READINGS if ctx.quick else READINGS)}
    seeds, sweep_seeds = ctx.seeds, ctx.seeds[:2]
    null_seeds = ctx.seeds[:1] + [ctx.seeds[0] + 1] if ctx.quick else NULL_SEEDS
    out: dict[str, Any] = {"splits": splits, "seeds": seeds, "sweep_seeds": sweep_seeds, "readings": readings,
                           "alpha_grid": ALPHAS, "epochs_cap": QUICK_EPOCHS if ctx.quick else None}

    ctx.log(f"1. tuned plain backbones: {backbones} over their grids, seeds {sweep_seeds}")
    out["plain"] = tune_plain(ctx, backbones, sweep_seeds)

    ctx.log(f"2. alphas per reading ({len(readings)}) and backbone, seeds {sweep_seeds}")
    out["alphas"], grids = {}, {}
    for bb in backbones:
        for name, reading in readings.items():
            sel, runs = select_alphas(ctx, bb, out["plain"][bb]["hp"], reading, sweep_seeds)
            out["alphas"].setdefault(bb, {})[name] = {"selected": sel, "valid_recall@20": valid_mean(
                [r for r in runs if r["mrdib"] == {**reading, **sel}])}
            grids[(bb, name)] = runs

    ctx.log("3. test: tuned plain vs each reading at its alphas, every split and seed")
    groups: dict[tuple[str, str], list[TrainSpec]] = {}
    for bb in backbones:
        hp = out["plain"][bb]["hp"]
        groups[(bb, "plain")] = [make_spec(ctx, ds, bb, s, hp, None) for ds in splits for s in seeds]
        groups[(bb, "--mrdib")] = [make_spec(ctx, "sci", bb, s, hp, {}) for s in seeds]
        for name, reading in readings.items():
            opts = {**reading, **out["alphas"][bb][name]["selected"]}
            groups[(bb, name)] = [make_spec(ctx, ds, bb, s, hp, opts) for ds in splits for s in seeds]
    null_specs = {bb: [make_spec(ctx, "sci", bb, s, out["plain"][bb]["hp"], None) for s in null_seeds]
                  for bb in backbones}
    unique = list({sp.name: sp for g in [*groups.values(), *null_specs.values()] for sp in g}.values())
    by_name = {r["run"]: r for r in with_at5(ctx, train_many(ctx, unique))}
    res = {k: [by_name[sp.name] for sp in g] for k, g in groups.items()}

    out["test"] = {}
    for bb in backbones:
        plain = res[(bb, "plain")]
        chron = [r for r in plain if r["dataset"] == "sci"]
        rows = {"plain": run_summary(plain)}
        for name in ["--mrdib", *readings]:
            base = chron if name == "--mrdib" else plain
            rows[name] = {**run_summary(res[(bb, name)]), "paired": paired(base, res[(bb, name)], METRICS6),
                          "valid_gain": rel_valid_gain(res[(bb, name)], base)}
        out["test"][bb] = rows

    ctx.log("4. selection bias (labelled) and the null control")
    out["bias"] = {f"{bb} + MRdIB ({name})": selection_bias(grid_rows(grids[(bb, name)]), select_on_test=True)
                   for bb in backbones for name in readings}
    out["bias"].update({f"{bb} plain, {len(null_seeds)} seeds as configurations (null control)":
                        null_control([{"seed": r["seed"], "valid": r["valid"], "test": r["test"]}
                                      for r in (by_name[sp.name] for sp in null_specs[bb])], select_on_test=True)
                        for bb in backbones})
    out["default_evidence"] = default_evidence(out, grids, backbones, readings)
    return out


def _alias_demo(ctx: Context) -> None:
    """Quick mode: the demo dataset is imported under the name the study uses for the chronological split."""
    from benchmarks.sections._common import cli

    if not (ctx.ws / "datasets" / "sci" / "dataset.json").exists():
        cli(ctx, "--quiet", "resplit", "demo", "-n", "sci", "--scheme", "loo", "--seed", "1")


def default_evidence(out: dict[str, Any], grids: dict[tuple[str, str], list[dict[str, Any]]],
                     backbones: list[str], readings: dict[str, Any]) -> dict[str, Any]:
    """Step 5: per reading, the mean relative valid gain at the selected alphas over backbones x splits, and
    the step-2a point (common to every backbone) with the best mean relative valid gain over backbones."""
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
    return {"selected_alphas": per_reading,
            "common_point": None if best is None else {"reading": best[0], "point": json.loads(best[1]),
                                                       "mean_valid_gain": common[best]}}


# ------------------------------------------------------------------------------------------------ render
def _p(p: float) -> str:
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _opts(o: dict[str, Any]) -> str:
    return ", ".join(f"{k.replace('alpha_', 'α_')} {v:g}" for k, v in sorted(o.items())) or "defaults"


def _ordered(d: dict[str, Any], order: list[str]) -> list[tuple[str, Any]]:
    """``d``'s items in ``order`` (the stored JSON has sorted keys), unknown keys last."""
    return sorted(d.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))


def render(res: dict[str, Any]) -> str:
    from mrdib_cli.evaluation.selection import bias_table

    cap = (f" **Quick mode: the offline demo, training capped at {res['epochs_cap']} epochs: a smoke check of the "
           "protocol, not a result.**" if res.get("epochs_cap") else "")
    parts = [f"Splits {', '.join(res['splits'])}; seeds {res['seeds']} (selection on seeds {res['sweep_seeds']}); "
             f"alpha grid {res['alpha_grid']}. Test metrics at the best-validation epoch." + cap, "",
             "### Tuned plain backbones (selected on validation over the backbone's grid)", ""]
    parts.append(md_table(["backbone", "grid points", "selected", "valid R@20"],
                          [[bb, p["grid_size"], _opts(p["hp"]), f"{p['valid_recall@20']:.4f}"]
                           for bb, p in _ordered(res["plain"], BACKBONES)]))
    parts += ["", "### Alphas selected on validation, per reading", ""]
    rows = [[bb, name, _opts(a["selected"]), f"{a['valid_recall@20']:.4f}"]
            for bb, per in _ordered(res["alphas"], BACKBONES) for name, a in _ordered(per, list(READINGS))]
    parts += [md_table(["backbone", "reading", "selected alphas", "valid R@20"], rows), ""]
    parts += ["### Tuned plain vs each reading (pooled per-user paired tests on R@20)", ""]
    for bb, rows_bb in _ordered(res["test"], BACKBONES):
        rows = []
        for name, r in _ordered(rows_bb, ["plain", "--mrdib", *READINGS]):
            cells = [name] + [fmt_mean_std(r["test"][m]) for m in METRICS6]
            if name == "plain":
                cells += ["", "", "", ""]
            else:
                p = r["paired"]["recall@20"]
                cells += [f"{100 * p['rel']:+.1f}%", _p(p["p_ttest"]), _p(p["p_wilcoxon"]),
                          f"{100 * r['valid_gain']:+.1f}%"]
            rows.append(cells)
        parts += [f"**{bb}** (tuned: {_opts(res['plain'][bb]['hp'])}; `--mrdib`: the default, chronological split "
                  "only)", "", md_table(["arm", "R@5", "R@10", "R@20", "N@5", "N@10", "N@20", "ΔR@20", "p (t)",
                                         "p (Wilcoxon)", "Δ valid R@20"], rows), ""]
    parts += ["### What MMRec's select-on-test rule would have reported", "",
              "Per seed, the alpha point with the best test Recall@20 against the one selected on validation; the "
              "null control applies the same rule to seeds of the tuned plain backbone.", "",
              bias_table(res["bias"]), ""]
    ev = res["default_evidence"]
    gains = "; ".join(f"{k} {100 * v:+.1f}%" for k, v in ev["selected_alphas"].items())
    parts += ["### Evidence for the default", "",
              f"Mean relative valid R@20 gain over tuned plain at each reading's selected alphas (backbones x "
              f"splits x seeds): {gains}."]
    if ev["common_point"]:
        c = ev["common_point"]
        parts.append(f"Best alpha point common to every backbone: {c['reading']} at {_opts(c['point'])}, mean "
                     f"relative valid R@20 gain {100 * c['mean_valid_gain']:+.1f}%.")
    return "\n".join(parts)
