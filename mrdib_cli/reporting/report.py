"""``mrdib report RUNS... --out DIR``: figures + a Markdown report of a set of runs.

Runs are grouped by dataset; within a dataset, runs identical apart from the seed form one system
(:func:`mrdib_cli.evaluation.compare.compare`, the same grouping, summaries and paired per-user significance
tests as ``mrdib compare``). The report states each run's protocol fingerprint; runs evaluated under different
protocols are still tabulated but flagged, never silently mixed. The doctor's findings are appended.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrdib_cli.errors import DataError, LockedError, MissingInputError, UsageError
from mrdib_cli.reporting import plots
from mrdib_cli.workspace import Workspace, atomic_write_text, check_name, read_json


@dataclass
class ReportResult:
    markdown: Path
    figures: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    comparisons: dict[str, Any] = field(default_factory=dict)
    findings: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"markdown": str(self.markdown), "figures": [str(p) for p in self.figures],
                "skipped": self.skipped, "comparisons": self.comparisons, "findings": self.findings}


def _fmt(x: Any, nd: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if x != x:
            return "–"
        return f"{x:.{nd}f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"
    return str(x)


def _stale_diagnosis(ws: Workspace, part: dict[str, Any]) -> bool:
    """Whether a diagnosis read another best.pt than the run holds now (or predates the record of it)."""
    from mrdib_cli.mrdib.diagnostics import checkpoint_digest

    return part.get("checkpoint_digest") != checkpoint_digest(ws.run_dir(str(part.get("run"))))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def build_report(ws: Workspace, runs: list[str], out_dir: Path, metrics: list[str] | None = None,
                 split: str = "test", mask: str = "train", log=lambda s: None) -> ReportResult:  # noqa: ANN001
    """Write ``out_dir/report.md`` and its PNGs for ``runs``; returns what was written."""
    from mrdib_cli.evaluation.compare import compare, load_evals
    from mrdib_cli.evaluation.runs import Run

    if not runs:
        raise UsageError("give at least one run (see 'mrdib runs')")
    for r in runs:
        check_name(r, "run name")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file; give a folder for report.md and its figures")
    out_dir.mkdir(parents=True, exist_ok=True)
    res = ReportResult(markdown=out_dir / "report.md")
    opened, left_out, errors = [], [], []
    for r in runs:
        try:
            opened.append(Run.open(ws, r))
        except (LockedError, DataError) as e:  # being written, or damaged: the others are still reported
            errors.append(e)
            left_out.append(f"> **Left out: `{r}`**: {e}\n")
            res.skipped.append(f"{r}: {e}")
    if not opened:
        raise errors[0]
    md: list[str] = ["# mrdib report\n", f"{len(opened)} run(s): " + ", ".join(f"`{r.name}`" for r in opened),
                     "", *left_out]
    histories: dict[str, list[dict[str, Any]]] = {}
    status_rows = []
    for r in opened:
        results = read_json(r.dir / "results.json") if (r.dir / "results.json").exists() else {}
        histories[r.name] = plots.read_metrics(r.dir)
        proto = results.get("protocol") or {}
        status_rows.append([r.name, r.config.get("dataset"), r.label(), r.seed, results.get("status", "no results"),
                            results.get("best_epoch"), len(histories[r.name]),
                            (results.get("valid") or {}).get("recall@20"),
                            (results.get("test") or {}).get("recall@20"), proto.get("mask"),
                            f"`{proto['fingerprint']}`" if proto.get("fingerprint") else "–"])
    md += ["## Runs\n", _table(["run", "dataset", "system", "seed", "status", "best epoch", "epochs",
                                "valid R@20", "test R@20", "test mask", "protocol fingerprint"], status_rows), ""]

    # ---- comparison per dataset
    by_ds: dict[str, list[str]] = {}
    for r in opened:
        by_ds.setdefault(str(r.config.get("dataset")), []).append(r.name)
    md.append("## Test metrics\n")
    md.append(f"Evaluated on the **{split}** split, mask **{mask}**; mean ± std over seeds (sample std). "
              "Significance: paired per-user tests of each system against the first one listed "
              "(per-user values averaged over seeds first).\n")
    for ds, names in by_ds.items():
        usable = [n for n in names if (ws.run_dir(n) / "embeddings.npz").exists()]
        res.skipped += [f"{n}: no embeddings.npz (not trained)" for n in names if n not in usable]
        by_name = {r.name: r for r in opened}
        unfinished = [n for n in usable if by_name[n].unfinished()]
        for n in unfinished:  # its best epoch so far would be pooled with finished runs
            res.skipped.append(f"{n}: killed before it finished (no results.json); resume it to report it")
            md.append(f"> **Left out: `{n}`**, killed before it finished (no `results.json`); continue it with "
                      f"`mrdib train --resume --run-name {n}`.\n")
        usable = [n for n in usable if n not in unfinished]
        if not usable:
            continue
        evals = load_evals(ws, usable, split=split, mask=mask, on_info=log)
        comp = compare(evals, metrics, force=True)
        res.comparisons[ds] = comp.to_dict()
        md.append(f"### {ds}\n")
        md.append(f"Protocol: `{comp.protocol.describe()}`\n")
        if comp.mismatches:
            md.append("> **Warning: protocol mismatch.** These runs were evaluated under different protocols, "
                      "so their numbers are not comparable: " + "; ".join(comp.mismatches) + "\n")
        if comp.repeats:
            md.append("> **Warning: repeated seeds.** Runs pooled as seeds of one system share a seed, so they "
                      "are repeats of one run and its std and n overstate the evidence: " + "; ".join(comp.repeats)
                      + "\n")
        rows = [[row["system"], ", ".join(f"`{n}`" for n in row["runs"]), len(row["runs"])] +
                [f"{row['metrics'][m]['mean']:.4f} ± {_fmt(row['metrics'][m]['std'])}" +
                 (f" ({100 * row['metrics'][m]['rel_change']:+.1f}%)" if i else "")
                 for m in comp.metrics] for i, row in enumerate(comp.summary)]
        md.append(_table(["system", "runs", "n"] + comp.metrics, rows) + "\n")
        bar = plots.metric_bars(comp.summary, comp.metrics, out_dir / f"bars-{_safe(ds)}.png",
                                f"{ds}: test metrics ({split}, mask {mask})")
        res.figures.append(bar)
        md.append(f"![test metrics on {ds}]({bar.name})\n")
        if comp.tests:
            trows = [[t["group"], t["baseline"], t["metric"], t["n_users"], t["mean_diff"], t["p_ttest"],
                      t["p_wilcoxon"], "yes" if (t["p_wilcoxon"] == t["p_wilcoxon"] and t["p_wilcoxon"] < 0.05)
                      else "no"] for t in comp.tests]
            md.append("Paired significance tests:\n")
            md.append(_table(["system", "vs baseline", "metric", "users", "mean diff", "p (t-test)",
                              "p (Wilcoxon)", "p<0.05 (Wilcoxon)"], trows) + "\n")
        plug = {n: histories[n] for n in names if (ws.run_dir(n) / "config.json").exists()
                and (Run.open(ws, n).config.get("plugin") or {}).get("name")}
        if plug:
            p = plots.plugin_terms(plug, out_dir / f"mrdib-terms-{_safe(ds)}.png")
            if p:
                res.figures.append(p)
                md.append(f"![MRdIB terms on {ds}]({p.name})\n")

    # ---- training curves
    md.append("## Training curves\n")
    md.append("Loss terms (mean per batch) and validation metrics per epoch, from each run's `metrics.jsonl`; "
              "the dashed line is the best-validation epoch whose embeddings were tested.\n")
    for r in opened:
        p = plots.training_curves(r.name, histories[r.name], out_dir / f"curves-{_safe(r.name)}.png")
        if p is None:
            md.append(f"- `{r.name}`: no epochs logged\n")
            continue
        res.figures.append(p)
        md.append(f"![training curves of {r.name}]({p.name})\n")

    # ---- MRdIB diagnostics written by `mrdib diagnose`
    diag = [r for r in opened if (r.dir / "diagnose.json").exists()]
    if diag:
        md.append("## MRdIB diagnostics\n")
        md.append("From `mrdib diagnose` (MINE estimate of I(Z_v;Z_t) on held-out items with a fresh critic; "
                  "test ranking with each modality alone and fused).\n")
        rows = []
        for r in diag:
            d = json.loads((r.dir / "diagnose.json").read_text())
            parts = [part for part in (d.get("run"), d.get("baseline")) if part]
            stale = [part["run"] for part in parts if _stale_diagnosis(ws, part)]
            if stale:  # the figure shows every part, so it goes too
                md.append(f"> **Left out: the diagnostics in `{r.name}/diagnose.json`**: they read another "
                          f"checkpoint of {' and '.join(stale)} than its best epoch's now (a resume found a better "
                          f"one, or it was retrained); run `mrdib diagnose` on `{r.name}` again.\n")
                res.skipped.append(f"{r.name}: diagnose.json read another checkpoint of {', '.join(stale)}")
                continue
            for part in parts:
                rk = part.get("ranking", {})
                rows.append([part["run"], part.get("plugin") or "baseline", (part.get("mi") or {}).get("mi")] +
                            [(rk.get(g) or {}).get("recall@20") for g in ("image", "text", "fused")])
            if (r.dir / "diagnose.png").exists():
                dst = out_dir / f"diagnose-{_safe(r.name)}.png"
                shutil.copyfile(r.dir / "diagnose.png", dst)
                res.figures.append(dst)
                md.append(f"![diagnostics of {r.name}]({dst.name})\n")
        if rows:
            md.append(_table(["run", "plug-in", "MI [nats]", "R@20 image alone", "R@20 text alone", "R@20 fused"],
                             rows) + "\n")

    # ---- doctor
    from mrdib_cli.reporting.doctor import check_runs

    findings = check_runs(ws, [r.name for r in opened])
    res.findings = [f.to_dict() for f in findings]
    md.append("## Protocol checks (`mrdib doctor`)\n")
    if not findings:
        md.append("No findings.\n")
    for f in findings:
        md.append(f"- **{f.severity}** [{f.code}] {f.run or ''}: {f.message}  \n  _{f.explanation}_\n")
    if res.skipped:
        md.append("## Skipped\n")
        md += [f"- {s}" for s in res.skipped]
    md.append("\nFiles: " + ", ".join(f"`{p.name}`" for p in res.figures) + "\n")
    atomic_write_text(res.markdown, "\n".join(md) + "\n")
    missing = [p for p in res.figures if not p.exists() or p.stat().st_size == 0]
    if missing:
        raise MissingInputError(f"figure {missing[0]} was not written")
    return res
