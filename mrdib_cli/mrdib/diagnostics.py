"""``mrdib diagnose``: check the disentanglement claims of a trained run instead of believing them.

For a run (and optionally its baseline run, the same backbone trained without MRdIB):

1. **Redundancy**: a MINE estimate of I(Z_v; Z_t) between the two modality representations at the hook
   points (z = mu for an MRdIB run, the raw h_m for a baseline), with a *fresh* critic fitted on 80% of the
   items and the bound evaluated on the held-out 20% (features standardised, so runs are comparable).
2. **Per-modality ranking quality**: scoring with z_v alone, z_t alone (score_m(u, i) = <p_m(u), A_m z_m(i)>,
   as in the unique term; for a baseline A_m is the identity when the dims agree) and with the fused
   embeddings the run was evaluated with, under the run's own test protocol.
3. **What passes the bottleneck** (demo datasets only, where the planted attributes are known): held-out
   linear-probe accuracy of each attribute (colour, shape, texture, material, size, fit, and the irrelevant
   noun and brand) from each modality's representation; for an MRdIB run from mu and from a sample.

The model is rebuilt from the run folder (config.json + checkpoints/best.pt): no pickle, weights_only loads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mrdib_cli.defaults import KS
from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.errors import DataError, MissingInputError, ProtocolMismatchError
from mrdib_cli.models.base import Backbone, Embeddings, get_backbone
from mrdib_cli.mrdib.mine import estimate_mi
from mrdib_cli.provenance import foreign_file, run_identity
from mrdib_cli.workspace import Workspace, atomic_path, atomic_write_json, file_digest, read_run_config



@dataclass
class LoadedRun:
    name: str
    dir: Path
    conf: dict[str, Any]
    handle: DatasetHandle
    backbone: Backbone
    plugin: Any  # Plugin | None


def _load_best(rdir: Path, best: Path, backbone: Any, plugin: Any) -> None:
    """Load best.pt into the rebuilt model: one-line errors for an unreadable or foreign checkpoint, or one
    of another epoch than results.json reports (a crash can leave best.pt one epoch ahead)."""
    from mrdib_cli.training import checkpoint as ckpt

    state = ckpt.load(best)
    fix = f"rewrite it with 'mrdib train --resume --run-name {rdir.name}'"
    try:
        want = json.loads((rdir / "results.json").read_text()).get("best_epoch")
    except (OSError, ValueError, AttributeError):  # no (readable) results yet: nothing to check against
        want = None
    if state.get("identity") not in (None, run_identity(read_run_config(rdir / "config.json"))):
        raise DataError(foreign_file(best, rdir.name))
    if want and state.get("epoch") not in (None, want):
        raise DataError(f"{best} holds epoch {state.get('epoch')} but results.json reports epoch {want}; {fix}")
    try:
        backbone.load_state_dict(state["model"])
        if plugin is not None and state.get("plugin") is not None:
            plugin.load_state_dict(state["plugin"])
    except (RuntimeError, KeyError, TypeError, ValueError):
        raise DataError(f"{best} does not fit run '{rdir.name}' (other backbone or options); {fix}") from None


def load_run(ws: Workspace, run: str | None, device: str = "cpu") -> LoadedRun:
    """Rebuild a run's backbone (+ plug-in) from its folder and its best-validation checkpoint."""
    from mrdib_cli.training.plugin import create_plugin

    name = ws.resolve_run(run)
    ws.refuse_written(name)
    rdir = ws.run_dir(name)
    cfg_path, best = rdir / "config.json", rdir / "checkpoints" / "best.pt"
    for p in (cfg_path, best):
        if not p.exists():
            raise MissingInputError(f"run '{name}' has no {p.relative_to(rdir)} (was it trained to at least one "
                                    f"validated epoch?)")
    conf = json.loads(cfg_path.read_text())
    handle = DatasetHandle.open(ws, conf["dataset"])
    if conf.get("dataset_digest") and handle.digest != conf["dataset_digest"]:
        raise ProtocolMismatchError(f"dataset '{handle.name}' changed since run '{name}' was trained "
                                    f"(digest differs); retrain the run")
    cls = get_backbone(conf["backbone"])
    torch.manual_seed(int(conf.get("train", {}).get("seed", 0)))
    backbone = cls(handle, dict(conf["hparams"]), conf.get("features") or None)
    plugin = None
    if conf.get("plugin"):
        opts = {k: v for k, v in conf["plugin"].items() if k != "name"}
        plugin = create_plugin(conf["plugin"]["name"], opts)
        plugin.attach(backbone)
    _load_best(rdir, best, backbone, plugin)
    backbone.to(device).eval()
    if plugin is not None:
        plugin.to(device).eval()
    return LoadedRun(name, rdir, conf, handle, backbone, plugin)


