"""``mrdib resplit``: the same interactions (and feature tables) under another split.

Researchers need several splits of one dataset to measure split noise. The new dataset keeps users,
items and feature tables; it drops repeated (user, item) rows first (keeping the earliest), because a
pair that lands in both train and test would leak the answer. Graphs are not copied: they depend on the
train split and are rebuilt on demand.
"""

from __future__ import annotations

from typing import Any


from mrdib_cli.data.dataset_io import (CORE_FILES, discard_if_unpublished, interactions_frame, make_card,
                                       publish_dataset)
from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.data.split import LABELS, SCHEMES, assign_split
from mrdib_cli.errors import UsageError
from mrdib_cli.data.feature_store import list_tables
from mrdib_cli.workspace import StepResult, Workspace, cached_step, file_digest, read_json

CARRIED = ("image_dir", "timestamp_kind", "timestamp_unit", "items_attached", "demo")


def resplit(ws: Workspace, source: str | None, new_name: str, scheme: str, seed: int, *,
            force: bool = False) -> tuple[StepResult, dict[str, Any]]:
    """Write dataset ``new_name`` = ``source``'s interactions split by ``scheme`` with ``seed``."""
    if scheme not in SCHEMES:
        raise UsageError(f"unknown scheme '{scheme}' (choose from {', '.join(SCHEMES)})")
    src = DatasetHandle.open(ws, source)
    if new_name == src.name:
        raise UsageError(f"--name must differ from the source dataset '{src.name}' (a resplit never "
                         "overwrites its source)")
    ds_dir = ws.dataset_dir(new_name)
    tables = list_tables(src.dir)
    inputs = {"interactions": src.digest, **{f"feature:{p.name}": file_digest(p) for p in tables}}
    params = {"source": src.name, "scheme": scheme, "seed": seed}

    def run() -> dict[str, Any]:
        df = src.interactions.with_row_index("_row")
        sort_cols = ["user_idx", "timestamp", "_row"] if df["timestamp"].null_count() == 0 else ["user_idx", "_row"]
        df = df.sort(sort_cols).unique(["user_idx", "item_idx"], keep="first", maintain_order=True).sort("_row")
        n_dropped = src.interactions.height - df.height
        users = df["user_idx"].to_numpy()
        ts = df["timestamp"].to_numpy() if df["timestamp"].null_count() == 0 else None
        code = assign_split(users, ts, scheme, seed)
        inter = interactions_frame(users, df["item_idx"].to_numpy(), LABELS[code], df["rating"].to_numpy(),
                                   df["timestamp"].to_numpy() if ts is not None else None)
        extra = {k: src.card[k] for k in CARRIED if k in src.card}
        card = make_card(new_name, inter, src.n_users, src.n_items, split={"scheme": scheme, "seed": seed},
                         k_core=src.card.get("k_core"),
                         source={"kind": "resplit", "from": src.name, "from_digest": src.digest,
                                 "from_source": src.card.get("source")},
                         n_duplicate_pairs_dropped=n_dropped, features=src.card.get("features", []), **extra)
        publish_dataset(ds_dir, inter, src.items, src.users, card, replace_folder=True, copy_tables=tables)
        return {"n_duplicate_pairs_dropped": n_dropped}

    with discard_if_unpublished(ds_dir):
        res = cached_step("resplit", ds_dir, inputs, params, run, outputs=list(CORE_FILES), force=force,
                          lock_path=ws.lock("dataset", new_name))
    ws.set_active_dataset(new_name, by=f"mrdib resplit {src.name}")
    return res, read_json(ds_dir / "dataset.json")
