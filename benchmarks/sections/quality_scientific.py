"""Amazon Scientific (real CLIP features): every multimodal backbone with and without MRdIB, the MRdIB
validation sweep, the multi-split paired test and the ablation (issues #6 and #9).

Protocol, decided before any number was seen and applied mechanically:
1. **Sweep** (LGMRec, VBPR): MRdIB over a grid from the paper's {1e-4, 1e-3, 5e-3, 1e-2, 5e-2} on the
   chronological split; the setting with the best mean *validation* Recall@20 over the sweep seeds is selected.
   The grid holds alpha_red at the paper's 0.05; a second step then sweeps alpha_red over the paper's whole
   grid at the selected (alpha_kl, alpha_uni) and keeps the best on validation (coordinate search).
   Where the selected alpha_uni is the grid's largest (its edge), a third step tries alpha_uni 0.1, 0.2 and 0.5,
   beyond the paper's grid, at the selected (alpha_kl, alpha_red), and again keeps the best on validation. (This
   step was added after the first two had been run: VBPR's best alpha_uni sat at the edge. It follows the usual
   rule that a grid whose optimum is on its edge gets extended; test data plays no part in it.)
2. **Multi-split test** (LGMRec, VBPR): baseline, MRdIB with the paper's defaults and MRdIB with the selected
   setting on the chronological split and 5 random leave-one-out re-splits (full mode), every seed; per-user
   test results of all (split, seed) pairs are pooled for the paired t-test and Wilcoxon test.
3. **Ablation** (LGMRec and VBPR, each at its selected setting as "full"): no KL, no redundancy, no unique,
   MIB only.
4. **Every backbone**: plain vs MRdIB with the setting selected for LGMRec (transferred, not re-tuned), on the
   chronological split, every seed.
Test metrics are the trainer's: test once at the best-validation epoch (valid Recall@20, patience from each
backbone's defaults), train items masked.
"""

from __future__ import annotations

from typing import Any, Callable

from benchmarks.sections._common import (METRICS, Context, SkipSection, TrainSpec, cli, device_counts, fmt_mean_std,
                                         md_table, mean_std, paired, train_many)

TITLE = "Amazon Scientific: backbones with and without MRdIB"
ORDER = 10

BACKBONES = ["lgmrec", "vbpr", "freedom", "mgcn", "bm3", "lattice", "soil", "dualgnn", "mmgcn"]
TUNED = ["lgmrec", "vbpr"]
DEFAULTS: dict[str, Any] = {}  # the paper's alpha_kl 0.005, alpha_red 0.05, alpha_uni 0.005
ABLATIONS = {"no KL": {"no_kl": True}, "no redundancy": {"no_redundancy": True},
             "no unique": {"no_unique": True}, "MIB only": {"mib_only": True}}


def grid(quick: bool) -> list[dict[str, float]]:
    """The sweep grid (a subset of the paper's per-alpha grid; see docs/mrdib.md for why not larger)."""
    kls = [1e-4, 1e-3] if quick else [1e-4, 1e-3, 5e-3]
    unis = [5e-3, 5e-2] if quick else [1e-3, 5e-3, 5e-2]
    reds = [5e-2]
    return [{"alpha_kl": k, "alpha_uni": u, "alpha_red": r} for k in kls for u in unis for r in reds]


def red_grid(quick: bool) -> list[float]:
    """alpha_red values of the coordinate step (the paper's per-alpha grid)."""
    return [1e-3, 5e-2] if quick else [1e-4, 1e-3, 5e-3, 1e-2, 5e-2]


def uni_extension(quick: bool) -> list[float]:
    """alpha_uni values beyond the grid, tried when the selection sits on the grid's largest alpha_uni."""
    return [2e-1] if quick else [1e-1, 2e-1, 5e-1]


