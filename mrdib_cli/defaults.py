"""Defaults shared by several commands, defined once (MMRec's values, so results compare with its papers).

Every option that takes one of these as its default imports it from here; the bottom layer, imports nothing.
"""

from __future__ import annotations

#: random seed of MMRec's ``overall.yaml``
SEED = 999
#: cut-offs of the top-K metrics (MMRec's ``topk``)
KS = (10, 20)
#: users ranked per evaluation block: bounds the [block, n_items] score matrix
EVAL_BATCH_USERS = 4096
