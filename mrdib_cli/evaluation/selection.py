"""What MMRec's select-on-test rule would report, measured beside the honest number, and a null control.

MMRec's ``quick_start`` trains every point of a hyper-parameter grid with one seed and reports the point
with the best **test** score. A paper built on it that searches many points reports the maximum of many
noisy test scores, which is optimistic even when no point is really better than another. This module puts a
number on that:

- :func:`selection_bias`: over a grid (configuration x seed runs), per seed, the test score of the point
  selected on validation (honest) and of the point selected on test (MMRec's rule); the difference is the
  selection bias of that grid;
- :func:`null_control`: the same rule over N seeds of one plain backbone treated as N "configurations".
  Nothing differs between them but the seed, so whatever the rule gains there is pure selection bias.

Both refuse to run unless asked explicitly (``select_on_test=True``; on the command line
``--select-on-test``), and every result and every table carries :data:`SELECT_ON_TEST_LABEL`, so a
test-selected number can never be mistaken for a result.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mrdib_cli.errors import UsageError

SELECT_ON_TEST_LABEL = ("SELECTED ON TEST (MMRec's quick_start rule): measures selection bias; "
                        "not an estimate of performance")


def _refuse_unless(select_on_test: bool) -> None:
    if not select_on_test:
        raise UsageError("selecting on test reports an optimistically biased number: ask for it explicitly "
                         "(--select-on-test, or select_on_test=True); its tables are labelled as such")


def _score(row: dict[str, Any], split: str, metric: str) -> float:
    try:
        return float(row[split][metric])
    except KeyError:
        raise UsageError(f"run {row.get('run', '?')} has no {split} {metric} (have: "
                         f"{', '.join(sorted(row.get(split, {})))})") from None


def selection_bias(rows: Sequence[dict[str, Any]], metric: str = "recall@20", *,
                   select_on_test: bool = False) -> dict[str, Any]:
    """Honest (validation-selected) vs MMRec's (test-selected) test score over a grid, per seed.

    ``rows``: one per run, ``{"config": hashable label, "seed": int, "valid": {metric: v}, "test": {...}}``.
    Per seed, as MMRec runs a grid with one seed: the honest pick maximises the validation score, MMRec's
    the test score (ties: the first row). Returns the per-seed picks and scores, their means, and the bias
    (MMRec's minus the honest, absolute and relative), labelled.
    """
    _refuse_unless(select_on_test)
    seeds = sorted({r["seed"] for r in rows})
    if not seeds:
        raise UsageError("selection bias needs at least one run")
    honest, rule, picks = [], [], []
    for s in seeds:
        runs = [r for r in rows if r["seed"] == s]
        by_valid = runs[int(np.argmax([_score(r, "valid", metric) for r in runs]))]
        by_test = runs[int(np.argmax([_score(r, "test", metric) for r in runs]))]
        honest.append(_score(by_valid, "test", metric))
        rule.append(_score(by_test, "test", metric))
        picks.append({"seed": s, "valid_selected": by_valid["config"], "test_selected": by_test["config"]})
    h, m = float(np.mean(honest)), float(np.mean(rule))
    return {"label": SELECT_ON_TEST_LABEL, "metric": metric, "n_configs": len({r["config"] for r in rows}),
            "seeds": seeds, "honest": honest, "select_on_test": rule, "picks": picks,
            "honest_mean": h, "select_on_test_mean": m, "bias": m - h, "bias_rel": (m - h) / h if h else float("nan")}


def null_control(rows: Sequence[dict[str, Any]], metric: str = "recall@20", *,
                 select_on_test: bool = False) -> dict[str, Any]:
    """MMRec's rule over N seeds of one plain backbone, each seed a "configuration".

    The honest number is the mean test score over the seeds (every "configuration" is the same model); the
    rule's is the best test score among them. Their difference is selection bias from seed noise alone.
    """
    _refuse_unless(select_on_test)
    if len(rows) < 2:
        raise UsageError(f"the null control needs at least 2 seeds of the plain backbone, got {len(rows)}")
    tests = [_score(r, "test", metric) for r in rows]
    h, m = float(np.mean(tests)), float(np.max(tests))
    return {"label": SELECT_ON_TEST_LABEL, "metric": metric, "n_configs": len(rows),
            "seeds": [r["seed"] for r in rows], "test": tests, "honest_mean": h, "select_on_test_mean": m,
            "bias": m - h, "bias_rel": (m - h) / h if h else float("nan")}


def bias_table(results: dict[str, dict[str, Any]]) -> str:
    """A labelled Markdown table of :func:`selection_bias` / :func:`null_control` results (one row each).

    The label is the table's first line and the test-selected column names the rule, so a copied table
    keeps its warning.
    """
    if not results:
        raise UsageError("no selection-bias results to tabulate")
    metric = next(iter(results.values()))["metric"]
    lines = [f"**{SELECT_ON_TEST_LABEL}**", "",
             f"| row | configurations | honest {metric} (selected on valid) | {metric} SELECTED ON TEST | "
             "selection bias |", "|---|---|---|---|---|"]
    for name, r in results.items():
        if r.get("label") != SELECT_ON_TEST_LABEL:
            raise UsageError(f"'{name}' is not a selection-bias result")
        lines.append(f"| {name} | {r['n_configs']} | {r['honest_mean']:.4f} | {r['select_on_test_mean']:.4f} | "
                     f"{r['bias']:+.4f} ({100 * r['bias_rel']:+.1f}%) |")
    return "\n".join(lines)
