"""The mrdib_readings report section (issue #25): its specs, selection helpers and render. No training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.sections import mrdib_readings as rd
from benchmarks.sections._common import Context
from mrdib_cli.evaluation.selection import SELECT_ON_TEST_LABEL


def _ctx(tmp_path: Path, mode: str = "full") -> Context:
    return Context(mode=mode, device="cpu", jobs=1, threads=1, seeds=[1, 2, 3], workdir=tmp_path, out_dir=tmp_path,
                   shared=None, log=lambda s: None)


def _run(ds: str, seed: int, valid: float, test: float, **kw) -> dict:
    return {"run": f"{ds}-{seed}-{valid}", "dataset": ds, "seed": seed, "valid": {"recall@20": valid},
            "test": {"recall@20": test}, **kw}


def test_specs_ask_for_k5_and_the_grid_point_and_name_every_arm_apart(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    plain = rd.make_spec(ctx, "sci", "vbpr", 1, {"reg_weight": 0.01}, None)
    other = rd.make_spec(ctx, "sci", "vbpr", 1, {"reg_weight": 0.1}, None)
    paper = rd.make_spec(ctx, "sci", "vbpr", 1, {"reg_weight": 0.01}, {"preset": "paper", "alpha_kl": 1e-3})
    default = rd.make_spec(ctx, "sci", "vbpr", 1, {"reg_weight": 0.01}, {})
    assert len({plain.name, other.name, paper.name, default.name}) == 4
    argv = paper.argv(ctx)
    assert "ks=[5,10,20]" in argv and "reg_weight=0.01" in argv and "preset=paper" in argv
    assert "--epochs" not in argv  # full mode trains to early stopping
    assert "--epochs" in rd.make_spec(_ctx(tmp_path, "quick"), "sci", "vbpr", 1, {}, None).argv(ctx)
    assert "--plugin" not in plain.argv(ctx) and "--plugin" in default.argv(ctx)


def test_grids_follow_the_backbones_declaration_and_the_search_starts_at_its_defaults() -> None:
    from mrdib_cli.models.base import get_backbone
    from mrdib_cli.mrdib.objectives import MRdIBConfig

    full = rd.backbone_grid("mmgcn", quick=False)
    assert len(full) == 30 and all(set(p) == set(get_backbone("mmgcn").mmrec_grid) for p in full)
    assert rd.backbone_grid("vbpr", quick=True) == [{"reg_weight": 2.0}, {"reg_weight": 1.0}]
    axes = rd.grid_axes("lattice", quick=False)
    start = rd.backbone_defaults("lattice", axes)
    assert start["reg_weight"] == get_backbone("lattice").defaults["reg_weight"] and start["train.lr"] == 1e-3
    d = MRdIBConfig()
    kl = rd.alpha_stage("kl", None, quick=False)
    assert [p["alpha_kl"] for p in kl] == rd.ALPHAS and {(p["alpha_uni"], p["alpha_red"]) for p in kl} == {
        (d.alpha_uni, d.alpha_red)}
    uni = rd.alpha_stage("uni", 1e-3, quick=False)
    assert [p["alpha_uni"] for p in uni] == rd.ALPHAS and {p["alpha_kl"] for p in uni} == {1e-3}
    assert every_reading_is_a_valid_option_set()


def test_the_default_rule_needs_a_gain_on_validation_else_takes_the_labs_conventions() -> None:
    point = {"reading": "current", "point": {"alpha_kl": 1e-4, "alpha_uni": 5e-3, "alpha_red": 5e-2},
             "mean_valid_gain": 0.02}
    chosen = rd.choose_default({"current": 0.01, "paper": -0.03}, point)
    assert chosen["options"] == {"preset": "current", **point["point"]}
    assert rd.choose_default({"current": -0.01, "paper": -0.03}, point)["options"] == {"preset": "paper"}
    assert rd.choose_default({"current": 0.01}, {**point, "mean_valid_gain": -0.01})["options"] == {
        "preset": "paper"}
    assert rd.choose_default({"current": 0.01}, None)["options"] == {"preset": "paper"}


def every_reading_is_a_valid_option_set() -> bool:
    from mrdib_cli.mrdib.objectives import MRdIBConfig

    for reading in [*rd.READINGS.values(), *rd.SCREEN.values()]:
        MRdIBConfig.resolve(reading).validate()
    return True


def test_pick_takes_the_best_mean_valid_score_and_the_first_on_ties() -> None:
    groups = {"a": [_run("sci", 1, 0.2, 0.1), _run("sci", 2, 0.4, 0.1)],
              "b": [_run("sci", 1, 0.3, 0.1), _run("sci", 2, 0.3, 0.1)],
              "c": [_run("sci", 1, 0.1, 0.9)]}
    assert rd.pick(groups) == "a"  # a and b tie at 0.3: the first wins; c's test score plays no part


def test_relative_valid_gain_pairs_split_and_seed() -> None:
    plain = [_run("sci", 1, 0.20, 0), _run("sci-loo1", 1, 0.10, 0)]
    arm = [_run("sci-loo1", 1, 0.11, 0), _run("sci", 1, 0.30, 0)]
    assert rd.rel_valid_gain(arm, plain) == pytest.approx((0.5 + 0.1) / 2)


def test_grid_rows_count_each_run_once_for_the_bias_report() -> None:
    runs = [dict(_run("sci", 1, 0.2, 0.1), point="p1"), dict(_run("sci", 1, 0.2, 0.1), point="p1"),
            dict(_run("sci", 1, 0.3, 0.2), point="p2")]
    rows = rd.grid_rows(runs)
    assert [r["config"] for r in rows] == ["p1", "p2"]


def _summary(v: float, n: int = 1) -> dict:
    return {"n": n, "test": {m: [v] * n for m in rd.METRICS6}, "valid_recall@20": [v] * n, "best_epoch": [5] * n,
            "train_s_per_epoch": [0.5] * n}


def _paired(rel: float) -> dict:
    return {m: {"rel": rel, "p_ttest": 0.04, "p_wilcoxon": 0.0005} for m in rd.METRICS6}


def test_render_shows_every_table_and_labels_the_bias_rows() -> None:
    from mrdib_cli.evaluation.selection import null_control, selection_bias

    grid = [{"config": c, "seed": 1, "valid": {"recall@20": v}, "test": {"recall@20": t}}
            for c, v, t in (("p1", 0.3, 0.20), ("p2", 0.2, 0.25))]
    sel = {"alpha_kl": 1e-3, "alpha_uni": 5e-3, "alpha_red": 5e-2}
    res = {"splits": ["sci", "sci-loo1"], "seeds": [1], "sweep_seeds": [1], "alpha_grid": rd.ALPHAS,
           "epochs_cap": None,
           "plain": {"vbpr": {"hp": {"reg_weight": 0.01}, "grid_size": 7, "valid_recall@20": 0.1}},
           "alphas": {"vbpr": {"paper": {"selected": sel, "valid_recall@20": 0.11}}},
           "test": {"vbpr": {"plain": _summary(0.1),
                             "--mrdib": {**_summary(0.09), "paired": _paired(-0.1), "valid_gain": -0.05},
                             "paper": {**_summary(0.12), "paired": _paired(0.2), "valid_gain": 0.1}}},
           "bias": {"vbpr + MRdIB (paper)": selection_bias(grid, select_on_test=True),
                    "vbpr plain, 2 seeds (null control)": null_control(grid, select_on_test=True)},
           "default_evidence": {"selected_alphas": {"paper": 0.1},
                                "common_point": {"reading": "paper", "point": sel, "mean_valid_gain": 0.08},
                                "choice": rd.choose_default({"paper": 0.1}, {"reading": "paper", "point": sel,
                                                                             "mean_valid_gain": 0.08})}}
    json.dumps(res)  # the stored result must be JSON
    md = rd.render(res)
    assert "| vbpr | 7 | 7 | reg_weight 0.01 | 0.1000 |" in md
    assert "| vbpr | paper | α_kl 0.001, α_red 0.05, α_uni 0.005 | 0.1100 | +10.0% |" in md
    assert "| paper | 1 | 0.1200 | 0.1200 | 0.1200 | 0.1200 | 0.1200 | 0.1200 | 0.50 | +20.0% | 0.040 | 5.0e-04 | +10.0% |" in md
    assert f"**{SELECT_ON_TEST_LABEL}**" in md and "| vbpr + MRdIB (paper) | 2 | 0.2000 | 0.2500 |" in md
    assert "paper +10.0%" in md and "mean relative valid R@20 gain +8.0%" in md
    assert "(gains on validation): α_kl 0.001, α_red 0.05, α_uni 0.005, preset paper." in md
    assert "Quick mode" not in md
    assert "Quick mode" in rd.render({**res, "epochs_cap": 3})
