"""The select-on-test report: refuses unless asked, labels every table, and measures the rule exactly."""

from __future__ import annotations

import polars as pl
import pytest

from mrdib_cli.errors import UsageError
from mrdib_cli.evaluation.selection import SELECT_ON_TEST_LABEL, bias_table, null_control, selection_bias
from mrdib_cli.workflow.sweep import select, selection_bias_report


def _row(config: str, seed: int, valid: float, test: float) -> dict:
    return {"run": f"{config}-s{seed}", "config": config, "seed": seed, "valid": {"recall@20": valid},
            "test": {"recall@20": test}}


GRID = [  # per seed, the valid winner and the test winner differ
    _row("a", 1, 0.30, 0.20), _row("b", 1, 0.25, 0.26), _row("c", 1, 0.10, 0.22),
    _row("a", 2, 0.28, 0.21), _row("b", 2, 0.29, 0.19), _row("c", 2, 0.11, 0.25),
]


def test_it_refuses_unless_asked_explicitly() -> None:
    for fn, rows in ((selection_bias, GRID), (null_control, GRID[:2])):
        with pytest.raises(UsageError, match="ask for it explicitly"):
            fn(rows)
        with pytest.raises(UsageError, match="--select-on-test"):
            fn(rows, select_on_test=False)


def test_selection_bias_picks_per_seed_as_mmrec_does() -> None:
    r = selection_bias(GRID, select_on_test=True)
    assert r["label"] == SELECT_ON_TEST_LABEL and r["n_configs"] == 3 and r["seeds"] == [1, 2]
    # seed 1: valid picks a (test 0.20), test picks b (0.26); seed 2: valid picks b (0.19), test picks c (0.25)
    assert r["honest"] == [0.20, 0.19] and r["select_on_test"] == [0.26, 0.25]
    assert r["picks"][0] == {"seed": 1, "valid_selected": "a", "test_selected": "b"}
    assert r["bias"] == pytest.approx(0.06) and r["bias_rel"] == pytest.approx(0.06 / 0.195)


def test_null_control_is_the_best_seed_against_the_mean() -> None:
    seeds = [_row("plain", s, 0.3, t) for s, t in ((1, 0.20), (2, 0.23), (3, 0.17))]
    r = null_control(seeds, select_on_test=True)
    assert r["honest_mean"] == pytest.approx(0.20) and r["select_on_test_mean"] == pytest.approx(0.23)
    assert r["bias"] == pytest.approx(0.03) and r["n_configs"] == 3
    with pytest.raises(UsageError, match="at least 2 seeds"):
        null_control(seeds[:1], select_on_test=True)


def test_every_table_is_labelled() -> None:
    res = {"grid": selection_bias(GRID, select_on_test=True),
           "null": null_control([_row("p", 1, 0.1, 0.2), _row("p", 2, 0.1, 0.3)], select_on_test=True)}
    md = bias_table(res)
    assert md.splitlines()[0] == f"**{SELECT_ON_TEST_LABEL}**"
    assert "SELECTED ON TEST" in md.splitlines()[2]  # the column itself names the rule
    assert "| grid | 3 | 0.1950 | 0.2550 | +0.0600 (+30.8%) |" in md
    with pytest.raises(UsageError, match="not a selection-bias result"):
        bias_table({"honest": {"metric": "recall@20", "n_configs": 1, "honest_mean": 0.2,
                               "select_on_test_mean": 0.2, "bias": 0.0, "bias_rel": 0.0}})


def test_the_sweep_report_measures_the_grid_and_the_winner_seeds() -> None:
    table = pl.DataFrame([{"run": r["run"], "dataset": "d", "backbone": "vbpr", "mrdib": False,
                           "point": r["config"], "seed": r["seed"], "param:reg_weight": r["config"],
                           "valid_recall@20": r["valid"]["recall@20"], "test_recall@20": r["test"]["recall@20"]}
                          for r in GRID])
    summary = select(table, "recall@20", "valid")  # the honest winner: a (mean valid 0.29)
    with pytest.raises(UsageError, match="ask for it explicitly"):
        selection_bias_report(table, summary, "recall@20")
    md = selection_bias_report(table, summary, "recall@20", select_on_test=True)
    assert md.startswith(f"**{SELECT_ON_TEST_LABEL}**")
    assert "| d/vbpr: grid | 3 |" in md
    # the null control over the winner's (a's) seeds: mean 0.205, best 0.21
    assert "| d/vbpr: null control (its seeds as configurations) | 2 | 0.2050 | 0.2100 | +0.0050" in md