def tag(opts: dict[str, Any] | None) -> str:
    if opts is None:
        return "base"
    if not opts:
        return "mrdib"
    return "mrdib_" + "_".join(f"{k.replace('alpha_', '')}{v}" if not isinstance(v, bool) else k
                               for k, v in sorted(opts.items()))


QUICK_EPOCHS = 20  # --quick caps training (a smoke check of the whole protocol, not a result)
QUICK_BACKBONES = ["lgmrec", "vbpr", "freedom"]


def spec(ctx: Context, ds: str, bb: str, seed: int, opts: dict[str, Any] | None) -> TrainSpec:
    args = ["--epochs", str(QUICK_EPOCHS)] if ctx.quick else []
    return TrainSpec(dataset=ds, backbone=bb, seed=seed, name=f"sci-{bb}-{ds}-s{seed}-{tag(opts)}", mrdib=opts,
                     args=args)


def prepare(ctx: Context) -> list[str]:
    """Import Scientific once and make the leave-one-out re-splits; returns the split dataset names."""
    if ctx.shared is None or not (ctx.shared / "amazon2018-scientific-missrec").is_dir():
        raise SkipSection("Amazon Scientific not found (../shared/data/amazon2018-scientific-missrec or "
                          "$MRDIB_SHARED_DATA)")
    names = ["sci"] + ([] if ctx.quick else [f"sci-loo{s}" for s in range(1, 6)])
    if not (ctx.ws / "datasets" / "sci" / "dataset.json").exists():
        cli(ctx, "--quiet", "import", "recbole", str(ctx.shared / "amazon2018-scientific-missrec"), "--name", "sci")
    for n in names[1:]:
        if not (ctx.ws / "datasets" / n / "dataset.json").exists():
            cli(ctx, "--quiet", "resplit", "sci", "-n", n, "--scheme", "loo", "--seed", n[-1])
    return names


def select(runs: list[dict[str, Any]], points: list[dict[str, float]]) -> dict[str, Any]:
    """The point with the best mean validation Recall@20 (ties: the earlier grid point)."""
    scores = []
    for p in points:
        vals = [r["valid"]["recall@20"] for r in runs if r["mrdib"] == p]
        scores.append({"point": p, "valid_recall@20": mean_std(vals)[0], "n": len(vals)})
    best = max(scores, key=lambda s: s["valid_recall@20"])
    return {"selected": best["point"], "table": scores}


