"""Paired tests on constructed per-user samples."""

from __future__ import annotations

import numpy as np

from mrdib_cli.evaluation.significance import paired_tests


def test_known_difference_is_significant() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 0.5, 500)
    b = np.clip(a + 0.05 + rng.normal(0, 0.02, 500), 0, 1)
    t = paired_tests(a, b)
    assert t.p_ttest < 1e-6 and t.p_wilcoxon < 1e-6
    assert t.mean_diff > 0.04 and t.n_users == 500


def test_no_difference_is_not_significant() -> None:
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, 400)
    b = a + rng.normal(0, 0.05, 400)
    t = paired_tests(a, b)
    assert t.p_ttest > 0.01 and t.p_wilcoxon > 0.01


def test_identical_and_degenerate_samples() -> None:
    a = np.array([0.0, 0.5, 1.0, 0.0])
    t = paired_tests(a, a.copy())
    assert t.p_ttest == 1.0 and t.p_wilcoxon == 1.0 and t.mean_diff == 0.0
    one = paired_tests(np.array([0.1]), np.array([0.3]))
    assert np.isnan(one.p_ttest)
    shift = paired_tests(a, a + 0.1)  # constant shift: zero variance of the differences
    assert shift.p_ttest < 1e-10
