"""Item text as MMRec builds it, and the sentence-transformer encoder.

MMRec (``preprocessing/3feat-encoder.ipynb``) joins title, brand, every entry of the *first* category path
and the description, with missing fields as blanks and newlines replaced by spaces. Our default template
``{title} {brand} {categories} {description}`` gives the same word sequence; we also collapse runs of
whitespace, which the BERT tokenizer ignores anyway (so the tokens, hence the vectors, are unchanged), and
which makes "no text at all" detectable as the empty string.
"""

from __future__ import annotations

import contextlib
import json
import re
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch

from mrdib_cli.errors import UsageError
from mrdib_cli.features.image import autocast
from mrdib_cli.features.resolve import TextWeights

DEFAULT_TEMPLATE = "{title} {brand} {categories} {description}"
_WS = re.compile(r"\s+")


def first_category_path(value: Any) -> str:
    """The first category path as space-separated names, whatever shape ``categories`` is stored in.

    Amazon 2014 meta stores a list of paths (list of lists); importers may store that as JSON text, a flat
    list, or an already-joined string. All become ``"Baby Feeding Bottles"``.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        s = value.strip()
        if s[:1] == "[":
            try:
                value = json.loads(s)
            except ValueError:
                return s
        else:
            return s
    if isinstance(value, (list, tuple, np.ndarray, pl.Series)):
        seq = list(value)
        if not seq:
            return ""
        first = seq[0]
        if isinstance(first, (list, tuple, np.ndarray, pl.Series)):
            return " ".join(str(c) for c in list(first) if c is not None)
        return " ".join(str(c) for c in seq if c is not None)
    return str(value)


def template_fields(template: str) -> list[str]:
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise UsageError(f"invalid --text-template '{template}': {e}") from None


def build_texts(items: pl.DataFrame, template: str = DEFAULT_TEMPLATE, n_items: int | None = None) -> list[str]:
    """One sentence per item (in item_idx order); empty string when the item has no text at all."""
    fields = template_fields(template)
    allowed = set(items.columns) | {"categories"}
    bad = [f for f in fields if f not in allowed or not f.isidentifier()]
    if bad:
        raise UsageError(f"--text-template uses unknown field(s) {bad}; items.parquet has {sorted(items.columns)}")
    n = n_items if n_items is not None else items.height
    cols: dict[str, list[Any]] = {}
    order = items["item_idx"].to_numpy() if "item_idx" in items.columns else np.arange(items.height)
    for f in set(fields):
        vals = items[f].to_list() if f in items.columns else [None] * items.height
        col: list[Any] = [None] * n
        for idx, v in zip(order, vals):
            if 0 <= idx < n:
                col[int(idx)] = v
        cols[f] = col
    out = []
    for i in range(n):
        values = {}
        for f in fields:
            v = cols[f][i]
            if f == "categories":
                v = first_category_path(v)
            values[f] = "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
        out.append(_WS.sub(" ", template.format_map(values)).strip())
    return out


@dataclass
class TextEncoder:
    """A loaded SentenceTransformer; ``forward`` runs tokenised batches (tokenisation timed separately)."""

    model: Any
    dim: int
    device: torch.device
    max_seq_length: int

    @classmethod
    def build(cls, weights: TextWeights, device: torch.device) -> TextEncoder:
        import os

        from sentence_transformers import SentenceTransformer

        # The path is already resolved locally: forbid any hub call while loading.
        old = os.environ.get("HF_HUB_OFFLINE")
        os.environ["HF_HUB_OFFLINE"] = "1"
        with contextlib.suppress(Exception):  # their tqdm bar would fight our Rich progress on stderr
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        try:
            model = SentenceTransformer(weights.path, device=str(device))
        except Exception as e:  # noqa: BLE001
            raise UsageError(f"cannot load text model {weights.model} from {weights.path}: "
                             f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
        finally:
            if old is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = old
        model.eval()
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = get_dim()
        return cls(model, int(dim), device, int(model.max_seq_length or 0))

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        prep = getattr(self.model, "preprocess", None)  # sentence-transformers >= 6 renamed tokenize
        return prep(list(texts)) if prep is not None else self.model.tokenize(list(texts))

    @torch.inference_mode()
    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        feats = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        with autocast(self.device):
            out = self.model(feats)["sentence_embedding"]
        return out.float()


def encode_text_shard(enc: TextEncoder, texts: Sequence[str], batch_size: int, on_items: Any = None,
                      stats: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode one shard: non-empty texts sorted by length (less padding), results put back in order."""
    n = len(texts)
    vectors = np.zeros((n, enc.dim), dtype=np.float32)
    status = np.where(np.array([bool(t) for t in texts], dtype=bool), "ok", "empty_text").astype("<U10")
    reasons = np.where(status == "ok", "", "no title/brand/categories/description").astype("<U200")
    ok = np.nonzero(status == "ok")[0]
    order = ok[np.argsort([-len(texts[i]) for i in ok], kind="stable")]
    skipped = n - len(ok)
    if on_items is not None and skipped:
        on_items(skipped)
    for s in range(0, len(order), batch_size):
        rows = order[s:s + batch_size]
        feats = enc.tokenize([texts[i] for i in rows])
        t = time.perf_counter()
        vectors[rows] = enc.forward(feats).cpu().numpy()
        if stats is not None:
            stats["forward_s"] = stats.get("forward_s", 0.0) + time.perf_counter() - t
        if on_items is not None:
            on_items(len(rows))
    return vectors, status, reasons
