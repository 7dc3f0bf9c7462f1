"""Your own data section: the Scientific "own files" route against `import recbole`, and Amazon 2023 prepare.

Both parts run an existing benchmark script as a subprocess with ``--json``, so the figures are exactly the
scripts' figures:

(a) ``scientific_table_route.py --shuffle 5``: Scientific re-expressed as a CSV (rows in random order, so the
    numbering differs from RecBole's), two ``.npy`` matrices with an ids file and JSON Lines texts, through
    import table / features import / items attach / extract-features --modality text, trained (LGMRec, 1
    thread, seed 1) and evaluated like the ``import recbole`` route; quick mode caps training at 20 epochs;
(b) ``bench_prepare_2023.py``: ``prepare amazon2023:Baby_Products`` on a generated Baby-sized category.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.sections._common import SkipSection, md_table

TITLE = "Your own data: import routes and Amazon 2023"
ORDER = 60

ROOT = Path(__file__).resolve().parents[2]
QUICK_EPOCHS = 20
SHUFFLE_SEED = 5


def _script(ctx, name: str, args: list[str]) -> dict:
    import os

    env = {**os.environ, "MRDIB_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if ctx.shared is not None:
        env["MRDIB_SHARED_DATA"] = str(ctx.shared)
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args, "--json"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    if p.returncode:
        tail = (p.stderr.strip().splitlines() or p.stdout.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"{name} failed (exit {p.returncode}): {tail}")
    return json.loads(p.stdout[p.stdout.index("{"):])


def run(ctx) -> dict:
    if ctx.shared is None or not (Path(ctx.shared) / "amazon2018-scientific-missrec").is_dir():
        raise SkipSection("Amazon Scientific not found (../shared/data/amazon2018-scientific-missrec or "
                          "$MRDIB_SHARED_DATA)")
    work = Path(ctx.workdir) / "own-data"
    cap = ["--epochs", str(QUICK_EPOCHS)] if ctx.quick else []
    ctx.log("own data: Scientific, recbole route vs table route ...")
    sci = _script(ctx, "scientific_table_route.py", ["--out", str(work / "sci"), "--seed", "1",
                                                     "--shuffle", str(SHUFFLE_SEED), *cap])
    ctx.log("own data: prepare amazon2023 (Baby-sized, generated) ...")
    a23 = _script(ctx, "bench_prepare_2023.py", ["--out", str(work / "raw2023")])
    return {"scientific": sci, "amazon2023": a23}


def render(res: dict) -> str:
    s, a = res["scientific"], res["amazon2023"]
    cap = f" (training capped at {s['epochs_cap']} epochs)" if s.get("epochs_cap") else ""
    rows = [["`import recbole`", f"{s['recbole_route']['test_recall@20']:.4f}", s["recbole_route"]["train_s"]],
            ["`import table` + `features import` + `items attach`", f"{s['table_route']['test_recall@20']:.4f}",
             s["table_route"]["train_s"]]]
    return "\n".join([
        f"**(a) Scientific two ways**{cap}: the RecBole files imported directly, and re-expressed as a user's own "
        f"files (CSV rows shuffled with seed {s['shuffled_rows']}, so users and items are numbered differently; "
        "CLIP matrices as `.npy` + ids file; texts as JSON Lines). Both routes: MiniLM text features from "
        f"extract-features, the imported CLIP image table, LGMRec, seed {s['seed']}, 1 thread, test at the "
        "best-validation epoch.", "",
        md_table(["route", "test R@20", "train s"], rows), "",
        f"Absolute difference in test R@20: {s['abs_diff_recall@20']:.4f} (acceptance: within 0.01).", "",
        f"**(b) `mrdib prepare amazon2023:Baby_Products`** on a generated category of Baby's size "
        f"({a['n_raw_reviews']:,} reviews with every 2023 field, metadata for 4x as many products): cold build "
        f"{a['wall_s']:.2f} s wall, {a['peak_rss_mib']:,} MiB peak RSS; {a['n_users']:,} users, "
        f"{a['n_items']:,} items, {a['n_interactions']:,} interactions after the 5-core."])
