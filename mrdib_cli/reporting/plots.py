"""Figures of a report: training curves, test-metric bars with error bars over seeds, MRdIB diagnostics.

All figures are drawn with matplotlib's Agg backend (no display needed) and written atomically as PNG.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mrdib_cli.errors import DataError
from mrdib_cli.workspace import atomic_path

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _plt()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _colors(n: int) -> list[str]:
    """Distinct colours for up to 20 series (tab20 beyond the 10-colour palette)."""
    if n <= len(PALETTE):
        return PALETTE
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [matplotlib.colors.to_hex(cmap(i % 20)) for i in range(n)]


def _integer_epochs(*axes: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Epoch records of ``metrics.jsonl`` (empty when the run logged none)."""
    p = run_dir / "metrics.jsonl"
    if not p.exists():
        return []
    out = []
    for n, ln in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not ln.strip():
            continue
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError:  # a crash mid-append cuts the last line short
            raise DataError(f"{p}: line {n} is cut short or damaged (the run was interrupted); finish it with "
                            f"'mrdib train --resume --run-name {run_dir.name}'") from None
    return out


def health_series(history: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Per modality, the plug-in's ``spread``, ``offset`` and ``clamped`` figures per epoch (NaN where an epoch
    has none); empty when no epoch logged any (no plug-in, or one that reports no health)."""
    mods = sorted({k.split("_", 1)[1] for r in history for k in r.get("health", {})
                   if k.split("_", 1)[0] in ("spread", "offset", "clamped")})
    return {m: {f: [float(r.get("health", {}).get(f"{f}_{m}", math.nan)) for r in history]
                for f in ("spread", "offset", "clamped")} for m in mods}


def _health_axis(ax: Any, epochs: list[int], health: dict[str, dict[str, list[float]]]) -> None:
    """The hook's spread and shared offset in units of its spread at attach (log scale), the drift the trainer
    warns about, and the epochs where a bottleneck had more log-variances clamped than the warning allows
    (the thresholds are the plug-in's own)."""
    from mrdib_cli.mrdib.objectives import MRdIB

    for i, (m, f) in enumerate(health.items()):
        ax.plot(epochs, f["spread"], color=PALETTE[i], label=f"{m} spread")
        ax.plot(epochs, f["offset"], color=PALETTE[i], ls="--", label=f"{m} offset")
        bad = [e for e, c in zip(epochs, f["clamped"]) if c > MRdIB.CLAMPED_WARN]
        if bad:  # a row of marks along the top (x in data, y in axes units), one row per modality
            ax.plot(bad, [0.96 - 0.05 * i] * len(bad), "x", color=PALETTE[i], transform=ax.get_xaxis_transform(),
                    label=f"{m}: >{MRdIB.CLAMPED_WARN:.0%} log-variances clamped")
    for y in (1 / MRdIB.DRIFT_WARN, MRdIB.DRIFT_WARN):
        ax.axhline(y, color="grey", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("x the hook's spread at attach")
    ax.set_title("MRdIB bottleneck health")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def training_curves(run: str, history: list[dict[str, Any]], path: Path,
                    valid_metrics: tuple[str, ...] = ("recall@20", "ndcg@20")) -> Path | None:
    """Left: every loss term per epoch (log scale when all positive); middle: valid metrics, best marked;
    right, for runs whose plug-in logged health figures (MRdIB): the hooks' spread and offset."""
    if not history:
        return None
    plt = _plt()
    epochs = [r["epoch"] for r in history]
    terms = sorted({k for r in history for k in r.get("loss", {})}, key=lambda k: (k != "total", k))
    health = health_series(history)
    fig, axes = plt.subplots(1, 3 if health else 2, figsize=(16 if health else 11, 4))
    ax1, ax2 = axes[0], axes[1]
    if health:
        _health_axis(axes[2], epochs, health)
    positive = True
    colors = _colors(len(terms))
    for i, t in enumerate(terms):
        ys = [r.get("loss", {}).get(t, math.nan) for r in history]
        positive &= all(y > 0 for y in ys if not math.isnan(y))
        ax1.plot(epochs, ys, marker="o" if len(epochs) < 30 else None, ms=3, lw=2.5 if t == "total" else 1.2,
                 color="black" if t == "total" else colors[i], ls="-" if i < 10 else "--", label=t)
    mags = [abs(v) for r in history for v in r.get("loss", {}).values() if v and math.isfinite(v)]
    if positive and terms:
        ax1.set_yscale("log")
    elif mags and max(mags) / min(mags) > 100:  # e.g. unweighted KL logs next to weighted terms, MINE < 0
        ax1.set_yscale("symlog", linthresh=max(min(mags), 1e-4))
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("mean loss per batch")
    ax1.set_title("loss terms")
    ax1.legend(fontsize=7, ncol=2)
    ax1.grid(alpha=0.3)
    for i, m in enumerate(valid_metrics):
        ys = [r.get("valid", {}).get(m, math.nan) for r in history]
        ax2.plot(epochs, ys, marker="o" if len(epochs) < 30 else None, ms=3, color=PALETTE[i], label=f"valid {m}")
    best = [r["epoch"] for r in history if r.get("best")]
    if best:
        ax2.axvline(best[-1], color="grey", ls="--", lw=1, label=f"best epoch {best[-1]}")
    ax2.set_xlabel("epoch")
    ax2.set_title("validation")
    _integer_epochs(*axes)
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3)
    fig.suptitle(run, fontsize=10)
    return _save(fig, path)


def metric_bars(summary: list[dict[str, Any]], metrics: list[str], path: Path, title: str) -> Path:
    """Grouped bars: one group per metric, one bar per system; error bars = std over seeds (n shown)."""
    plt = _plt()
    n_sys = len(summary)
    width = 0.8 / max(n_sys, 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(metrics) * max(1, n_sys / 2)), 4.2))
    x = np.arange(len(metrics))
    top = 0.0
    for k, row in enumerate(summary):
        means = np.array([row["metrics"][m]["mean"] for m in metrics])
        stds = np.array([row["metrics"][m]["std"] for m in metrics])
        stds = np.where(np.isfinite(stds), stds, 0.0)
        xs = x + (k - (n_sys - 1) / 2) * width
        n = row["metrics"][metrics[0]]["n"]
        ax.bar(xs, means, width, yerr=stds if n > 1 else None, capsize=3, color=PALETTE[k % len(PALETTE)],
               label=f"{row['system']} (n={n} seed{'s' if n != 1 else ''})")
        for xx, mval, s in zip(xs, means, stds):
            ax.text(xx, mval + s, f"{mval:.4f}", ha="center", va="bottom", fontsize=7, rotation=90 if n_sys > 3 else 0)
        top = max(top, float(np.max(means + stds)))
    ax.set_xticks(x, metrics)
    ax.set_ylim(0, top * 1.25 if top > 0 else 1)
    ax.set_ylabel("test metric (mean ± std over seeds)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plugin_terms(histories: dict[str, list[dict[str, Any]]], path: Path,
                 prefixes: tuple[str, ...] = ("kl", "red", "uni", "syn", "mine", "mi")) -> Path | None:
    """MRdIB's own loss terms / logs (KL, redundancy, unique, MINE estimates) over epochs, one panel each."""
    plt = _plt()
    terms = sorted({k for h in histories.values() for r in h for k in r.get("loss", {})
                    if any(k.lower().startswith(p) or f"_{p}" in k.lower() for p in prefixes)})
    if not terms:
        return None
    cols = min(3, len(terms))
    rows = math.ceil(len(terms) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, t in zip(axes.flat, terms):
        for i, (run, h) in enumerate(histories.items()):
            ys = [r.get("loss", {}).get(t, math.nan) for r in h]
            if all(math.isnan(y) for y in ys):
                continue
            ax.plot([r["epoch"] for r in h], ys, color=PALETTE[i % len(PALETTE)], lw=1.2, label=run)
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("epoch")
        _integer_epochs(ax)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(terms):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle("MRdIB terms per epoch", fontsize=10)
    return _save(fig, path)