@torch.no_grad()
def modality_views(lr: LoadedRun) -> tuple[dict[str, Tensor], dict[str, Tensor], Embeddings]:
    """One deterministic forward; returns (z_m for MI, A_m z_m item-side scores, embeddings)."""
    bb, plugin = lr.backbone, lr.plugin
    raw: dict[str, Tensor] = {}
    if plugin is None:
        def record(name: str, h: Tensor) -> Tensor:
            raw[name] = h.detach()
            return h

        for m in bb.get_hook_points():
            bb.install_hook(m, record)
    try:
        emb = bb.propagate()
    finally:
        if plugin is None:
            bb._hooks.clear()
    if plugin is not None:
        z = {m: plugin.latest(m).mu.detach() for m in plugin.hooks}
        items = {m: plugin.item_view(m, z[m]) for m in z}
    else:
        z = raw
        items = dict(raw)
    return z, items, emb


def _rank(handle: DatasetHandle, user: Tensor | np.ndarray, item: Tensor | np.ndarray, mask: str) -> dict[str, float]:
    from mrdib_cli.evaluation.engine import evaluate_split

    def arr(x: Tensor | np.ndarray) -> np.ndarray:
        return (x.detach().float().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)).astype(np.float32)

    res = evaluate_split(handle, arr(user), arr(item), split="test", mask=mask, ks=KS)
    return {k: float(v) for k, v in res.metrics.items()}


STAGES_PER_RUN = 4  # rebuild, MINE critic, ranking, probes: what ``on_stage`` announces per run


