"""The offline demo dataset: LGMRec and VBPR without and with MRdIB, and what the planted structure does.

The demo (``mrdib prepare demo``, docs/demo-dataset.md) plants user preferences on item attributes that are
visible in the image only (shape), in the text only (material), in both (colour, redundant) or only in the two
together (fit, synergistic). Features are built offline exactly as ``mrdib quickstart`` builds them: a small
open_clip ViT with random weights for the images (no download) and the bundled all-MiniLM-L6-v2 for the
text. Where a backbone's defaults leave it below ID-only item-kNN on the demo (VBPR's reg_weight 2.0, MMGCN's
lr 1e-3), the plain backbone's hyper-parameter is first chosen on validation over MMRec's grid (``BASE_TUNE``):
a plain baseline that weak would credit MRdIB with what is only tuning. Each backbone is then trained plain and
with ``--mrdib`` (paper defaults) for every seed, to early stopping (the demo is small, so ``--quick`` only has
fewer seeds), both with the same backbone hyper-parameters. We report test metrics, a per-user paired test pooled
over seeds, MRdIB with alphas selected on validation, every backbone with LGMRec's setting transferred, and
``mrdib diagnose`` on the first seed's pairs (paper defaults and selected alphas): the MINE estimate of
I(Z_v; Z_t), Recall@20 when ranking with the image representation alone, the text one alone and the fused
embeddings, and which planted attributes each representation carries. Two steps use the planted truth itself:
the ceilings it allows (``mrdib_cli/data/demo_truth.py``) and the compression curve (the bottleneck alone over
the paper's alpha_kl grid, probed attribute by attribute). A last step trains the plain backbones with cleaner
feature tables (the text without its noise; the true attributes), on a copy of the demo: what a perfect
bottleneck could gain at most, against what better encoders would.
"""

from __future__ import annotations

import itertools
import json
import shutil
from typing import Any

import numpy as np

from benchmarks.sections._common import (METRICS, Context, SkipSection, TrainSpec, cli, fmt_mean_std, md_table,
                                         mean_std, paired, train_many)
from benchmarks.sections.quality_scientific import (centred_row, centred_table, every_backbone_table, fmt_opts,
                                                    run_summary, sweep, sweep_table, tag)

TITLE = "Demo dataset: backbone vs MRdIB on planted unique / redundant / synergistic structure"
ORDER = 30

DATASET = "demo"
BACKBONES = ("lgmrec", "vbpr")
NAMES = {"lgmrec": "LGMRec", "vbpr": "VBPR", "mmgcn": "MMGCN"}
LABELS = {"recall@10": "R@10", "recall@20": "R@20", "ndcg@10": "N@10", "ndcg@20": "N@20"}
TEXT_MODEL = "all-MiniLM-L6-v2"
MI_STEPS = 2000
DIAG_SEED = 0
#: plain-backbone hyper-parameters chosen on the demo's validation split before any MRdIB run, over MMRec's grid
#: for the backbone (reference-mmrec-backbones.md §1.7). Only where the defaults leave the plain backbone below
#: ID-only item-kNN (test R@20 0.152, docs/demo-dataset.md): VBPR's reg_weight 2.0 (valid R@20 0.038) and MMGCN
#: at lr 1e-3 (0.077). A plain baseline that weak would credit MRdIB with what is only tuning. MMGCN's grid is
#: its lr axis alone: its reg_weight (MMRec's other axis) penalises only the ID and preference tables, which
#: MMRec's MMGCN does not train, so it changes nothing (reg_weight 0, 1e-5 and 1e-4 gave identical runs).
BASE_TUNE: dict[str, dict[str, list[float]]] = {
    "vbpr": {"reg_weight": [2.0, 1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5]},
    "mmgcn": {"lr": [1e-4, 5e-4, 1e-3, 5e-3, 1e-2]},
}


def hp_tag(hp: dict[str, float]) -> str:
    return "".join(f"-{k.replace('_weight', '')}{v:g}" for k, v in sorted(hp.items()))


def hp_args(hp: dict[str, float]) -> list[str]:
    return [a for k, v in sorted(hp.items()) for a in (f"--{k.replace('_', '-')}", f"{v:g}")]


def run_name(backbone: str, mrdib: bool, seed: int, hp: dict[str, float] | None = None) -> str:
    return f"res-demo-{backbone}{hp_tag(hp or {})}{'-mrdib' if mrdib else ''}-s{seed}"


def tune_grid(backbone: str) -> list[dict[str, float]]:
    """Every point of the backbone's BASE_TUNE grid (the Cartesian product of its axes; [] if none)."""
    axes = BASE_TUNE.get(backbone, {})
    return [dict(zip(axes, vals)) for vals in itertools.product(*axes.values())] if axes else []


