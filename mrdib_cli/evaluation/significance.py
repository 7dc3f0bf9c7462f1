"""Paired per-user significance tests between two systems evaluated on the same users.

Per-user metric values of two runs are paired by ``user_idx`` (only users both evaluated). We report the
paired t-test (``scipy.stats.ttest_rel``) and the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``,
two-sided, ``zero_method="wilcox"``: tied users carry no information about the sign and are dropped).
Recsys metrics are bounded and heavily zero-inflated, so the non-parametric test is the safer read; both
are shown because reviewers ask for either.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass
class PairedTest:
    n_users: int
    mean_a: float
    mean_b: float
    mean_diff: float  # b - a
    t_stat: float
    p_ttest: float
    w_stat: float
    p_wilcoxon: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def paired_tests(a: np.ndarray, b: np.ndarray) -> PairedTest:
    """Paired t-test and Wilcoxon signed-rank test of ``b`` vs ``a`` (same users, same order)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError("paired samples must have the same length")
    n = int(a.size)
    diff = b - a
    nan = float("nan")
    if n < 2:
        return PairedTest(n, float(a.mean()) if n else nan, float(b.mean()) if n else nan,
                          float(diff.mean()) if n else nan, nan, nan, nan, nan)
    if not np.any(diff):  # identical systems: no evidence of a difference at all
        return PairedTest(n, float(a.mean()), float(b.mean()), 0.0, 0.0, 1.0, 0.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t = stats.ttest_rel(b, a)
        t_stat, p_t = float(t.statistic), float(t.pvalue)
        if math.isnan(p_t) and np.all(diff == diff[0]):  # constant non-zero shift: certain difference
            t_stat, p_t = math.copysign(math.inf, diff[0]), 0.0
        try:
            w = stats.wilcoxon(b, a, zero_method="wilcox", alternative="two-sided")
            w_stat, p_w = float(w.statistic), float(w.pvalue)
        except ValueError:  # fewer than one non-zero difference
            w_stat, p_w = nan, nan
    return PairedTest(n, float(a.mean()), float(b.mean()), float(diff.mean()), t_stat, p_t, w_stat, p_w)
