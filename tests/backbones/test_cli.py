"""``mrdib backbones``."""

import json


def test_backbones_lists_needs_and_defaults(cli):
    rc, out, _ = cli("backbones", "--json")
    assert rc == 0
    rows = {d["name"]: d for d in json.loads(out)}
    for name in ("freedom", "mgcn", "soil", "bm3", "lattice", "mmgcn", "dualgnn"):
        assert name in rows
    assert rows["mgcn"]["modalities"]["required"] == ["image", "text"]
    assert rows["bm3"]["training_mode"] == "pairs"
    assert rows["mgcn"]["lr_schedule"] == [0.96, 50]
    assert rows["freedom"]["defaults"]["knn_k"] == 10 and rows["freedom"]["defaults"]["mm_image_weight"] == 0.1
    rc, out, _ = cli("backbones", "soil")
    assert rc == 0 and "knn_a" in out and "clothing" in out
    rc, _, err = cli("backbones", "nope")
    assert rc == 2 and "unknown backbone" in err and "Traceback" not in err