def sweep(ctx: Context, backbones: list[str] | tuple[str, ...], seeds: list[int],
          make_spec: Callable[[str, int, dict[str, float]], TrainSpec]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The validation sweep of the protocol (module docstring): the grid, then alpha_red over the paper's grid
    at each backbone's best (alpha_kl, alpha_uni), then alpha_uni beyond the grid where the best sits on its edge.
    Returns ({backbone: selection}, every sweep run)."""
    pts = grid(ctx.quick)
    runs = train_many(ctx, [make_spec(bb, s, p) for bb in backbones for p in pts for s in seeds])
    out = {bb: select([r for r in runs if r["backbone"] == bb], pts) for bb in backbones}
    red_pts = {bb: [{**out[bb]["selected"], "alpha_red": r} for r in red_grid(ctx.quick)] for bb in backbones}
    red_runs = train_many(ctx, [make_spec(bb, s, p) for bb in backbones for p in red_pts[bb] for s in seeds])
    for bb in backbones:
        step = select([r for r in red_runs if r["backbone"] == bb], red_pts[bb])
        out[bb].update(grid_selected=out[bb]["selected"], red_table=step["table"], selected=step["selected"])
    edge = max(p["alpha_uni"] for p in pts)
    ext_pts = {bb: [{**out[bb]["selected"], "alpha_uni": u} for u in uni_extension(ctx.quick)]
               for bb in backbones if out[bb]["selected"]["alpha_uni"] == edge}
    ext_runs = train_many(ctx, [make_spec(bb, s, p) for bb, ps in ext_pts.items() for p in ps for s in seeds])
    for bb, ps in ext_pts.items():
        cand = [out[bb]["selected"], *ps]
        step = select([r for r in red_runs + ext_runs if r["backbone"] == bb], cand)
        out[bb].update(red_selected=out[bb]["selected"], uni_table=step["table"], selected=step["selected"])
    return out, list({r["run"]: r for r in runs + red_runs + ext_runs}.values())  # a reused run counts once


def sweep_table(sel: dict[str, Any]) -> list[dict[str, Any]]:
    """Every point a backbone's sweep scored (grid, alpha_red step, alpha_uni extension), each once."""
    table: list[dict[str, Any]] = []
    for s in sel["table"] + sel.get("red_table", []) + sel.get("uni_table", []):
        if s["point"] not in [t["point"] for t in table]:
            table.append(s)
    return table


def run_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-run figures of a group of runs, as lists in run order (the JSON rows of the results)."""
    return {"n": len(runs), "best_epoch": [r["best_epoch"] for r in runs],
            "valid_recall@20": [r["valid"]["recall@20"] for r in runs],
            "test": {m: [r["test"][m] for r in runs] for m in METRICS},
            "train_s_per_epoch": [r["train_s_per_epoch"] for r in runs], "wall_s": [r["wall_s"] for r in runs],
            "devices": sorted({str(r.get("device")) for r in runs})}


def run(ctx: Context) -> dict[str, Any]:
    splits = prepare(ctx)
    seeds = ctx.seeds
    sweep_seeds = seeds[:2]
    split_seeds = seeds[:1]  # the splits are the replicates here; seeds are replicated on the chronological split
    backbones = QUICK_BACKBONES if ctx.quick else BACKBONES
    out: dict[str, Any] = {"splits": splits, "seeds": seeds, "sweep_seeds": sweep_seeds, "split_seeds": split_seeds, "grid": grid(ctx.quick),
                           "epochs_cap": QUICK_EPOCHS if ctx.quick else None}

    # 1. sweep on validation (chronological split), then the alpha_red step; all points in parallel
    ctx.log(f"sweep: {len(TUNED)} backbones x {len(out['grid'])} points x seeds {sweep_seeds}, then alpha_red")
    out["sweep"], sweep_runs = sweep(ctx, TUNED, sweep_seeds, lambda bb, s, p: spec(ctx, "sci", bb, s, p))
    sel = out["sweep"]["lgmrec"]["selected"]

    # 2-4 depend only on the selection: one parallel batch, most important first, each run trained once
    groups: dict[tuple, list[TrainSpec]] = {}
    for bb in TUNED:
        s_bb = out["sweep"][bb]["selected"]
        # the selection once more with the centred log-variance head (added later; not part of any selection)
        variants = {"base": None, "defaults": DEFAULTS, "selected": s_bb, "centred": {**s_bb, "centre_logvar": True}}
        for v, o in variants.items():
            groups[("multi", bb, v)] = [spec(ctx, ds, bb, s, o) for ds in splits for s in split_seeds]
    for bb in TUNED:
        s_bb = out["sweep"][bb]["selected"]
        groups[("abl", bb, "full")] = [spec(ctx, "sci", bb, s, s_bb) for s in seeds]
        groups[("abl", bb, "base")] = [spec(ctx, "sci", bb, s, None) for s in seeds]
        for name, o in ABLATIONS.items():
            groups[("abl", bb, name)] = [spec(ctx, "sci", bb, s, {**s_bb, **o}) for s in seeds]
    for bb in backbones:
        groups[("bb", bb, "base")] = [spec(ctx, "sci", bb, s, None) for s in seeds]
        groups[("bb", bb, "mrdib")] = [spec(ctx, "sci", bb, s, sel) for s in seeds]
        groups[("bb", bb, "centred")] = [spec(ctx, "sci", bb, s, {**sel, "centre_logvar": True}) for s in seeds]
    unique = list({sp.name: sp for g in groups.values() for sp in g}.values())
    ctx.log(f"multi-split test, ablation, every backbone: {len(unique)} runs")
    by_name = {r["run"]: r for r in train_many(ctx, unique)}
    res = {k: [by_name[sp.name] for sp in g] for k, g in groups.items()}
    every = sweep_runs + [r for r in by_name.values() if r["run"] not in {x["run"] for x in sweep_runs}]
    out["devices"] = device_counts(every)
    out["train_wall_s"] = {d: round(sum(r["wall_s"] for r in every if (r.get("gpu") or ("GPU" if r.get("device") ==
                                                                                       "cuda" else "CPU")) == d))
                           for d in out["devices"]}

    for bb in TUNED:  # the plain backbone on the sweep seeds, for reading the sweep tables
        out["sweep"][bb]["base_valid_recall@20"] = mean_std(
            [r["valid"]["recall@20"] for r in res[("bb", bb, "base")] if r["seed"] in sweep_seeds])[0]
    out["multi"] = {bb: {"setting": out["sweep"][bb]["selected"],
                         **{v: run_summary(res[("multi", bb, v)]) for v in ("base", "defaults", "selected", "centred")},
                         **{f"paired_{v}": paired(res[("multi", bb, "base")], res[("multi", bb, v)])
                            for v in ("defaults", "selected", "centred")},
                         "paired_centred_vs_selected": paired(res[("multi", bb, "selected")],
                                                              res[("multi", bb, "centred")])}
                    for bb in TUNED}
    out["ablation"] = {bb: {"setting": out["sweep"][bb]["selected"],
                            "rows": {k[2]: run_summary(v) for k, v in res.items() if k[:2] == ("abl", bb)}}
                       for bb in TUNED}
    out["backbones"] = {"setting": sel, "rows": {
        bb: {"base": run_summary(res[("bb", bb, "base")]), "mrdib": run_summary(res[("bb", bb, "mrdib")]),
             "paired": paired(res[("bb", bb, "base")], res[("bb", bb, "mrdib")])} for bb in backbones}}
    out["backbones_centred"] = {"setting": {**sel, "centre_logvar": True}, "rows": {
        bb: centred_row(*(res[("bb", bb, v)] for v in ("base", "mrdib", "centred"))) for bb in backbones}}
    return out


# ------------------------------------------------------------------------------------------------ render
def multi_table(multi: dict[str, Any]) -> list[str]:
    """The over-splits table (plain, paper defaults, selected and, where run, the selection with
    ``centre_logvar``), each MRdIB row tested against the plain backbone; then centred vs uncentred."""
    rows, notes = [], []
    for bb, m in multi.items():
        variants = [("base", bb), ("defaults", f"{bb} + MRdIB (paper defaults)"),
                    ("selected", f"{bb} + MRdIB ({fmt_opts(m['setting'])})")]
        if "centred" in m:
            variants.append(("centred", f"{bb} + MRdIB ({fmt_opts({**m['setting'], 'centre_logvar': True})})"))
            p = m["paired_centred_vs_selected"]["recall@20"]
            notes.append(f"{bb} {100 * p['rel']:+.1f}% (p = {_fmt_p(p['p_ttest'])})")
        for v, label in variants:
            t = m[v]["test"]
            cells = [label] + [fmt_mean_std(t[k]) for k in METRICS]
            if v == "base":
                cells += ["", "", ""]
            else:
                p = m[f"paired_{v}"]["recall@20"]
                cells += [f"{100 * p['rel']:+.1f}%", _fmt_p(p["p_ttest"]), _fmt_p(p["p_wilcoxon"])]
            rows.append(cells)
    out = [md_table(["model", "R@10", "R@20", "N@10", "N@20", "ΔR@20", "p (t)", "p (Wilcoxon)"], rows), ""]
    if notes:
        out += ["The centre_logvar rows repeat the selected setting with the centred log-variance head "
                "(`--centre-logvar`, docs/mrdib.md; added after the selection, which it played no part in). "
                "Centred vs uncentred, pooled paired t-test on R@20: " + "; ".join(notes) + ".", ""]
    return out


def _fmt_p(p: float) -> str:
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def fmt_opts(o: dict[str, Any]) -> str:
    """An MRdIB option dict as text for tables ("paper defaults" when empty)."""
    return ", ".join(f"{k} {v:g}" if not isinstance(v, bool) else k for k, v in sorted(o.items())) or "paper defaults"


def centred_row(base: list[dict[str, Any]], mrdib: list[dict[str, Any]],
                centred: list[dict[str, Any]]) -> dict[str, Any]:
    """One backbone's row of :func:`centred_table` from its plain, MRdIB and centred MRdIB runs (every seed)."""
    return {"base": run_summary(base), "mrdib": run_summary(mrdib), "centred": run_summary(centred),
            "vs_base": paired(base, centred), "vs_uncentred": paired(mrdib, centred)}


def centred_table(rows_by_bb: dict[str, Any]) -> str:
    """Plain, MRdIB and MRdIB with the centred log-variance head per backbone (BACKBONES order), with the
    centred arm's pooled paired tests against the plain backbone and against the uncentred arm."""
    rows = []
    for bb, r in sorted(rows_by_bb.items(), key=lambda kv: BACKBONES.index(kv[0]) if kv[0] in BACKBONES else 99):
        vb, vu = r["vs_base"]["recall@20"], r["vs_uncentred"]["recall@20"]
        rows.append([bb, *(fmt_mean_std(r[k]["test"]["recall@20"]) for k in ("base", "mrdib", "centred")),
                     f"{100 * vb['rel']:+.1f}% ({_fmt_p(vb['p_ttest'])})",
                     f"{100 * vu['rel']:+.1f}% ({_fmt_p(vu['p_ttest'])})",
                     f"{mean_std(r['mrdib']['best_epoch'])[0]:.0f} / {mean_std(r['centred']['best_epoch'])[0]:.0f}"])
    return md_table(["backbone", "R@20 plain", "+ MRdIB", "+ MRdIB, centred", "centred vs plain (p)",
                     "centred vs uncentred (p)", "best epoch uncentred / centred"], rows)


def every_backbone_table(rows_by_bb: dict[str, Any]) -> str:
    """Plain vs + MRdIB per backbone (R@20, N@20, pooled paired test, best epochs), in BACKBONES order."""
    rows = []
    for bb, r in sorted(rows_by_bb.items(), key=lambda kv: BACKBONES.index(kv[0]) if kv[0] in BACKBONES else 99):
        p = r["paired"]["recall@20"]
        rows.append([bb, fmt_mean_std(r["base"]["test"]["recall@20"]), fmt_mean_std(r["mrdib"]["test"]["recall@20"]),
                     fmt_mean_std(r["base"]["test"]["ndcg@20"]), fmt_mean_std(r["mrdib"]["test"]["ndcg@20"]),
                     f"{100 * p['rel']:+.1f}%", _fmt_p(p["p_ttest"]),
                     f"{mean_std(r['base']['best_epoch'])[0]:.0f} / {mean_std(r['mrdib']['best_epoch'])[0]:.0f}"])
    return md_table(["backbone", "R@20 base", "R@20 +MRdIB", "N@20 base", "N@20 +MRdIB", "ΔR@20", "p (t)",
                     "best epoch base / +MRdIB"], rows)


def render(res: dict[str, Any]) -> str:
    n_splits, seeds = len(res["splits"]), res["seeds"]
    cap = f" **Quick mode: training capped at {res['epochs_cap']} epochs; not comparable with full results.**" \
        if res.get("epochs_cap") else ""
    devs = ", ".join(f"{n} on {d}" for d, n in res.get("devices", {}).items())
    walls = ", ".join(f"{w / 3600:.1f} h on {d}" for d, w in res.get("train_wall_s", {}).items())
    parts = [f"Trained runs: {devs} (results do not depend on the device beyond float rounding); summed "
             f"training wall time {walls} (parallel runs overlap)." if devs else "",
             "", f"Splits: {', '.join(res['splits'])} (chronological split as distributed, plus leave-one-out "
             f"re-splits with seeds 1-5 where listed); seeds {seeds}. Test metrics at the best-validation epoch." + cap, ""]

    parts += ["### MRdIB sweep on validation (chronological split)", "",
              f"Grid: {len(res['grid'])} points; mean valid Recall@20 over seeds {res['sweep_seeds']}; then alpha_red "
              "over the paper's grid at the best (alpha_kl, alpha_uni); then, where the best alpha_uni is the "
              "grid's largest, alpha_uni 0.1, 0.2 and 0.5 (beyond the paper's grid; a step added after VBPR's best "
              "was seen on the edge). The selected point is used below; test data played no part in choosing it.",
              ""]
    for bb, sw in res["sweep"].items():
        final = sw["selected"]
        table = sweep_table(sw)
        top = sorted(table, key=lambda s: -s["valid_recall@20"])
        rows = [[fmt_opts(s["point"]), f"{s['valid_recall@20']:.4f}", "**selected**" if s["point"] == final else ""]
                for s in top]
        if sw.get("base_valid_recall@20") is not None:
            rows.append([f"{bb} alone (no MRdIB)", f"{sw['base_valid_recall@20']:.4f}", "reference"])
        parts += [f"**{bb}**", "", md_table(["setting", "valid R@20", ""], rows), ""]

    parts += ["### Backbone vs backbone + MRdIB over splits and seeds (pooled per-user paired tests)", "",
              f"{n_splits} splits x seed(s) {res['split_seeds']} per row; mean ± std over the "
              f"{n_splits * len(res['split_seeds'])} runs; p-values from the paired t-test / Wilcoxon test over all "
              "pooled (split, user) pairs.", ""]
    parts += multi_table(res["multi"])

    parts += ["### Ablation (chronological split)", "",
              f"Full = MRdIB with the backbone's selected setting; each variant switches one part off; mean ± std "
              f"over seeds {seeds}.", ""]
    order = ["base", "full", *ABLATIONS]
    for bb, ab in res["ablation"].items():
        rows = [[name] + [fmt_mean_std(r["test"][k]) for k in METRICS] + [fmt_mean_std(r["valid_recall@20"])]
                for name, r in sorted(ab["rows"].items(), key=lambda kv: order.index(kv[0]))]
        parts += [f"**{bb}** ({fmt_opts(ab['setting'])})", "",
                  md_table(["variant", "R@10", "R@20", "N@10", "N@20", "valid R@20"], rows), ""]

    bbs = res["backbones"]
    parts += ["### Every multimodal backbone (chronological split)", "",
              f"MRdIB with the setting selected for LGMRec ({fmt_opts(bbs['setting'])}), transferred unchanged to "
              f"every backbone; mean ± std over seeds {seeds}; paired tests pool the seeds' per-user results.", "",
              every_backbone_table(bbs["rows"]), ""]
    if res.get("backbones_centred"):
        bc = res["backbones_centred"]
        parts += ["**The same with the centred log-variance head** (`--centre-logvar`: the log-variance head sees "
                  "the hook input minus the items' mean; docs/mrdib.md; added after every selection). Same plain "
                  f"and uncentred runs as above; {fmt_opts(bc['setting'])}; mean ± std over seeds {seeds}; pooled "
                  "per-user paired t-tests against the plain backbone and against the uncentred MRdIB runs.", "",
                  centred_table(bc["rows"]), ""]
    return "\n".join(parts)
