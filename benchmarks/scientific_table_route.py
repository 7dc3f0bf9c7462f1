"""Scientific two ways: the RecBole importer vs. the "your own data" route, same seed, same protocol.

Re-expresses ../shared/data/amazon2018-scientific-missrec (or $MRDIB_SHARED_DATA) as the files a user with
their own data would have, written under --out (default: a fresh folder in /tmp, never in the repository):

    interactions.csv   user,item,timestamp,split  (original reviewer ids and ASINs; the published
                       leave-one-out split as a column; timestamp = position in the user's sequence)
    image.npy text.npy the two 512-d CLIP matrices, rows in the release's item order
    item_ids.txt       the ASIN of each matrix row
    items.jsonl        {"item": ASIN, "title": text} per item

then runs, with --threads 1 and the same --seed on both routes,

    A: import recbole                                  -> extract-features --modality text -> train -> eval
    B: import table --split split -> features import x2 -> items attach -> extract-features --modality text
       -> train -> eval

and prints both test Recall@20 and their difference. Both routes train on the imported CLIP image table
and the MiniLM text table made by extract-features (newest text table), so they see the same inputs.

    python benchmarks/scientific_table_route.py [--out DIR] [--seed 1] [--epochs N] [--shuffle SEED] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MRDIB_SHARED_DATA", ROOT.parent / "shared" / "data"))
SRC = SHARED / "amazon2018-scientific-missrec"


def _index(path: Path) -> list[str]:
    """A RecBole ``token<TAB>index`` map as a list (position = index)."""
    pairs = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = [""] * len(pairs)
    for tok, idx in pairs:
        out[int(idx)] = tok
    return out


def write_user_files(out: Path, shuffle: int | None = None) -> dict[str, Path]:
    """The CSV, the two .npy matrices, the row ids and the item texts, from the RecBole release.

    ``shuffle`` (a seed) writes the CSV rows in random order: users and items are then numbered differently
    from the RecBole route, so the features only land on the right items through the ids file.
    """
    out.mkdir(parents=True, exist_ok=True)
    items, users = _index(SRC / "Scientific.item2index"), _index(SRC / "Scientific.user2index")
    lines = ["user,item,timestamp,split"]
    test = (SRC / "Scientific.test.inter").read_text(encoding="utf-8").splitlines()[1:]
    for row in test:
        u, hist, target = row.split("\t")
        seq = [int(t) for t in hist.split()] + [int(target)]
        for pos, i in enumerate(seq):
            split = "test" if pos == len(seq) - 1 else "valid" if pos == len(seq) - 2 else "train"
            lines.append(f"{users[int(u)]},{items[i]},{pos},{split}")
    if shuffle is not None:
        body = lines[1:]
        lines = lines[:1] + [body[k] for k in np.random.default_rng(shuffle).permutation(len(body))]
    (out / "interactions.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for name, fname in (("text", "Scientific.feat1CLS"), ("image", "Scientific.feat3CLS")):
        np.save(out / f"{name}.npy", np.fromfile(SRC / fname, dtype=np.float32).reshape(-1, 512))
    (out / "item_ids.txt").write_text("\n".join(items) + "\n", encoding="utf-8")
    with open(out / "items.jsonl", "w", encoding="utf-8") as fh:
        for row in (SRC / "Scientific.text").read_text(encoding="utf-8").splitlines()[1:]:
            asin, text = row.split("\t", 1)
            fh.write(json.dumps({"item": asin, "title": text.strip()}) + "\n")
    return {p.name: p for p in out.iterdir()}


def mrdib(workdir: Path, *args: str) -> str:
    env = {**os.environ, "MRDIB_HOME": str(workdir), "MRDIB_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "mrdib_cli", "--quiet", *args], capture_output=True, text=True,
                       env=env, cwd=str(ROOT))
    if p.returncode != 0:
        raise SystemExit(f"mrdib {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()[-400:]}")
    return p.stdout


def train_eval(workdir: Path, run: str, seed: int, epochs: int | None) -> dict[str, float]:
    extra = ["--epochs", str(epochs)] if epochs else []
    mrdib(workdir, "extract-features", "--modality", "text", "--device", "cpu")
    t0 = time.perf_counter()
    mrdib(workdir, "train", "--backbone", "lgmrec", "--seed", str(seed), "--threads", "1", "--device", "cpu",
          "--run-name", run, *extra)
    train_s = time.perf_counter() - t0
    res = workdir / f"{run}-eval.json"
    mrdib(workdir, "eval", "--run", run, "--k", "20", "--json", str(res))
    return {"test_recall@20": json.loads(res.read_text())["metrics"]["recall@20"], "train_s": round(train_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="where the generated files and workdirs go (/tmp)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=None, help="cap training (default: early stopping)")
    ap.add_argument("--shuffle", type=int, default=None, metavar="SEED",
                    help="write the CSV rows in random order (tests the id alignment; numbering then differs)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not SRC.is_dir():
        raise SystemExit(f"{SRC} not found (set MRDIB_SHARED_DATA)")
    out = a.out or Path(tempfile.mkdtemp(prefix="mrdib-sci-route-"))
    files = write_user_files(out / "files", a.shuffle)
    wa, wb = out / "wd-recbole", out / "wd-table"
    mrdib(wa, "import", "recbole", str(SRC), "--name", "sci")
    a_res = train_eval(wa, "a", a.seed, a.epochs)
    mrdib(wb, "import", "table", str(files["interactions.csv"]), "--name", "sci", "--user", "user", "--item", "item",
          "--time", "timestamp", "--split", "split")
    for m in ("image", "text"):
        mrdib(wb, "features", "import", str(files[f"{m}.npy"]), "--modality", m, "--ids", str(files["item_ids.txt"]),
              "--model", f"clip-{m}-missrec")
    mrdib(wb, "items", "attach", str(files["items.jsonl"]))
    b_res = train_eval(wb, "b", a.seed, a.epochs)
    report = {"seed": a.seed, "epochs_cap": a.epochs, "shuffled_rows": a.shuffle, "recbole_route": a_res,
              "table_route": b_res,
              "abs_diff_recall@20": round(abs(a_res["test_recall@20"] - b_res["test_recall@20"]), 4),
              "files": str(out)}
    print(json.dumps(report, indent=2) if a.json else
          f"recbole route R@20 {a_res['test_recall@20']:.4f} ({a_res['train_s']} s), table route R@20 "
          f"{b_res['test_recall@20']:.4f} ({b_res['train_s']} s), |diff| {report['abs_diff_recall@20']:.4f}")


if __name__ == "__main__":
    main()
