"""The speed and scaling sections of benchmarks/run_all.py: rendering, exponent fit, synthetic generator."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"section_{name}", ROOT / "benchmarks" / "sections" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


speed = _load("speed")
scaling = _load("scaling")


def _speed_result(device: str = "cpu") -> dict:
    feat = {"items": 64, "in_run_overhead_pct": 3.25, "outside_forward_pct": 3.1, "pipeline_items_per_s": 17.77,
            "end_to_end_items_per_s": 12.34, "bare_forward_items_per_s": 18.91, "overhead_pct": 6.4,
            "cpu_overhead_pct": 2.0, "pipeline_s": 3.6, "pipeline_cpu_s": 3.5, "bare_forward_s": 3.4,
            "bare_forward_cpu_s": 3.4, "end_to_end_s": 5.2}
    return {
        "device": device, "threads": 1, "mode": "quick", "figures": ["speed-backbones.png"],
        "wall_s": {"prepare": 21.0, "features": 40.0, "backbones": 180.0, "eval": 30.0},
        "prepare": {"reviews": 160792, "meta_lines": 71317, "wall_s": 4.41, "walls_s": [4.41], "peak_rss_mib": 260,
                    "generate_s": 14.9, "raw_mib": 35.0},
        "features": {"threads": 1, "cpus": 2, "workers": 1, "batch_size": 64, "repeat": 1,
                     "results": {"image (ViT-B-32, random weights)": feat,
                                 "text (all-MiniLM-L6-v2, bundled)": {**feat, "pipeline_items_per_s": 432.1}}},
        "backbones": {"epochs": 1, "rows": [
            {"backbone": "lightgcn", "build_s": 0.61, "train_s_per_epoch": 2.68, "valid_s_per_pass": 0.77,
             "train_cpu_s_per_epoch": 2.6, "valid_cpu_s_per_pass": 0.7, "peak_rss_mib": 1147, "peak_cuda_mib": 321},
            {"backbone": "soil", "error": "out of memory"}]},
        "eval": {"data": "real Amazon Baby LATTICE split", "n_users": 19445, "n_items": 7050, "d": 64,
                 "train_nnz": 118551, "users_evaluated": 19445, "threads": 1, "repeats": 1, "reference_device": device,
                 "ours_cold_s": 0.511, "ours_warm_s": 0.377, "reference_s": 6.789, "speedup_cold": 13.3,
                 "speedup_warm": 18.0, "max_abs_metric_diff": 2.3e-8, "fallback_rows": 0,
                 "ours": {"recall@20": 0.0876}, "reference": {"recall@20": 0.0875}},
    }


def test_speed_render_shows_every_number():
    md = speed.render(_speed_result())
    for s in ("4.41", "260", "160,792", "17.8", "432.1", "+3.2%", "+6.4%", "lightgcn", "2.68", "0.77", "1,147",
              "error: out of memory", "0.511", "0.377", "6.789", "13.3x", "18.0x", "2.3e-08", "0.0876 / 0.0875",
              "random weights", "CPU, 1 torch thread", "results/speed-backbones.png",
              "prepare 21 s, features 40 s, backbones 180 s, eval 30 s"):
        assert s in md, s
    assert "GPU" not in md and "peak CUDA" not in md
    gpu = speed.render(_speed_result("cuda"))
    assert "GPU (cuda)" in gpu and "321" in gpu and "reference on GPU" in gpu


def test_speed_render_skipped_part_says_why():
    res = _speed_result()
    res["backbones"] = {"skipped": "Amazon Baby LATTICE split not found (/nowhere)"}
    res["figures"] = []
    md = speed.render(res)
    assert "skipped: Amazon Baby LATTICE split not found (/nowhere)" in md
    assert "speed-backbones.png" not in md


def test_fit_exponent_recovers_a_power_law():
    x = np.array([1, 2, 4, 8, 16])
    assert scaling.fit_exponent(x, 3.7 * x ** 1.85) == pytest.approx(1.85, abs=1e-9)
    assert scaling.fit_exponent(x, 0.2 * x ** 0.5) == pytest.approx(0.5, abs=1e-9)


def _scaling_result() -> dict:
    rows = []
    for f in (1, 2, 4):
        for b, c in (("lightgcn", 2.5), ("vbpr", 1.5)):
            rows.append({"factor": f, "backbone": b, "n_users": 19445 * f, "n_items": 7050 * f,
                         "n_interactions": 160790 * f, "train_interactions": 116434 * f,
                         "train_s_per_epoch": c * f ** 2, "valid_s_per_pass": 0.5 * f ** 1.5,
                         "wall_s": 10.0 * f, "peak_rss_mib": 1100 + 50 * f})
    exps = {b: {m: scaling.fit_exponent([r["factor"] for r in rows if r["backbone"] == b],
                                        [r[m] for r in rows if r["backbone"] == b]) for m, _ in scaling.METRICS}
            for b in scaling.BACKBONES}
    return {"factors": [1, 2, 4], "backbones": list(scaling.BACKBONES), "feature_dim": 64, "rows": rows,
            "exponents": exps, "device": "cpu", "threads": 1, "seed": 1, "mode": "quick",
            "figures": ["scaling-loglog.png"]}


def test_scaling_render_and_plot(tmp_path):
    res = _scaling_result()
    md = scaling.render(res)
    for s in ("4x", "77,780", "28,200", "643,160", "40.00", "| lightgcn | 2.00 | 1.50 |", "1,300",
              "Quick mode", "results/scaling-loglog.png", "interactions per user"):
        assert s in md, s
    name = scaling.plot(res, tmp_path / "scaling-loglog.png")
    assert name == "scaling-loglog.png" and (tmp_path / name).stat().st_size > 5000
    json.dumps(res)  # JSON-serialisable as run_all stores it
    assert "MRDIB_SCALING_FACTORS" not in md
    short = {**res, "mode": "full"}  # a full run limited to 1x-4x must say so
    assert "Sizes set by MRDIB_SCALING_FACTORS (full mode runs 1x, 2x, 4x, 8x, 16x)" in scaling.render(short)
    assert "Quick mode" not in scaling.render(short) and "earlier run" not in md
    res["rows"][0]["reused"] = True
    assert "| 1x * |" in scaling.render(res) and "earlier run" in scaling.render(res)


def test_generator_keeps_baby_density_per_user():
    for f in (1, 2):
        n_users, n_items, users, items, split = scaling.generate(f, seed=3)
        assert (n_users, n_items) == (19_445 * f, 7_050 * f)
        per_user = len(users) / n_users
        assert per_user == pytest.approx(160_792 / 19_445, rel=1e-3)  # same interactions per user as Baby
        assert len(np.unique(users * n_items + items)) == len(users)  # no duplicate pairs
        deg = np.bincount(users, minlength=n_users)
        assert deg.min() >= 5
        for code in (0, 1, 2):  # every user has train, valid and test items
            assert np.bincount(users[split == code], minlength=n_users).min() >= 1
        assert 0.70 < np.mean(split == 0) < 0.78  # Baby: 74% train
        assert np.bincount(items, minlength=n_items).min() >= 1


def test_written_dataset_reads_like_any_dataset(tmp_path):
    from mrdib_cli.data.handle import DatasetHandle

    name = scaling.write_dataset(tmp_path, 1, seed=0)
    h = DatasetHandle(tmp_path / "datasets" / name)
    assert (h.n_users, h.n_items) == (19_445, 7_050)
    assert h.csr("train").shape == (19_445, 7_050)
    assert h.features("image").vectors.shape == (7_050, scaling.FEATURE_DIM)
    assert h.card["source"]["factor"] == 1


def test_speed_gpu_import_keeps_the_successful_line_and_names_what_is_missing() -> None:
    from benchmarks.sections import speed_gpu

    ok = {"backbone": "vbpr", "build_s": 1.4, "train_s_per_epoch": 0.7, "valid_s_per_pass": 0.86,
          "peak_rss_mib": 1983, "peak_cuda_mib": 246, "epochs": 1}
    lines = ["noise", json.dumps({"backbone": "vbpr", "error": "RuntimeError: boom"}), json.dumps(ok),
             json.dumps({"backbone": "vbpr", "error": "later failure"})]
    rows = speed_gpu.parse_lines(lines)
    assert rows == [ok]  # a later error does not replace a measured row
    md = speed_gpu.render({"rows": rows, "gpu": "Some GPU", "source": "run"})
    assert "Some GPU" in md and "| vbpr | 1.40 | 0.70 | 0.86 | 246 | 1,983 |" in md
    assert "lightgcn" in md.split("Not measured")[1]  # the backbones without a row are named


def test_scaling_render_shows_the_sampled_part_its_evaluation_and_the_graph_build():
    res = _scaling_result()
    rows = []
    for f in (1, 4):
        for b in scaling.SAMPLED_BACKBONES:
            r = {"factor": f, "backbone": b, "n_users": 19445 * f, "n_items": 7050 * f, "n_interactions": 160790 * f,
                 "train_s_per_epoch": 3.0 * f, "train_cpu_s": 2.0 * f, "peak_rss_mib": 900 + f}
            if b == scaling.EVAL_BACKBONE:
                r.update(valid_s_per_pass=1.25 * f * f, peak_rss_eval_mib=1000 + f)
            rows.append(r)
    exps = {b: {"train_s_per_epoch": 1.0, "train_cpu_s": 1.11, "peak_rss_mib": 0.1,
                **({"valid_s_per_pass": 2.0} if b == scaling.EVAL_BACKBONE else {})} for b in scaling.SAMPLED_BACKBONES}
    budgeted = scaling.variant_label("lgmrec", 8192)
    rows.append({**rows[-1], "backbone": budgeted, "train_cpu_s": 5.5})
    exps[budgeted] = {"train_s_per_epoch": 1.0, "train_cpu_s": 1.02, "peak_rss_mib": 0.1}
    res["sampled"] = {"factors": [1, 4], "rows": rows, "exponents": exps, "eval_backbone": scaling.EVAL_BACKBONE,
                      "graph": {"factor": 4, "wall_s": 61.0, "cpu_s": 58.0, "peak_rss_mib": 2345}}
    res["full_from"] = {"date": "2026-11-27 06:48 UTC", "commit": "e97e9f1", "cpu": "Xeon"}
    md = scaling.render(res)
    assert "| 4x | 77,780 | 28,200 | 643,160 | lightgcn | 12.00 | 8.00 | 904 | 20.0 | 1,004 |" in md
    assert "| 4x | 77,780 | 28,200 | 643,160 | lgmrec | 12.00 | 8.00 | 904 | - | - |" in md
    assert "| lightgcn | 1.00 | 1.11 | 0.10 | 2.00 |" in md and "| vbpr | 1.00 | 1.11 | 0.10 | - |" in md
    assert "| 4x | 77,780 | 28,200 | 643,160 | lgmrec, node budget 8192 | 12.00 | 5.50 | 904 | - | - |" in md
    assert "| lgmrec, node budget 8192 | 1.00 | 1.02 | 0.10 | - |" in md and "`--node-budget N`" in md
    assert "`mrdib build-graph` at 4x" in md and "61 s wall" in md and "2,345 MiB" in md
    assert "from the run of 2026-11-27 06:48 UTC (Xeon, commit e97e9f1)" in md
    json.dumps(res)


def test_a_second_sampled_only_rerun_keeps_naming_the_run_of_the_full_mode_rows(tmp_path):
    """``MRDIB_SCALING_PARTS=sampled`` keeps the stored full-mode rows; rebuilt twice, the page must still name
    the run those rows came from, not the first rebuild."""
    from types import SimpleNamespace

    origin = {"date": "2026-11-27 06:48 UTC", "commit": "e97e9f1", "cpu": "Xeon"}
    first = {"meta": {**origin, "threads": 1}, "result": {**_scaling_result(), "sampled": None}}
    (tmp_path / "scaling.json").write_text(json.dumps(first))
    ctx = SimpleNamespace(out_dir=tmp_path)
    once = scaling.keep_full_part(ctx, {"rows": []})
    assert once["full_from"] == origin
    (tmp_path / "scaling.json").write_text(json.dumps(
        {"meta": {"date": "2026-12-07 05:49 UTC", "commit": "dde2adc", "cpu": "EPYC"}, "result": once}))
    assert scaling.keep_full_part(ctx, {"rows": []})["full_from"] == origin


def test_a_graph_only_rerun_keeps_the_training_rows_and_names_their_run(tmp_path):
    """``MRDIB_SCALING_PARTS=graph`` replaces only the build-graph point: the page must say which run the
    full-mode and sampled rows come from, and a later sampled rerun must stop saying so of its own rows."""
    from types import SimpleNamespace

    origin = {"date": "2026-12-07 09:10 UTC", "commit": "b281316", "cpu": "EPYC"}
    full_origin = {"date": "2026-11-27 06:48 UTC", "commit": "e97e9f1", "cpu": "Xeon"}
    sampled = {"factors": [1, 4], "rows": [], "exponents": {}, "graph": {"factor": 4, "wall_s": 9.0, "cpu_s": 8.0,
                                                                         "peak_rss_mib": 1000}}
    result = {**_scaling_result(), "sampled": sampled, "full_from": full_origin}
    (tmp_path / "scaling.json").write_text(json.dumps({"meta": origin, "result": result}))
    ctx = SimpleNamespace(out_dir=tmp_path)
    new_graph = {"factor": 64, "wall_s": 700.0, "cpu_s": 650.0, "peak_rss_mib": 1200}
    res = scaling.keep_all_but_graph(ctx, new_graph)
    assert res["sampled"]["graph"] == new_graph and res["sampled"]["factors"] == [1, 4]
    assert res["full_from"] == full_origin and res["sampled_from"] == origin
    md = scaling.render(res)
    assert "The sampled rows above are from the run of 2026-12-07 09:10 UTC (EPYC, commit b281316)." in md
    assert "the build-graph point below was measured again (`MRDIB_SCALING_PARTS=graph`)" in md
    assert "`mrdib build-graph` at 64x" in md and "700 s wall" in md
    (tmp_path / "scaling.json").write_text(json.dumps({"meta": {**origin, "date": "later"}, "result": res}))
    again = scaling.keep_full_part(ctx, sampled)
    assert "sampled_from" not in again and again["full_from"] == full_origin
    assert "The sampled rows above" not in scaling.render(again)
