"""No code runs from data files: pickles are refused, metadata is parsed with literal_eval only."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.evaluation.helpers import write_dataset, write_run
from tests.faults.helpers import ROOT, mrdib, ok, one_line_error


class Evil:
    """Unpickling this runs ``touch <path>``: if the marker file appears, code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.path}",))


def test_malicious_metadata_line_is_malformed_not_executed(workdir: Path, reference_demo, tmp_path: Path) -> None:
    """A 2014-style metadata line calling os.system is counted malformed; prepare still works."""
    marker = tmp_path / "PWNED"
    raw_src = next((reference_demo[0] / "raw" / "demo").glob("*/"))
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(raw_src / "reviews_Demo_5.json.gz", raw / "reviews_Baby_5.json.gz")
    lines = gzip.decompress((raw_src / "meta_Demo.json.gz").read_bytes()).decode().splitlines()
    victim = re.search(r"'asin': '([^']+)'", lines[3]).group(1)
    lines[3] = f"{{'asin': '{victim}', 'title': __import__('os').system('touch {marker}')}}"
    lines.append(f"__import__('os').system('touch {marker}')")
    (raw / "meta_Baby.json.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    ok(mrdib(workdir, "prepare", "baby", "--raw-dir", str(raw), "--name", "evil", "--max-malformed", "0.1"))
    card = json.loads((workdir / "datasets" / "evil" / "dataset.json").read_text())
    assert card["n_malformed_meta"] == 2
    assert not marker.exists()


def test_pickled_feature_npy_is_refused(workdir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    d = tmp_path / "toy"
    d.mkdir()
    rows = ["userID\titemID\trating\ttimestamp\tx_label"]
    rows += [f"{u}\t{i}\t5\t{i}\t{0 if i < 3 else (1 if i == 3 else 2)}" for u in range(6) for i in range(5)]
    (d / "toy.inter").write_text("\n".join(rows) + "\n")
    np.save(d / "image_feat.npy", np.array([Evil(marker)] * 5, dtype=object), allow_pickle=True)
    one_line_error(mrdib(workdir, "import", "mmrec", str(d), "--name", "toy"), "pickle")
    assert not marker.exists() and not (workdir / "datasets" / "toy").exists()


def test_pickled_embeddings_are_refused(workdir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    write_dataset(workdir, "tiny", 20, 30)
    rd = write_run(workdir, "r1", "tiny", np.zeros((20, 4)), np.zeros((30, 4)))
    np.savez(rd / "embeddings.npz", user=np.array([Evil(marker)], dtype=object),
             item=np.array([Evil(marker)], dtype=object))
    for cmd in (["eval", "--run", "r1"], ["recommend", "0", "--run", "r1", "--k", "5"]):
        one_line_error(mrdib(workdir, *cmd), "embeddings.npz")
    assert not marker.exists()


# Calls that can run code hidden in a file. Each pattern is allowed nowhere in mrdib_cli.
UNSAFE = {
    r"\bpickle\.loads?\(": "pickle.load",
    r"(?<![\w.])eval\(": "builtin eval",
    r"(?<![\w.])exec\(": "builtin exec",
    r"allow_pickle\s*=\s*True": "np.load(allow_pickle=True)",
    r"\byaml\.load\(": "yaml.load (use yaml.safe_load)",
    r"\bmarshal\.loads?\(": "marshal.load",
    r"\bdill\b|\bcloudpickle\b|\bjoblib\.load\b": "pickle-based loaders",
    r"weights_only\s*=\s*False": "torch.load(weights_only=False)",
}


@pytest.mark.static_check
@pytest.mark.parametrize("pattern", list(UNSAFE))
def test_no_unsafe_deserialisation_in_source(pattern: str) -> None:
    hits = []
    for f in sorted((ROOT / "mrdib_cli").rglob("*.py")):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(pattern, code) and not code.lstrip().startswith(('"', "'")):
                hits.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, f"{UNSAFE[pattern]} found:\n" + "\n".join(hits)


@pytest.mark.static_check
def test_every_torch_load_is_weights_only() -> None:
    """torch.load without weights_only=True would unpickle arbitrary objects from a checkpoint."""
    bad = []
    for f in sorted((ROOT / "mrdib_cli").rglob("*.py")):
        text = f.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start(): text.find(")", m.start()) + 1]
            if "weights_only=True" not in call:
                bad.append(f"{f.relative_to(ROOT)}: {call}")
    assert not bad, bad
