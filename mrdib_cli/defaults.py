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
#: training options added after run folders and study caches were already recording the training options,
#: with their defaults: left out of an identity while at these values, so that what was recorded before them
#: (a run to resume, a cached study step, seeds grouped by ``mrdib compare``) still matches
LATER_TRAIN_DEFAULTS = {"minibatch": "full", "fanout": (10,), "node_budget": 0}


def settled_train(train: dict, runtime: tuple[str, ...] = ()) -> dict:
    """The training options that make a result what it is: ``train`` without the ``runtime`` keys and
    without the later options at their defaults."""
    def later_default(k: str, v: object) -> bool:
        d = LATER_TRAIN_DEFAULTS.get(k, object())
        return v == d or (isinstance(d, tuple) and isinstance(v, list) and tuple(v) == d)

    return {k: v for k, v in train.items() if k not in runtime and not later_default(k, v)}
