"""``mrdib backbones`` (in-process through the CLI entry point, to keep the suite fast)."""

import json

import pytest

from mrdib_cli.cli.app import main


def run(capsys, *args):
    code = 0
    try:
        main(list(args))
    except SystemExit as e:
        code = e.code or 0
    got = capsys.readouterr()
    return code, got.out, got.err


def test_backbones_lists_needs_and_defaults(capsys, workdir):
    rc, out, _ = run(capsys, "backbones", "--json")
    assert rc == 0
    rows = {d["name"]: d for d in json.loads(out)}
    for name in ("freedom", "mgcn", "soil", "bm3", "lattice", "mmgcn", "dualgnn"):
        assert name in rows
    assert rows["mgcn"]["modalities"]["required"] == ["image", "text"]
    assert rows["bm3"]["training_mode"] == "pairs"
    assert rows["mgcn"]["lr_schedule"] == [0.96, 50]
    assert rows["freedom"]["defaults"]["knn_k"] == 10 and rows["freedom"]["defaults"]["mm_image_weight"] == 0.1
    rc, out, _ = run(capsys, "backbones", "soil")
    assert rc == 0 and "knn_a" in out and "clothing" in out


def test_unknown_backbone_is_a_one_line_error(capsys, workdir):
    rc, _, err = run(capsys, "backbones", "nope")
    assert rc == 2 and "unknown backbone" in err and "Traceback" not in err


def test_patience_defaults_to_the_backbones_unless_given(cli, workdir):
    """SOIL's released code stops after 10 bad epochs: an unset patience follows the backbone; any
    explicit value (option or --set) wins; backbones without default_patience keep MMRec's 20."""
    from tests.synth_data import make_dataset

    make_dataset(workdir, n_users=40, n_items=30)

    def patience(*args: str) -> int:
        rc, out, err = cli("train", *args, "--print-config")
        assert rc == 0, err
        return json.loads(out)["train"]["patience"]

    assert patience("-b", "soil") == 10
    assert patience("-b", "soil", "--patience", "20") == 20
    assert patience("-b", "soil", "--set", "train.patience=3") == 3
    assert patience("-b", "lightgcn") == 20