def diagnose_run(lr: LoadedRun, *, mi_steps: int = 2000, seed: int = 0,
                 on_stage: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """MI between the modality representations and the per-modality / fused ranking quality of one run."""
    z, items, emb = modality_views(lr)
    on_stage(f"{lr.name}: fitting a fresh MINE critic ({mi_steps} steps)")
    mask = _test_mask(lr)
    out: dict[str, Any] = {"run": lr.name, "backbone": lr.conf["backbone"],
                           "plugin": (lr.conf.get("plugin") or {}).get("name"), "mask": mask,
                           "representation": "mu (bottleneck)" if lr.plugin is not None else "h (hook input)"}
    mods = list(z)
    if len(mods) >= 2:
        a, b = mods[0], mods[1]
        out["mi"] = {"pair": [a, b], **estimate_mi(z[a], z[b], steps=mi_steps, seed=seed)}
    else:
        out["mi"] = {"pair": mods, "mi": None, "reason": "fewer than two modalities"}
    on_stage(f"{lr.name}: ranking with each representation")
    ranking: dict[str, Any] = {}
    for m in mods:
        user = lr.plugin.unique_users(m, emb) if lr.plugin is not None else emb.views.get(f"user_{m}", emb.user)
        if user.shape[-1] != items[m].shape[-1]:
            ranking[m] = {"skipped": f"user dim {user.shape[-1]} != item dim {items[m].shape[-1]} and the run "
                                     f"has no trained alignment map"}
            continue
        ranking[m] = _rank(lr.handle, user, items[m], mask)
    from mrdib_cli.evaluation.runs import Run  # its checks: the run's own file, of the reported epoch

    user_emb, item_emb = Run(lr.name, lr.dir, lr.conf, None).embeddings  # a workspace is not needed to read
    ranking["fused"] = _rank(lr.handle, user_emb, item_emb, mask)
    out["ranking"] = ranking
    on_stage(f"{lr.name}: planted-attribute probes (demo datasets only)")
    probes = planted_probes(lr, z, seed, item=emb.item)
    if probes is not None:
        out["probes"] = probes
    return out


def planted_probes(lr: LoadedRun, z: dict[str, Tensor], seed: int, item: Tensor | None = None) -> dict[str, Any] | None:
    """On a demo dataset (known planted attributes): held-out linear-probe accuracy of every attribute from
    each modality's representation, and for an MRdIB run also from one seeded sample of its bottleneck (what
    actually passes the channel; see :mod:`mrdib_cli.mrdib.probes`). None on other datasets.

    ``item``: the final item embeddings that are ranked ("item scored"). Why: an attribute no modality carries
    on its own (the synergistic ``fit``) can still reach the ranking through the ID embeddings, which learn it
    from the interactions; this column tells whether it did."""
    from mrdib_cli.data.demo_truth import ITEM_ATTRS, PlantedTruth
    from mrdib_cli.errors import MrdibError
    from mrdib_cli.mrdib.probes import attribute_probes

    if not lr.handle.card.get("demo"):
        return None
    try:
        truth = PlantedTruth.of(lr.handle)
    except MrdibError as e:  # e.g. the generator changed since the dataset was prepared: say so, do not guess
        return {"skipped": str(e)}
    base = "mu" if lr.plugin is not None else "h"
    reps = {f"{m} {base}": z[m] for m in z}
    if lr.plugin is not None:
        g = torch.Generator().manual_seed(seed)
        for m in z:
            st = lr.plugin.latest(m)
            eps = torch.randn(st.mu.shape, generator=g, dtype=st.mu.dtype).to(st.mu.device)
            reps[f"{m} sample"] = st.mu + torch.exp(0.5 * st.logvar) * eps
    if item is not None:
        reps["item scored"] = item.detach()
    rows = attribute_probes({k: v.cpu() for k, v in reps.items()}, {a: truth.items[a] for a in ITEM_ATTRS},
                            {a: n for a, (n, _) in ITEM_ATTRS.items()}, seed=seed)
    # a list, not a mapping: JSON files are written with sorted keys, and the rows read best in ITEM_ATTRS order
    return {"representations": list(reps),
            "attributes": [{"name": a, "shows": ITEM_ATTRS[a][1], **rows[a]} for a in ITEM_ATTRS]}


def _test_mask(lr: LoadedRun) -> str:
    res = lr.dir / "results.json"
    if res.exists():
        proto = json.loads(res.read_text()).get("protocol") or {}
        mask = proto.get("mask") or (proto.get("test") or {}).get("mask") if isinstance(proto, dict) else None
        if isinstance(mask, str):
            return mask
    return str(lr.conf.get("train", {}).get("test_mask") or "train")


def diagnose(ws: Workspace, run: str | None, baseline: str | None = None, *, mi_steps: int = 2000,
             seed: int = 0, device: str = "cpu",
             on_stage: Callable[[str], None] = lambda s: None) -> tuple[dict[str, Any], Path, Path]:
    """Diagnose ``run`` (and ``baseline``); write diagnose.json and diagnose.png into the run folder.
    ``on_stage`` hears of each stage as it starts (:data:`STAGES_PER_RUN` per run, minutes each at Baby
    scale), so a caller can show where a long diagnosis is."""
    on_stage(f"{run or 'run'}: rebuilding the model")
    main = load_run(ws, run, device)
    report: dict[str, Any] = {"run": _stamped(main, diagnose_run(main, mi_steps=mi_steps, seed=seed,
                                                                 on_stage=on_stage)),
                              "baseline": None,
                              "mi_steps": mi_steps, "seed": seed,
                              "method": "MINE/DV bound with a fresh critic: fit on 80% of the items, "
                                        "evaluated on the held-out 20%; ranking on the test split"}
    if baseline:
        on_stage(f"{baseline}: rebuilding the model")
        base = load_run(ws, baseline, device)
        if base.handle.digest != main.handle.digest:
            raise ProtocolMismatchError(f"baseline '{base.name}' was trained on another dataset "
                                        f"('{base.handle.name}') than '{main.name}' ('{main.handle.name}')")
        report["baseline"] = _stamped(base, diagnose_run(base, mi_steps=mi_steps, seed=seed, on_stage=on_stage))
    check_finite(report)
    jpath, ppath = main.dir / "diagnose.json", main.dir / "diagnose.png"
    atomic_write_json(jpath, report)
    plot(report, ppath)
    return report, jpath, ppath


def checkpoint_digest(run_dir: Path) -> str | None:
    """Digest of a run's ``best.pt``: a diagnosis records the one it read, so that a reader can tell when a
    resume has since found a better epoch (reporting.report then leaves the old figures out)."""
    best = run_dir / "checkpoints" / "best.pt"
    return file_digest(best) if best.exists() else None


def _stamped(run: Any, part: dict[str, Any]) -> dict[str, Any]:
    return {**part, "checkpoint_digest": checkpoint_digest(run.dir)}


def plot(report: dict[str, Any], path: Path) -> None:
    """Two panels: I(Z_v;Z_t) per run; Recall@20 with z_v alone, z_t alone and fused, per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in (report["run"], report.get("baseline")) if r]
    # the narrow left panel gets the short role as tick label (two long run names overlapped there); the
    # full names are in the right panel's legend, in the same colours
    roles = ["+" + r["plugin"] if r["plugin"] else "baseline" for r in runs]
    labels = [f"{r['run']} ({role})" for r, role in zip(runs, roles)]
    colors = ["#d62728", "#7f7f7f"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1, 2]})
    mis = [r["mi"].get("mi") or 0.0 for r in runs]
    ax1.bar(range(len(runs)), mis, color=colors[:len(runs)])
    ax1.set_xticks(range(len(runs)), roles, fontsize=9)
    pair = " ; ".join(runs[0]["mi"].get("pair", []))
    ax1.set_ylabel(f"I({pair}) estimate [nats]")
    ax1.set_title("Redundancy (MINE, held-out items)")
    for i, v in enumerate(mis):
        ax1.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=9)
    groups = [g for g in runs[0]["ranking"]]
    width = 0.8 / len(runs)
    for k, r in enumerate(runs):
        vals = [(r["ranking"].get(g) or {}).get("recall@20", 0.0) for g in groups]
        xs = np.arange(len(groups)) + (k - (len(runs) - 1) / 2) * width
        ax2.bar(xs, vals, width, color=colors[k], label=labels[k])
        for x, v in zip(xs, vals):
            ax2.text(x, v, f"{v:.4f}", ha="center", va="bottom", fontsize=8)
    ax2.set_xticks(range(len(groups)), [f"{g} alone" if g != "fused" else "fused" for g in groups])
    ax2.set_ylabel("test Recall@20")
    ax2.set_title("Ranking quality per representation")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def check_finite(report: dict[str, Any]) -> None:
    """Guard against a diverged run silently producing a plot of NaNs."""
    for r in (report["run"], report.get("baseline")):
        if r and r["mi"].get("mi") is not None and not np.isfinite(r["mi"]["mi"]):
            raise DataError(f"MINE estimate for run '{r['run']}' is not finite")