def tune_backbones(ctx: Context, backbones: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Each plain backbone's BASE_TUNE point by valid Recall@20 (first seed); {"hp": {}} where none is tuned."""
    s0 = ctx.seeds[0]
    grid = {bb: tune_grid(bb) for bb in backbones if bb in BASE_TUNE}
    runs = train_many(ctx, [TrainSpec(DATASET, bb, s0, run_name(bb, False, s0, hp), None, hp_args(hp))
                            for bb, hps in grid.items() for hp in hps])
    valid = {r["run"]: r["valid"]["recall@20"] for r in runs}
    out: dict[str, dict[str, Any]] = {bb: {"hp": {}, "table": []} for bb in backbones}
    for bb, hps in grid.items():
        table = [{"hp": hp, "valid_recall@20": valid[run_name(bb, False, s0, hp)]} for hp in hps]
        out[bb] = {"hp": max(table, key=lambda t: t["valid_recall@20"])["hp"], "table": table}
    return out


def build_dataset(ctx: Context) -> dict[str, Any]:
    """prepare demo (default size) and the quickstart's offline image/text features; returns the card."""
    from mrdib_cli.workflow.quickstart import IMAGE_MODEL, demo_vit_config
    from mrdib_cli.workspace import Workspace

    ctx.log("  prepare demo + offline features (random-weight ViT, bundled MiniLM)")
    cli(ctx, "prepare", "demo", "--name", DATASET)
    cfg = demo_vit_config(Workspace(ctx.ws))
    p = cli(ctx, "extract-features", "-d", DATASET, "--image-model", IMAGE_MODEL, "--image-model-config", str(cfg),
            "--image-pretrained", "none", "--allow-random-weights", "--text-model", TEXT_MODEL,
            "--device", ctx.device, "--workers", "0", check=False)
    if p.returncode == 3:  # missing input: e.g. the text encoder is not installed and there is no network
        why = (p.stderr.strip().splitlines() or ["no message"])[-1]
        raise SkipSection(f"demo features cannot be built offline here: {why}")
    if p.returncode != 0:
        raise RuntimeError(f"mrdib extract-features failed (rc {p.returncode}): {p.stderr.strip()[-2000:]}")
    card = json.loads((ctx.ws / "datasets" / DATASET / "dataset.json").read_text())
    return {"name": DATASET, "n_users": card.get("n_users"), "n_items": card.get("n_items"),
            "n_interactions": card.get("n_interactions"),
            "features": {"image": f"{IMAGE_MODEL} (open_clip, random weights, {cfg.name})", "text": TEXT_MODEL}}


def demo_spec(bb: str, seed: int, opts: dict[str, Any] | None, hp: dict[str, float]) -> TrainSpec:
    """One demo run: plain (``opts`` None) or with MRdIB options, under the backbone's hyper-parameters ``hp``.
    The name says all three, so a run is reused by every step that asks for it (paper defaults: ``...-mrdib-``)."""
    name = run_name(bb, False, seed, hp) if opts is None else f"res-demo-{bb}{hp_tag(hp)}-{tag(opts)}-s{seed}"
    return TrainSpec(DATASET, bb, seed, name, opts, hp_args(hp))


def specs(ctx: Context, hps: dict[str, dict[str, float]]) -> list[TrainSpec]:
    return [demo_spec(bb, s, {} if m else None, hps[bb]) for bb in BACKBONES for m in (False, True) for s in ctx.seeds]


def diagnose_pair(ctx: Context, backbone: str, seed: int, hp: dict[str, float],
                  opts: dict[str, Any] | None = None, figure: str | None = None) -> dict[str, Any]:
    """``mrdib diagnose`` on one seed's (MRdIB, plain) pair, the MRdIB run with ``opts`` (None: the paper's
    defaults); its figure is copied next to the results."""
    new, base = demo_spec(backbone, seed, opts or {}, hp).name, run_name(backbone, False, seed, hp)
    ctx.log(f"  diagnose {new} vs {base}")
    rep = _diagnose(ctx, new, MI_STEPS, "--baseline", base)
    fig = figure or f"quality_demo-diagnose-{backbone}.png"
    shutil.copyfile(ctx.ws / "runs" / new / "diagnose.png", ctx.out_dir / fig)

    def part(r: dict[str, Any]) -> dict[str, Any]:
        mi = r["mi"]
        return {"run": r["run"], "representation": r["representation"], "mi_pair": mi.get("pair"),
                "mi": mi.get("mi"), "mi_train": mi.get("mi_train"),
                "ranking": {g: ({"skipped": v["skipped"]} if "skipped" in v else {m: v[m] for m in METRICS})
                            for g, v in r["ranking"].items()},
                "probes": r.get("probes")}

    return {"seed": seed, "setting": opts or {}, "mi_steps": rep["mi_steps"], "critic_seed": rep["seed"],
            "method": rep["method"], "mrdib": part(rep["run"]), "plain": part(rep["baseline"]), "figure": fig}


#: scorers built from the planted ground truth (mrdib_cli/data/demo_truth.py): (label, kind, attributes,
#: popularity). "oracle": the generator's score with true preferences; "profile": true item attributes, each user's
#: preferences estimated as the mean of their train items' centred one-hot attributes (no popularity term).
PREFS4 = ("colour", "shape", "material", "fit")
CEILINGS: tuple[tuple[str, str, tuple[str, ...], bool], ...] = (
    ("generator's score (true preferences), all four attributes + popularity", "oracle", PREFS4, True),
    ("generator's score without popularity", "oracle", PREFS4, False),
    ("generator's score without fit (the synergistic attribute)", "oracle", PREFS4[:3], True),
    ("generator's score, colour + shape only (the preferences the image shows)", "oracle", ("colour", "shape"), True),
    ("generator's score, colour + material only (the preferences the text shows)", "oracle", ("colour", "material"),
     True),
    ("popularity only", "oracle", (), True),
    ("profile of colour, shape, material, fit (fit given as an attribute)", "profile", PREFS4, False),
    ("profile of colour, shape, material (no fit)", "profile", PREFS4[:3], False),
    ("profile of colour, shape, texture, material, size (all the modalities show, additively)", "profile",
     ("colour", "shape", "texture", "material", "size"), False),
)


def ceilings(ctx: Context) -> list[dict[str, Any]]:
    """Valid and test metrics of the :data:`CEILINGS` scorers (the same evaluation engine and masking as the
    runs): how much each planted attribute is worth, and how far a model with perfect features could get."""
    from mrdib_cli.data.demo_truth import PlantedTruth
    from mrdib_cli.data.handle import DatasetHandle
    from mrdib_cli.evaluation.engine import evaluate_split

    handle = DatasetHandle(ctx.ws / "datasets" / DATASET)
    truth, train = PlantedTruth.of(handle), handle.csr("train")
    rows = []
    for label, kind, attrs, pop in CEILINGS:
        uv = truth.oracle(attrs, pop) if kind == "oracle" else truth.profile(train, attrs)
        res = {split: evaluate_split(handle, *uv, split=split, ks=(10, 20)).metrics for split in ("valid", "test")}
        rows.append({"label": label, "kind": kind, "attributes": list(attrs), "popularity": pop,
                     **{split: {m: res[split][m] for m in METRICS} for split in res}})
    return rows


def selected_variant(ctx: Context, plain: dict[str, list[dict[str, Any]]],
                     hps: dict[str, dict[str, float]]) -> dict[str, Any]:
    """MRdIB with alphas chosen on the demo's *validation* split (the sweep protocol of the Scientific
    section, first seed), then trained on every seed and tested against the plain backbone: the paper tunes
    its alphas per dataset, so the defaults alone are not the method's best case."""
    s0 = ctx.seeds[0]

    def make(bb: str, seed: int, o: dict[str, Any]) -> TrainSpec:
        return demo_spec(bb, seed, o, hps[bb])

    ctx.log(f"  validation sweep on the demo: {len(BACKBONES)} backbones (seed {s0})")
    sel_by_bb, _ = sweep(ctx, BACKBONES, [s0], make)
    out: dict[str, Any] = {}
    for bb in BACKBONES:
        sel = sel_by_bb[bb]
        runs = train_many(ctx, [make(bb, sd, sel["selected"]) for sd in ctx.seeds])
        out[bb] = {"setting": sel["selected"], "sweep": sweep_table(sel), "best_epoch": [r["best_epoch"] for r in runs],
                   "test": {m: [r["test"][m] for r in runs] for m in METRICS},
                   "valid_recall@20": [r["valid"]["recall@20"] for r in runs],
                   "paired": paired(plain[bb], runs)}
    return out


#: A copy of the demo (the same interactions and split) that holds extra feature tables: kept apart so that no
#: table here can become the demo's "newest" features.
FEATURE_DATASET = "demo-features"
#: (key, what the plain backbone is given: image table, text table). A bottleneck can only remove information,
#: so "text without its noise" bounds what any text bottleneck could gain on the demo, and the true attributes
#: show what better encoders would gain instead.
FEATURE_VARIANTS = (
    ("demo", "the demo's own (random-weight ViT image, MiniLM text)", "demo-image", "demo-text"),
    ("clean text", "text without its noise (product noun, brand, filler sentence), same MiniLM; demo image",
     "demo-image", "clean-text"),
    ("true image", "the image's true attributes (one-hot colour, shape, texture); demo text", "true-attributes",
     "demo-text"),
    ("true both", "true attributes in both (image: colour, shape, texture; text: colour, material, size)",
     "true-attributes", "true-attributes"),
)


def _clean_texts(truth: Any) -> list[str]:
    """Each item's text with only what users choose on or need for fit: the demo's colour/material title and
    its material and size sentences (mrdib_cli/data/demo.py's templates), without noun, brand and filler."""
    from mrdib_cli.data.demo import COLOURS, MATERIAL_TEXT, MATERIALS, SIZE_TEXT, SIZES

    a = truth.items
    out = []
    for i in range(len(a["colour"])):
        material, size = MATERIALS[a["material"][i]], SIZES[a["size"][i]]
        out.append(f"{list(COLOURS)[a['colour'][i]].capitalize()} {material}, {size}. {MATERIAL_TEXT[material]} "
                   f"{SIZE_TEXT[size]}")
    return out


def _feature_tables(ctx: Context) -> dict[str, Any]:
    """Copy the demo into FEATURE_DATASET (interactions, split, items, its feature tables; again whenever the
    demo's interactions change) and write the extra tables there (deterministic, written when missing): the
    cleaned text through the same MiniLM, and one-hot true attributes per modality."""
    import torch

    from mrdib_cli.data.dataset_io import publish_dataset
    from mrdib_cli.data.demo_truth import PlantedTruth
    from mrdib_cli.data.handle import DatasetHandle
    from mrdib_cli.features.resolve import resolve_text_model
    from mrdib_cli.data.feature_store import list_tables, select_table, table_path, write_feature_table
    from mrdib_cli.features.text import TextEncoder, encode_text_shard

    src, ds_dir = DatasetHandle(ctx.ws / "datasets" / DATASET), ctx.ws / "datasets" / FEATURE_DATASET
    old = json.loads((ds_dir / "dataset.json").read_text()) if (ds_dir / "dataset.json").exists() else {}
    if (old.get("source") or {}).get("from_digest") != src.digest:  # new, or the demo changed: copy afresh
        card = {**src.card, "name": FEATURE_DATASET,
                "source": {"kind": "copy", "from": DATASET, "from_digest": src.digest,
                           "from_source": src.card.get("source")}}
        publish_dataset(ds_dir, src.interactions, src.items, src.users, card, replace_folder=True,
                        copy_tables=list_tables(src.dir))
    h = DatasetHandle(ds_dir)
    truth = PlantedTruth.of(h)
    meta = {"source": "benchmarks/sections/quality_demo.py (feature ceilings)", "dataset": FEATURE_DATASET}
    path = table_path(h.dir, "text", "clean-text")
    if not path.exists():
        enc = TextEncoder.build(resolve_text_model(TEXT_MODEL), torch.device("cpu"))
        vec, status, _ = encode_text_shard(enc, _clean_texts(truth), 64)
        write_feature_table(path, vec, status, {**meta, "modality": "text", "model": f"{TEXT_MODEL} on clean text"})
    for m, attrs in (("image", ("colour", "shape", "texture")), ("text", ("colour", "material", "size"))):
        path = table_path(h.dir, m, "true-attributes")
        if not path.exists():
            write_feature_table(path, truth.attribute_matrix(attrs), ["ok"] * h.n_items,
                                {**meta, "modality": m, "model": "true attributes"})
    # the demo's own tables by file name: what its runs use (the newest of each modality there)
    own = {m: select_table(src.dir, m) for m in ("image", "text")}
    if None in own.values():
        raise RuntimeError(f"dataset '{DATASET}' lacks a feature table: {own}")
    return {"same_split": _same_split(src, h),
            "tables": {"demo-image": own["image"].name, "demo-text": own["text"].name,  # type: ignore[union-attr]
                       "clean-text": "clean-text", "true-attributes": "true-attributes"}}


def _same_split(a: Any, b: Any) -> bool:
    """Whether two datasets hold the same (user, item, split) rows (the files' digests also cover their layout)."""
    cols = ["user_idx", "item_idx", "split"]
    x, y = (h.interactions.select(cols).sort(cols) for h in (a, b))
    return x.equals(y)


#: the variant whose text is the demo's own while the image is perfect: there removing the text's noise is all
#: that is left to gain (CEILING_VARIANT is its ceiling), so MRdIB is trained on it too
MRDIB_VARIANT = "true image"
CEILING_VARIANT = "true both"


def feature_ceilings(ctx: Context, hps: dict[str, dict[str, float]],
                     settings: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Each plain backbone of the section on the demo's interactions with each of :data:`FEATURE_VARIANTS`,
    every seed; per variant the test metrics and the pooled per-user paired test against the demo's own
    features (which are trained here too, on the copy, so every comparison is within one dataset). With
    ``settings`` (backbone -> MRdIB options, e.g. the alphas selected on the demo), each backbone also trains
    with MRdIB on :data:`MRDIB_VARIANT`, tested against the plain backbone on the same features."""
    info = _feature_tables(ctx)
    names = info["tables"]
    tables = {key: (im, tx) for key, _, im, tx in FEATURE_VARIANTS}

    def spec(bb: str, key: str, sd: int, opts: dict[str, Any] | None = None) -> TrainSpec:
        image, text = tables[key]
        slug = key.replace(" ", "-") + ("" if opts is None else f"-{tag(opts)}")
        return TrainSpec(FEATURE_DATASET, bb, sd, f"res-demofeat-{bb}{hp_tag(hps[bb])}-{slug}-s{sd}", opts,
                         hp_args(hps[bb]) + ["--image-features", names[image], "--text-features", names[text]])

    specs_ = {(bb, key, sd): spec(bb, key, sd) for bb in BACKBONES for key in tables for sd in ctx.seeds}
    mr_specs = {(bb, sd): spec(bb, MRDIB_VARIANT, sd, settings[bb]) for bb in BACKBONES for sd in ctx.seeds
                if settings and bb in settings}
    ctx.log(f"  feature ceilings: {len(specs_)} plain and {len(mr_specs)} MRdIB runs on {FEATURE_DATASET}")
    runs = {r["run"]: r for r in train_many(ctx, list(specs_.values()) + list(mr_specs.values()))}
    out: dict[str, Any] = {"dataset": FEATURE_DATASET, "same_split_as_demo": info["same_split"], "variants": []}
    for key, label, _, _ in FEATURE_VARIANTS:
        row: dict[str, Any] = {"key": key, "label": label}
        for bb in BACKBONES:
            rs = [runs[specs_[(bb, key, sd)].name] for sd in ctx.seeds]
            base = [runs[specs_[(bb, FEATURE_VARIANTS[0][0], sd)].name] for sd in ctx.seeds]
            test = None if key == FEATURE_VARIANTS[0][0] else paired(base, rs, ["recall@20"])["recall@20"]
            row[bb] = {"test_recall@20": [r["test"]["recall@20"] for r in rs],
                       "valid_recall@20": [r["valid"]["recall@20"] for r in rs], "paired": test}
        out["variants"].append(row)
    if mr_specs:
        out["mrdib"] = {"variant": MRDIB_VARIANT, "rows": {}}
        for bb in BACKBONES:
            plain = [runs[specs_[(bb, MRDIB_VARIANT, sd)].name] for sd in ctx.seeds]
            new = [runs[mr_specs[(bb, sd)].name] for sd in ctx.seeds]
            both = [runs[specs_[(bb, CEILING_VARIANT, sd)].name] for sd in ctx.seeds]
            out["mrdib"]["rows"][bb] = {
                "setting": settings[bb],  # type: ignore[index]
                "plain": [r["test"]["recall@20"] for r in plain], "mrdib": [r["test"]["recall@20"] for r in new],
                "ceiling": [r["test"]["recall@20"] for r in both],
                "paired": paired(plain, new, ["recall@20"])["recall@20"],
                "paired_ceiling": paired(plain, both, ["recall@20"])["recall@20"]}
    return out


#: the bottleneck alone (``mib_only``: KL against the backbone's BPR, no unique or redundancy term) over the
#: paper's alpha_kl grid, for the compression curve
CURVE_BACKBONE = "lgmrec"
CURVE_ALPHA_KL = (1e-4, 1e-3, 5e-3, 1e-2, 5e-2)
CURVE_MI_STEPS = 200  # the curve reads the probes; the MINE estimate of each point is not reported


def compression_curve(ctx: Context, hps: dict[str, dict[str, float]], plain_runs: list[dict[str, Any]]
                      ) -> dict[str, Any]:
    """What the bottleneck alone keeps as alpha_kl grows: LGMRec with ``--mib-only`` over the paper's alpha_kl
    grid, every seed; each run's planted-attribute probes (``mrdib diagnose``) and its test/valid Recall@20.
    The plain runs (their hook input h) are the alpha_kl = 0 end. A bottleneck that drops task-irrelevant
    detail first should lose the noun and brand (and size, which matters only jointly with texture) before
    colour and material."""
    bb = CURVE_BACKBONE
    specs = {(a, sd): demo_spec(bb, sd, {"mib_only": True, "alpha_kl": a}, hps[bb])
             for a in CURVE_ALPHA_KL for sd in ctx.seeds}
    ctx.log(f"  compression curve: {bb} --mib-only, alpha_kl {list(CURVE_ALPHA_KL)}, seeds {list(ctx.seeds)}")
    runs = {r["run"]: r for r in train_many(ctx, list(specs.values()))}

    def arm(rs: list[dict[str, Any]]) -> dict[str, Any]:
        return {"runs": [r["run"] for r in rs], "test_recall@20": [r["test"]["recall@20"] for r in rs],
                "valid_recall@20": [r["valid"]["recall@20"] for r in rs], "probes": [_probes(ctx, r["run"]) for r in rs]}

    points = [{"alpha_kl": a, **arm([runs[specs[(a, sd)].name] for sd in ctx.seeds])} for a in CURVE_ALPHA_KL]
    out = {"backbone": bb, "seeds": list(ctx.seeds), "points": points, "plain": arm(plain_runs)}
    out["figure"] = _curve_figure(out, ctx.out_dir / "quality_demo-compression.png")
    return out


def _diagnose(ctx: Context, run: str, mi_steps: int, *extra: str) -> dict[str, Any]:
    """``mrdib diagnose RUN [extra...]`` with the section's critic seed; returns the report it wrote."""
    cli(ctx, "diagnose", run, "--mi-steps", str(mi_steps), "--seed", str(DIAG_SEED), "--device", ctx.device, *extra)
    return json.loads((ctx.ws / "runs" / run / "diagnose.json").read_text())


def _probes(ctx: Context, run: str) -> dict[str, Any] | None:
    """The planted-attribute probes ``mrdib diagnose RUN`` (no baseline) reports."""
    return _diagnose(ctx, run, CURVE_MI_STEPS)["run"].get("probes")


def _probe_mean(probes: list[dict[str, Any] | None], name: str, rep: str, share: bool = False) -> float | None:
    """Mean over seeds of one attribute's probe accuracy from one representation (``share``: as a share of the
    room above chance, 0 = chance, 1 = perfect); None when no seed has probes."""
    vals = []
    for p in probes:
        rows = {row["name"]: row for row in (p or {}).get("attributes") or []}
        if name in rows:
            row = rows[name]
            vals.append((row[rep] - row["chance"]) / (1.0 - row["chance"]) if share else row[rep])
    return float(np.mean(vals)) if vals else None


#: which attributes each panel of the compression curve shows (the ones its modality carries)
CURVE_PANELS = {"text": ("colour", "material", "size", "noun", "brand"), "image": ("colour", "shape", "texture")}


def _curve_figure(curve: dict[str, Any], path: Any) -> str:
    """Left and middle: each attribute's probe accuracy (share above chance, mean over seeds) from the text and
    the image bottleneck samples vs alpha_kl (noise attributes dashed); right: Recall@20 (mean ± std over seeds,
    the plain backbone dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = curve["points"]
    xs = [p["alpha_kl"] for p in pts]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, (modality, names) in zip(axes, CURVE_PANELS.items()):
        for name in names:
            ys = [_probe_mean(p["probes"], name, f"{modality} sample", share=True) for p in pts]
            ax.plot(xs, ys, "--" if name in ("noun", "brand") else "-", marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("alpha_kl (--mib-only)")
        ax.set_ylabel("probe accuracy, share of the room above chance")
        ax.set_title(f"{modality} bottleneck sample: what passes")
        ax.set_ylim(-0.1, 1.05)
        ax.legend(fontsize=8)
    ax = axes[2]
    for key in ("test", "valid"):
        ms = [mean_std(p[f"{key}_recall@20"]) for p in pts]
        line = ax.errorbar(xs, [m for m, _ in ms], yerr=[sd for _, sd in ms], marker="o", capsize=3, label=key)
        ax.axhline(mean_std(curve["plain"][f"{key}_recall@20"])[0], ls=":", color=line[0].get_color(),
                   label=f"{key}, plain")
    ax.set_xscale("log")
    ax.set_xlabel("alpha_kl (--mib-only)")
    ax.set_ylabel(f"Recall@20 (mean ± std, seeds {', '.join(map(str, curve['seeds']))})")
    ax.set_title(f"{NAMES.get(curve['backbone'], curve['backbone'])} ranking")
    ax.legend(fontsize=8)
    from benchmarks.sections._common import save_figure

    return save_figure(fig, path)


EVERY_BACKBONE = ("lgmrec", "vbpr", "freedom", "mgcn", "bm3", "lattice", "soil", "dualgnn", "mmgcn")
QUICK_EVERY = ("lgmrec", "vbpr", "freedom")


def every_backbones(ctx: Context) -> tuple[str, ...]:
    """The backbones of the every-backbone step (fewer with ``--quick``)."""
    return QUICK_EVERY if ctx.quick else EVERY_BACKBONE


def _every_runs(ctx: Context, arms: dict[str, dict[str, Any] | None],
                hps: dict[str, dict[str, float]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every backbone of the every-backbone step under each arm (None: plain), every seed; runs are reused by
    name, so an arm shared with another step is trained once."""
    groups = {(bb, arm): [demo_spec(bb, s, o, hps.get(bb, {})) for s in ctx.seeds]
              for bb in every_backbones(ctx) for arm, o in arms.items()}
    by_name = {r["run"]: r for r in train_many(ctx, [sp for g in groups.values() for sp in g])}
    return {k: [by_name[sp.name] for sp in g] for k, g in groups.items()}


def every_backbone(ctx: Context, setting: dict[str, Any], hps: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Step 4 of the Scientific protocol on the demo: every multimodal backbone plain and with the MRdIB setting
    selected for LGMRec on the demo's validation split (transferred, not re-tuned), every seed. Backbone
    hyper-parameters are each backbone's defaults or, where BASE_TUNE names it, the point chosen on validation
    by :func:`tune_backbones`; equal in both arms."""
    backbones = every_backbones(ctx)
    ctx.log(f"  every backbone on the demo: {len(backbones)} backbones x 2 arms x seeds {list(ctx.seeds)}")
    res = _every_runs(ctx, {"base": None, "mrdib": setting}, hps)
    return {"setting": setting, "rows": {
        bb: {"base": run_summary(res[(bb, "base")]), "mrdib": run_summary(res[(bb, "mrdib")]),
             "paired": paired(res[(bb, "base")], res[(bb, "mrdib")])} for bb in backbones}}


def every_backbone_centred(ctx: Context, setting: dict[str, Any],
                           hps: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The every-backbone step once more with ``centre_logvar`` (the log-variance head sees the hook input minus
    the items' mean; docs/mrdib.md): the plain and uncentred runs are the step's own (reused); the centred arm
    is compared with both by pooled per-user paired tests."""
    backbones = every_backbones(ctx)
    centred = {**setting, "centre_logvar": True}
    ctx.log(f"  every backbone, centred log-variance head: {len(backbones)} backbones x seeds {list(ctx.seeds)}")
    res = _every_runs(ctx, {"base": None, "mrdib": setting, "centred": centred}, hps)
    return {"setting": centred, "rows": {
        bb: centred_row(*(res[(bb, v)] for v in ("base", "mrdib", "centred"))) for bb in backbones}}


def run(ctx: Context) -> dict[str, Any]:
    ds = build_dataset(ctx)
    tuned = tune_backbones(ctx, tuple(dict.fromkeys(BACKBONES + every_backbones(ctx))))
    hps = {bb: t["hp"] for bb, t in tuned.items()}
    runs = train_many(ctx, specs(ctx, hps))
    by = {(r["backbone"], r["mrdib"] is not None, r["seed"]): r for r in runs}
    tests = {}
    for bb in BACKBONES:
        base = [by[(bb, False, s)] for s in ctx.seeds]
        new = [by[(bb, True, s)] for s in ctx.seeds]
        tests[bb] = paired(base, new)
    diag = {bb: diagnose_pair(ctx, bb, ctx.seeds[0], hps[bb]) for bb in BACKBONES}
    selected = selected_variant(ctx, {bb: [by[(bb, False, s)] for s in ctx.seeds] for bb in BACKBONES}, hps)
    diag_sel = {bb: diagnose_pair(ctx, bb, ctx.seeds[0], hps[bb], selected[bb]["setting"],
                                  f"quality_demo-diagnose-{bb}-selected.png") for bb in BACKBONES}
    curve = compression_curve(ctx, hps, [by[(CURVE_BACKBONE, False, sd)] for sd in ctx.seeds])
    every = every_backbone(ctx, selected["lgmrec"]["setting"], hps)
    every_centred = every_backbone_centred(ctx, selected["lgmrec"]["setting"], hps)
    features = feature_ceilings(ctx, hps, {bb: selected[bb]["setting"] for bb in BACKBONES})
    first = run_name(BACKBONES[0], True, ctx.seeds[0], hps[BACKBONES[0]])
    conf = json.loads((ctx.ws / "runs" / first / "config.json").read_text())
    plugin = conf.get("plugin") or {}
    hparams = {bb: json.loads((ctx.ws / "runs" / run_name(bb, False, ctx.seeds[0], hps[bb]) / "config.json")
                              .read_text())["hparams"] for bb in BACKBONES}
    return {
        "dataset": ds,
        "backbones": list(BACKBONES),
        "seeds": list(ctx.seeds),
        "hparams": hparams,
        "backbone_tuning": {bb: v for bb, v in tuned.items() if v["table"]},
        "mrdib_options": {k: plugin.get(k) for k in ("alpha_kl", "alpha_red", "alpha_uni")},
        "train": {k: conf["train"].get(k) for k in ("epochs", "patience", "lr", "batch_size", "valid_metric",
                                                    "test_mask")},
        "runs": [{"run": r["run"], "backbone": r["backbone"], "mrdib": r["mrdib"] is not None, "seed": r["seed"],
                  "best_epoch": r["best_epoch"], "epochs_run": r["epochs_run"], "test": r["test"],
                  "valid": r["valid"], "wall_s": r["wall_s"], "train_s_per_epoch": r["train_s_per_epoch"]}
                 for r in runs],
        "paired": tests,
        "selected": selected,
        "every_backbone": every,
        "every_backbone_centred": every_centred,
        "diagnose": diag,
        "diagnose_selected": diag_sel,
        "compression_curve": curve,
        "figures": [d["figure"] for d in (*diag.values(), *diag_sel.values())] + [curve["figure"]],
        "ceilings": ceilings(ctx),
        "feature_ceilings": features,
    }


# ------------------------------------------------------------------------------------------- rendering
def _metrics_table(res: dict[str, Any]) -> str:
    rows = []
    for bb in res["backbones"]:
        for m in (False, True):
            rs = [r for r in res["runs"] if r["backbone"] == bb and r["mrdib"] == m]
            if not rs:
                continue
            rows.append([NAMES.get(bb, bb), "+ MRdIB" if m else "plain",
                         *(fmt_mean_std([r["test"][k] for r in rs]) for k in METRICS),
                         ", ".join(str(r["best_epoch"]) for r in rs),
                         f"{mean_std([r['wall_s'] for r in rs])[0]:.0f}"])
    return md_table(["backbone", "variant", *(f"test {LABELS[k]}" for k in METRICS), "best epoch per seed",
                     "wall s per run"], rows)


def _p(v: float | None) -> str:
    if v is None or v != v:
        return "n/a"
    return f"{v:.2e}" if v < 1e-3 else f"{v:.3f}"


def _paired_table(res: dict[str, Any]) -> str:
    rows = []
    for bb in res["backbones"]:
        for k in METRICS:
            t = res["paired"][bb][k]
            rows.append([NAMES.get(bb, bb), LABELS[k], f"{t['base']:.4f}", f"{t['new']:.4f}",
                         f"{t['diff']:+.4f} ({100 * t['rel']:+.1f}%)", _p(t["p_ttest"]), _p(t["p_wilcoxon"]),
                         f"{t['n_pairs']:,}"])
    return md_table(["backbone", "metric", "plain", "+ MRdIB", "difference", "p (paired t)", "p (Wilcoxon)",
                     "user pairs"], rows)


def _r20(part: dict[str, Any], group: str) -> str:
    v = part["ranking"].get(group)
    if v is None:
        return "-"
    return "skipped" if "skipped" in v else f"{v['recall@20']:.4f}"


def _num(v: float, digits: int) -> str:
    """Fixed-point without a '-0.000' for a value that rounds to zero (the MINE bound can dip below 0)."""
    return f"{0.0 if abs(v) < 0.5 * 10 ** -digits else v:.{digits}f}"


def _mi(part: dict[str, Any]) -> str:
    return "n/a" if part.get("mi") is None else _num(part["mi"], 3)


def _diag_table(res: dict[str, Any], key: str = "diagnose") -> str:
    rows = []
    for bb in res["backbones"]:
        d = res[key][bb]
        for label, arm in (("plain", "plain"), ("+ MRdIB", "mrdib")):
            part = d[arm]
            rows.append([NAMES.get(bb, bb), label, part["representation"], _mi(part), _r20(part, "image"),
                         _r20(part, "text"), _r20(part, "fused")])
    return md_table(["backbone", "run", "representation", "I(Z_v;Z_t) nats (held-out)", "R@20 image alone",
                     "R@20 text alone", "R@20 fused"], rows)


PROBE_COLUMNS = (("plain", "image h", "image h (plain)"), ("plain", "text h", "text h (plain)"),
                 ("mrdib", "image mu", "image mu"), ("mrdib", "text mu", "text mu"),
                 ("mrdib", "image sample", "image z"), ("mrdib", "text sample", "text z"),
                 ("plain", "item scored", "item (plain)"), ("mrdib", "item scored", "item (MRdIB)"))


def _cell(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _probe_tables(res: dict[str, Any], key: str = "diagnose", label: str = "") -> list[str]:
    """Per backbone: planted attributes decodable from each representation (from ``mrdib diagnose``)."""
    out = []
    for bb in res["backbones"]:
        d = (res.get(key) or {}).get(bb) or {}
        probes = {k: ((d.get(k) or {}).get("probes") or {}).get("attributes") for k in ("plain", "mrdib")}
        if not all(probes.values()):
            continue
        by = {k: {row["name"]: row for row in v} for k, v in probes.items()}
        # "-" where a report predates a representation (diagnose.json from an older version)
        rows = [[row["name"], row["shows"], f"{row['chance']:.2f}",
                 *[_cell(by[k][row["name"]].get(rep)) for k, rep, _ in PROBE_COLUMNS]] for row in probes["mrdib"]]
        out += [f"*{NAMES.get(bb, bb)}{', ' + label if label else ''}*", "",
                md_table(["attribute", "shows in", "chance", *[c for _, _, c in PROBE_COLUMNS]], rows), ""]
    return out


def _curve_table(curve: dict[str, Any]) -> str:
    """One row per alpha_kl (the plain runs' h first): Recall@20 (mean ± std over seeds) and the probe accuracy
    of each attribute from the text and image samples (mean over seeds; the chance row on top)."""
    cols = [(m, a) for m, names in CURVE_PANELS.items() for a in names]
    probes = [p for pt in curve["points"] for p in pt["probes"]]

    def cells(ps: list[dict[str, Any] | None], kind: str) -> list[str]:
        vals = [_probe_mean(ps, a, f"{m} {kind}") for m, a in cols]
        return ["-" if v is None else f"{v:.2f}" for v in vals]

    rows = [["chance", "", "", *["-" if c is None else f"{c:.2f}" for c in (_chance(probes, a) for _, a in cols)]]]
    plain = curve["plain"]
    rows.append(["plain (h)", fmt_mean_std(plain["valid_recall@20"]), fmt_mean_std(plain["test_recall@20"]),
                 *cells(plain["probes"], "h")])
    for p in curve["points"]:
        rows.append([f"{p['alpha_kl']:g}", fmt_mean_std(p["valid_recall@20"]), fmt_mean_std(p["test_recall@20"]),
                     *cells(p["probes"], "sample")])
    return md_table(["alpha_kl", "valid R@20", "test R@20", *[f"{m} z: {a}" for m, a in cols]], rows)


def _chance(probes: list[dict[str, Any] | None], name: str) -> float | None:
    """An attribute's chance rate (the majority class among the items: the same for every run)."""
    for p in probes:
        for row in (p or {}).get("attributes") or []:
            if row["name"] == name:
                return float(row["chance"])
    return None


def _diag_sentences(res: dict[str, Any], key: str = "diagnose") -> list[str]:
    out = []
    for bb in res["backbones"]:
        d = res[key][bb]
        a, b = d["plain"].get("mi"), d["mrdib"].get("mi")
        if a is not None and b is not None:
            verb = "lowers" if b < a else "raises" if b > a else "leaves"
            out.append(f"{NAMES.get(bb, bb)} (seed {d['seed']}): MRdIB {verb} the held-out I(Z_v;Z_t) estimate "
                       f"from {_num(a, 3)} to {_num(b, 3)} nats.")
    return out


def _tuning_sentence(bb: str, t: dict[str, Any], seed: int) -> str:
    """How a plain backbone's hyper-parameters were chosen: every value of a one-axis grid; for a larger grid
    the axes, the chosen point and the range of scores ("" where nothing was tuned)."""
    if not t["table"]:
        return ""
    name, keys = NAMES.get(bb, bb), list(t["hp"])
    if len(keys) == 1:
        vals = ", ".join(f"{x['hp'][keys[0]]:g}: {x['valid_recall@20']:.4f}" for x in t["table"])
        return (f" {name}'s {keys[0]} was chosen on validation before any MRdIB run (plain {name}, seed {seed}, "
                f"valid R@20 per value: {vals}).")
    scores = [x["valid_recall@20"] for x in t["table"]]
    best = max(t["table"], key=lambda x: x["valid_recall@20"])
    chosen = ", ".join(f"{k} {v:g}" for k, v in sorted(best["hp"].items()))
    axes = " x ".join(f"{k} {{{', '.join(f'{v:g}' for v in BASE_TUNE.get(bb, {}).get(k, []))}}}" for k in keys)
    return (f" {name}'s {' and '.join(keys)} were chosen on validation before any MRdIB run over MMRec's grid "
            f"({axes}: {len(scores)} points, plain {name}, seed {seed}): {chosen} (valid R@20 "
            f"{best['valid_recall@20']:.4f}; the grid's range {min(scores):.4f}-{max(scores):.4f}).")


def _hparams_line(res: dict[str, Any]) -> str:
    hp = res.get("hparams") or {}
    per = [f"{NAMES.get(bb, bb)}: " + ", ".join(f"{k} {v}" for k, v in sorted(hp[bb].items()))
           for bb in res["backbones"] if bb in hp]
    line = "Hyper-parameters (plain and + MRdIB alike): " + "; ".join(per) + "." if per else ""
    for bb, t in (res.get("backbone_tuning") or {}).items():
        line += _tuning_sentence(bb, t, res["seeds"][0])
        if t["table"] and bb not in res["backbones"]:
            line += f" {NAMES.get(bb, bb)} trains with it in both arms of the every-backbone table below."
    return line


def _selected_table(res: dict[str, Any]) -> str:
    rows = []
    for bb, v in res.get("selected", {}).items():
        opts = ", ".join(f"{k} {x:g}" for k, x in sorted(v["setting"].items()))
        best = max(v["sweep"], key=lambda t: t["valid_recall@20"])["valid_recall@20"]
        p = v["paired"]["recall@20"]
        rows.append([NAMES.get(bb, bb), opts, f"{best:.4f}", *(fmt_mean_std(v["test"][k]) for k in METRICS),
                     f"{100 * p['rel']:+.1f}%", _p(p["p_ttest"])])
    return md_table(["backbone", "selected on validation", "sweep valid R@20", *(f"test {LABELS[k]}" for k in METRICS),
                     "ΔR@20 vs plain", "p (paired t)"], rows)


def _ceilings_table(rows: list[dict[str, Any]]) -> str:
    return md_table(["scorer", "valid R@20", "test R@10", "test R@20", "test N@20"],
                    [[r["label"], _num(r["valid"]["recall@20"], 4), _num(r["test"]["recall@10"], 4),
                      _num(r["test"]["recall@20"], 4), _num(r["test"]["ndcg@20"], 4)] for r in rows])


def _feature_table(res: dict[str, Any]) -> str:
    rows = []
    for v in res["feature_ceilings"]["variants"]:
        cells = []
        for bb in res["backbones"]:
            r = v[bb]
            t = r["paired"]
            cells += [fmt_mean_std(r["test_recall@20"]),
                      "-" if t is None else f"{100 * t['rel']:+.1f}% (p {_p(t['p_ttest'])})"]
        rows.append([v["key"], v["label"], *cells])
    heads = [h for bb in res["backbones"] for h in (f"{NAMES.get(bb, bb)} test R@20", "vs demo features")]
    return md_table(["features", "what the backbone is given", *heads], rows)


def _feature_mrdib_table(res: dict[str, Any]) -> str:
    rows = []
    for bb, r in res["feature_ceilings"]["mrdib"]["rows"].items():
        t, c = r["paired"], r["paired_ceiling"]
        rows.append([NAMES.get(bb, bb), fmt_opts(r["setting"]), fmt_mean_std(r["plain"]), fmt_mean_std(r["mrdib"]),
                     f"{100 * t['rel']:+.1f}% (p {_p(t['p_ttest'])})", fmt_mean_std(r["ceiling"]),
                     f"{100 * c['rel']:+.1f}% (p {_p(c['p_ttest'])})"])
    return md_table(["backbone", "MRdIB setting", "plain test R@20", "+ MRdIB", "MRdIB vs plain",
                     "true both (ceiling)", "ceiling vs plain"], rows)


def _ceilings_sentence(res: dict[str, Any]) -> str:
    """Where the trained backbones sit among the ceilings (figures read from the results, not typed)."""
    rows = (res.get("every_backbone") or {}).get("rows") or {}
    if not rows:
        return ""

    def best(arm: str) -> tuple[str, float]:
        bb = max(rows, key=lambda b: mean_std(rows[b][arm]["test"]["recall@20"])[0])
        return NAMES.get(bb, bb), mean_std(rows[bb][arm]["test"]["recall@20"])[0]
    (b_name, b_val), (m_name, m_val) = best("base"), best("mrdib")
    return (f"For comparison, the best plain backbone of the every-backbone table ({b_name}) reaches test R@20 "
            f"{b_val:.4f} and the best backbone with MRdIB ({m_name}) {m_val:.4f}.")


def render(res: dict[str, Any]) -> str:
    ds, tr, mo = res["dataset"], res["train"], res["mrdib_options"]
    seeds = res["seeds"]
    diag_seed = next(iter(res["diagnose"].values()))["seed"] if res["diagnose"] else None
    mi_steps = next(iter(res["diagnose"].values()))["mi_steps"] if res["diagnose"] else None
    parts = [
        f"Data: `mrdib prepare demo` ({ds['n_users']:,} users, {ds['n_items']:,} items, "
        f"{ds['n_interactions']:,} interactions after the 5-core; per-user random split). Users prefer a "
        f"colour (visible in image **and** text: redundant), a shape (image only), a material (text only) and a "
        f"fit that only the image's texture **with** the text's size determines (synergistic); see "
        f"docs/demo-dataset.md. Features, built offline as `mrdib quickstart` builds them: image "
        f"{ds['features']['image']}, text {ds['features']['text']}. Each backbone plain and "
        f"with `--mrdib` (alpha_kl {mo.get('alpha_kl')}, alpha_red {mo.get('alpha_red')}, alpha_uni "
        f"{mo.get('alpha_uni')}); Adam lr {tr['lr']}, batch {tr['batch_size']}, early stopping on valid "
        f"{tr['valid_metric']} (patience {tr['patience']}, at most {tr['epochs']} epochs), test at the "
        f"best-validation epoch with `{tr['test_mask']}` masking. Seeds {', '.join(map(str, seeds))}; "
        f"mean ± sample std over seeds.",
        "",
        _hparams_line(res),
        "",
        "**Test metrics**",
        "",
        _metrics_table(res),
        "",
        f"**Per-user paired test, MRdIB vs plain** (each user of each seed is one pair, pooled over "
        f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}; two-sided paired t-test and Wilcoxon signed-rank):",
        "",
        _paired_table(res),
        "",
    ]
    if res.get("selected"):
        n_pts = ", ".join(f"{bb} {len(v['sweep'])}" for bb, v in res["selected"].items())
        parts += [f"**MRdIB with alphas selected on the demo's validation split** (points scored: {n_pts}; the "
                  f"grid, alpha_red step and alpha_uni extension of the Scientific section, seed {seeds[0]}; then "
                  f"every seed; paired test against the plain rows above):", "",
                  _selected_table(res), ""]
    if res.get("every_backbone"):
        eb = res["every_backbone"]
        tuned = ", ".join(NAMES.get(bb, bb) for bb in res.get("backbone_tuning") or {}) or "none"
        parts += [f"**Every multimodal backbone on the demo**: plain vs MRdIB with the setting selected for LGMRec "
                  f"above ({fmt_opts(eb['setting'])}), transferred unchanged (as in the Scientific section); each "
                  f"backbone's own defaults in both arms ({tuned}: the hyper-parameters chosen on validation "
                  f"above); mean ± std over seeds {', '.join(map(str, seeds))}; paired tests pool the seeds' "
                  f"per-user results. With this many "
                  f"backbones, one p-value near 0.05 is expected by chance (Bonferroni: 0.05 / "
                  f"{len(eb['rows'])} = {0.05 / len(eb['rows']):.4f}).", "",
                  every_backbone_table(eb["rows"]), ""]
    if res.get("every_backbone_centred"):
        ec = res["every_backbone_centred"]
        parts += ["**The same with the centred log-variance head** (`--centre-logvar`: the log-variance head sees "
                  "the hook input minus the items' mean, so an offset all items share cannot move every "
                  "log-variance at once; docs/mrdib.md). Same plain and uncentred runs as the table above; "
                  f"{fmt_opts(ec['setting'])}; mean ± std over seeds {', '.join(map(str, seeds))}; pooled per-user "
                  "paired t-tests against the plain backbone and against the uncentred MRdIB runs.", "",
                  centred_table(ec["rows"]), ""]
    if res.get("ceilings"):
        parts += ["**How much room the planted structure leaves** (scorers built from the generator's ground truth, "
                  "`mrdib_cli/data/demo_truth.py`, evaluated like the runs: train items masked, full ranking). "
                  "'Generator's score' ranks with the users' true preferences (the generator's own score without "
                  "its Gumbel noise); 'profile' knows every item's true attributes but estimates each user's "
                  "preferences from their train items (the mean of the items' centred one-hot attributes), a simple "
                  "model with perfect features. Fit is the XOR of the image's texture and the text's size: a sum of "
                  "per-attribute terms, like the last profile's, cannot express it.", "",
                  _ceilings_table(res["ceilings"]), ""]
        parts += [_ceilings_sentence(res), ""] if _ceilings_sentence(res) else []
    fc = res.get("feature_ceilings")
    if fc:
        parts += ["**What better features would gain, and what a perfect bottleneck could** (plain backbones, their "
                  "hyper-parameters as above, on a copy of the demo (identical interactions and split: "
                  f"{'yes' if fc['same_split_as_demo'] else 'NO'}) "
                  "with other feature tables; test R@20 mean ± std over seeds, and the pooled per-user paired test "
                  "against the demo's own features). A bottleneck can only remove information, so 'clean text' "
                  "bounds what any text bottleneck could gain here; the true attributes show the gain that is "
                  "left to the encoders instead.", "", _feature_table(res), ""]
        if fc.get("mrdib"):
            parts += [f"With the true image attributes and the demo's own text ('{fc['mrdib']['variant']}'), removing "
                      f"the text's noise is all that is left to gain: 'true both' is the ceiling there. MRdIB on "
                      f"those features, with each backbone's alphas selected on the demo above, against the plain "
                      f"backbone on the same features (pooled per-user paired t-test):", "", _feature_mrdib_table(res),
                      ""]
    parts += [
        f"**What the planted structure does** (`mrdib diagnose` on seed {diag_seed}'s pair, MRdIB with the paper's "
        f"defaults; fresh MINE critic, {mi_steps} steps, fit on 80% of the items and evaluated on the other 20%). "
        f"I(Z_v;Z_t) is measured on the bottleneck means for the MRdIB run and on the backbone's modality "
        f"representations at the same hook points for the plain run (standardised). 'Image alone' can only use "
        f"shape, texture and colour, 'text alone' only colour, material and size; the synergistic fit needs both.",
        "",
        _diag_table(res),
        "",
    ]
    parts += [" ".join(_diag_sentences(res)), ""] if _diag_sentences(res) else []
    sel = res.get("diagnose_selected")
    if sel:
        settings = "; ".join(f"{NAMES.get(bb, bb)}: {fmt_opts(sel[bb]['setting'])}"
                             for bb in res["backbones"] if bb in sel)
        parts += [f"The same with the alphas selected on validation ({settings}):", "",
                  _diag_table(res, "diagnose_selected"), ""]
        parts += [" ".join(_diag_sentences(res, "diagnose_selected")), ""] \
            if _diag_sentences(res, "diagnose_selected") else []
    probe_tables = _probe_tables(res, "diagnose", "paper defaults" if sel else "")
    probe_tables += _probe_tables(res, "diagnose_selected", "alphas selected on validation") if sel else []
    if probe_tables:
        parts += [f"**What passes the bottleneck** (same pairs; linear-probe accuracy of each planted attribute on "
                  f"held-out items, 80/20 split of the items; `mrdib diagnose` does this on any demo dataset). h: "
                  f"the plain run's hook input; mu: the MRdIB run's bottleneck mean; z: one sample of it, which is "
                  f"what the channel passes (a probe on mu decodes anything that moves mu, however small against "
                  f"the noise); item: the ranked item embedding (ID and content together), which can also carry "
                  f"what the interactions teach and no modality shows, such as fit. Noun and brand are in the "
                  f"text but users ignore them, and size matters only "
                  f"through fit: a bottleneck that drops what a modality says nothing about on its own should lose "
                  f"those first.", ""] + probe_tables
    curve = res.get("compression_curve")
    if curve and "plain" in curve:
        parts += [f"**The bottleneck alone, as alpha_kl grows** ({NAMES.get(curve['backbone'], curve['backbone'])} "
                  f"with `--mib-only`: only the KL against the backbone's BPR, no unique or redundancy term; the "
                  f"paper's alpha_kl grid; seeds {', '.join(map(str, curve['seeds']))}). Probe accuracy from one "
                  f"sample of each bottleneck at the run's best-validation epoch (the model that is evaluated), "
                  f"mean over seeds; the plain runs' h for reference. A bottleneck that drops what a modality says "
                  f"nothing about on its own should lose the noun, the brand and size (which matters only "
                  f"through fit, jointly with the image's texture) before colour and material.", "",
                  _curve_table(curve), "", f"![compression curve](results/{curve['figure']})", ""]
    for key, label in (("diagnose", ""), ("diagnose_selected", ", alphas selected on validation")):
        parts += [f"![mrdib diagnose, {NAMES.get(bb, bb)}{label}](results/{res[key][bb]['figure']})"
                  for bb in res["backbones"] if bb in (res.get(key) or {})]
    return "\n".join(parts)
