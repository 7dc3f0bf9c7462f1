"""Per-backbone cost at Baby scale on a GPU (the same benchmark as the speed section's part (c), on CUDA).

``run(ctx)`` needs a CUDA device (``--device cuda`` on a GPU machine) and is skipped otherwise. A GPU is not
always at hand, so a result can also be imported from the JSON lines `benchmarks/bench_backbones.py
--device cuda` printed on the GPU machine (one line per backbone), without retyping any figure:

    python -m benchmarks.sections.speed_gpu --from-log bench-bb.log [--from-log ...] --gpu "NVIDIA H200" \\
        --torch 2.11.0+cu130 --date "2026-11-27 02:56 UTC" --commit c2f1652/8c527e6
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.sections._common import ROOT, Context, SkipSection, md_table

TITLE = "Speed on a GPU: per-backbone cost at Baby scale"
ORDER = 45
BACKBONES = "lightgcn,vbpr,lgmrec,freedom,mgcn,bm3,lattice,soil,mmgcn,dualgnn"


def parse_lines(lines: list[str]) -> list[dict[str, Any]]:
    """The bench's JSON lines; the last line per backbone wins, failed ones are kept with their error."""
    rows: dict[str, dict[str, Any]] = {}
    for line in lines:
        line = line.strip()
        if line.startswith("{") and '"backbone"' in line:
            r = json.loads(line)
            if "error" not in r or r["backbone"] not in rows:
                rows[r["backbone"]] = r
    return list(rows.values())


def run(ctx: Context) -> dict[str, Any]:
    import torch

    if ctx.device != "cuda" or not torch.cuda.is_available():
        raise SkipSection("needs a CUDA device: run `python benchmarks/run_all.py --only speed_gpu --device cuda` "
                          "on a GPU machine")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bb.json"
        p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_backbones.py"), "--backbones", BACKBONES,
                            "--epochs", "1" if ctx.quick else "2", "--device", "cuda", "--threads", "4",
                            "--json", str(out)], capture_output=True, text=True, cwd=ROOT)
        rows = parse_lines(p.stdout.splitlines())
    return {"rows": rows, "gpu": torch.cuda.get_device_name(0), "source": "run"}


def render(res: dict[str, Any]) -> str:
    done = [r for r in res["rows"] if "error" not in r]
    missing = [b for b in BACKBONES.split(",") if b not in {r["backbone"] for r in done}]
    table = md_table(["backbone", "build s", "train s/epoch", "valid s/pass", "peak GPU MiB", "peak RSS MiB"],
                     [[r["backbone"], f"{r['build_s']:.2f}", f"{r['train_s_per_epoch']:.2f}",
                       f"{r['valid_s_per_pass']:.2f}", f"{r.get('peak_cuda_mib', 0):,}", f"{r['peak_rss_mib']:,}"]
                      for r in done])
    parts = [f"**GPU: {res['gpu']}** (the lent device machine; everything else on this page is CPU unless it says "
             f"otherwise). Same benchmark as part (c) of the speed section: Amazon Baby interactions, random "
             f"4096-d / 384-d features, MMRec training protocol, {done[0]['epochs'] if done else '?'} epoch(s) "
             "plus one validation pass per backbone, each in its own process. Validation = embeddings on the GPU, "
             "then the FAISS full-ranking evaluation on the CPU.", "", table, ""]
    if missing:
        parts += [f"Not measured in this run (the device time ran out first): {', '.join(missing)}.", ""]
    if res.get("source") == "import":
        parts += [f"Imported from the benchmark's own JSON output on the GPU machine ({', '.join(res['logs'])}).", ""]
    return "\n".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description="import bench_backbones --device cuda output as this section's result")
    ap.add_argument("--from-log", action="append", required=True, type=Path)
    ap.add_argument("--gpu", required=True)
    ap.add_argument("--torch", required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("--commit", default="unknown", help="the commit(s) the GPU machine ran")
    a = ap.parse_args()
    lines = [ln for f in a.from_log for ln in f.read_text().splitlines()]
    res = {"rows": parse_lines(lines), "gpu": a.gpu, "source": "import", "logs": [f.name for f in a.from_log]}
    meta = {"date": a.date, "mode": "quick", "device": "cuda", "gpu": a.gpu, "cpu": "16-core host of the GPU",
            "cores": 16, "ram_gib": None, "python": "3.12", "torch": a.torch, "faiss": None, "mrdib": "0.1.0",
            "commit": a.commit, "seeds": [999], "jobs": 1, "threads": 4, "wall_s": 0.0}
    out = ROOT / "docs" / "results" / "speed_gpu.json"
    out.write_text(json.dumps({"result": res, "meta": meta}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
