"""The demo's planted ground truth as inner-product scorers: what any recommender could reach on it.

The demo generator (:mod:`mrdib_cli.data.demo`) scores every (user, item) pair with

    s(u, i) = weight * sum_a [attr_a(i) = pref_a(u)] + 0.4 * popularity(i) + Gumbel noise,

a over colour, shape, material and fit, and lets each user pick their top items. Without the Gumbel noise this
is an inner product of one-hot encodings, so the evaluation engine can rank with it like with any model's
embeddings. Two families of scorers follow, used by the demo section of ``benchmarks/run_all.py`` to say how
much room the planted structure leaves above a backbone (docs/demo-dataset.md, "Ceilings"):

* :meth:`PlantedTruth.oracle`: the generator's own score (true preferences, true attributes), optionally
  without some attributes or without popularity: how much each planted attribute is worth;
* :meth:`PlantedTruth.profile`: true item attributes, but each user's preferences *estimated* from their train
  items (the mean of the items' centred one-hot attributes): a simple model with perfect features.

The truth is regenerated from the dataset card's generator configuration (deterministic, no file needed) and
checked against the item titles, which name each item's colour, material and size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from mrdib_cli.data.demo import (BRANDS, COLOURS, MATERIALS, NOUNS, SHAPES, SIZES, TEXTURES, DemoConfig,
                                 sample_interactions, sample_items)
from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.errors import DataError, UsageError

#: every planted item attribute: number of values, and where it shows (docs/demo-dataset.md); "noise": users
#: ignore it; "both (XOR)": fit = busy(texture) XOR large(size), so neither modality shows it alone
ITEM_ATTRS = {"colour": (len(COLOURS), "image+text"), "shape": (len(SHAPES), "image"),
              "texture": (len(TEXTURES), "image"), "material": (len(MATERIALS), "text"),
              "size": (len(SIZES), "text"), "fit": (2, "both (XOR)"),
              "noun": (len(NOUNS), "text, noise"), "brand": (len(BRANDS), "text, noise")}
#: attributes a user has a preference on (the generator's score), with their number of values
PREFERENCE_ATTRS = {a: ITEM_ATTRS[a][0] for a in ("colour", "shape", "material", "fit")}
#: attributes visible in one modality (image: colour, shape, texture; text: colour, material, size)
OBSERVABLE_ATTRS = {a: ITEM_ATTRS[a][0] for a in ("colour", "shape", "texture", "material", "size")}
POPULARITY_WEIGHT = 0.4  # as in sample_interactions


@dataclass
class PlantedTruth:
    """Planted attributes of the dataset's items and preferences of its users, in dataset index order."""

    items: dict[str, np.ndarray]  # attribute -> value index per item (plus "popularity", a float)
    prefs: dict[str, np.ndarray]  # attribute -> preferred value index per user
    weight: float  # the generator's log-odds per matching attribute

    @classmethod
    def of(cls, handle: DatasetHandle) -> PlantedTruth:
        """The truth of a prepared demo dataset (refused for any other dataset)."""
        cfg_dict = handle.card.get("demo")
        if not cfg_dict:
            raise UsageError(f"dataset '{handle.name}' is not a demo dataset: planted ground truth exists only for "
                             "`mrdib prepare demo`")
        try:
            cfg = DemoConfig(**cfg_dict)
        except TypeError:  # a card written by another version of the generator
            raise DataError(f"dataset '{handle.name}': the card's demo configuration {sorted(cfg_dict)} is not this "
                            "version's; run `mrdib prepare demo` again") from None
        rng = np.random.default_rng(cfg.seed)  # the generator's own stream, in its own order
        attrs = sample_items(cfg, rng)
        _, _, prefs = sample_interactions(cfg, attrs, rng)
        item_ids = _indices(handle.items["asin"].to_list(), "D", cfg.n_items, "item")
        user_ids = _indices(handle.users["reviewer_id"].to_list(), "DEMOU", cfg.n_users, "user")
        truth = cls({k: v[item_ids] for k, v in attrs.items()}, {k: v[user_ids] for k, v in prefs.items()},
                    cfg.weight)
        truth._check_titles(handle.items["title"].to_list())
        return truth

    def _check_titles(self, titles: list[str]) -> None:
        """Each title is '<Colour> <material> <noun>, <size>': a regenerated truth must agree with all of them."""
        colours = list(COLOURS)
        for i, title in enumerate(titles):
            words = title.replace(",", "").split()
            want = (colours[self.items["colour"][i]].capitalize(), MATERIALS[self.items["material"][i]],
                    SIZES[self.items["size"][i]])
            if (words[0], words[1], words[-1]) != want:
                raise DataError(f"demo item {i} ('{title}') does not match the regenerated ground truth {want}: "
                                "the generator changed since this dataset was prepared; run `mrdib prepare demo` "
                                "again")

    def oracle(self, attrs: tuple[str, ...] = tuple(PREFERENCE_ATTRS), popularity: bool = True
               ) -> tuple[np.ndarray, np.ndarray]:
        """(user, item) embeddings whose inner product is the generator's score without its Gumbel noise,
        restricted to ``attrs`` (a subset of :data:`PREFERENCE_ATTRS`) and with or without popularity."""
        unknown = sorted(set(attrs) - set(PREFERENCE_ATTRS))
        if unknown:
            raise UsageError(f"no user preference on {', '.join(unknown)} (choose from {', '.join(PREFERENCE_ATTRS)})")
        users = [self.weight * _one_hot(self.prefs[a], PREFERENCE_ATTRS[a]) for a in attrs]
        items = [self.attribute_matrix(attrs)]
        if popularity:
            users.append(np.full((len(self.prefs["colour"]), 1), POPULARITY_WEIGHT))
            items.append(self.items["popularity"][:, None])
        return _stack(users), _stack(items)

    def attribute_matrix(self, attrs: tuple[str, ...]) -> np.ndarray:
        """The items' one-hot ``attrs`` side by side (float32 [n_items, sum of value counts]): the true
        attributes as a feature table, and the item side of :meth:`oracle` and :meth:`profile`."""
        unknown = sorted(set(attrs) - set(ITEM_ATTRS))
        if unknown:
            raise UsageError(f"no planted attribute {', '.join(unknown)} (choose from {', '.join(ITEM_ATTRS)})")
        n = len(self.items["colour"])
        return _stack([np.zeros((n, 0), np.float32), *(_one_hot(self.items[a], ITEM_ATTRS[a][0]) for a in attrs)])

    def profile(self, train: sp.csr_matrix, attrs: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Perfect item attributes, estimated preferences: item = centred one-hot ``attrs`` (any of
        :data:`OBSERVABLE_ATTRS` or ``fit``), user = the mean of their ``train`` items' vectors.

        Centring makes a value count relative to its base rate (a user who bought three red items out of six
        prefers red; one red item in six is chance)."""
        allowed = (*OBSERVABLE_ATTRS, "fit")
        unknown = sorted(set(attrs) - set(allowed))
        if unknown:
            raise UsageError(f"no planted attribute {', '.join(unknown)} (choose from {', '.join(allowed)})")
        items = self.attribute_matrix(attrs)
        items -= items.mean(axis=0, keepdims=True)
        counts = np.asarray(train.sum(axis=1)).ravel()
        mean = sp.diags(1.0 / np.maximum(counts, 1)) @ train
        return np.asarray(mean @ items, dtype=np.float32), items


def _indices(ids: list[str], prefix: str, n: int, what: str) -> np.ndarray:
    """Generator indices from the demo's ids (items D000000042, users DEMOU0000042)."""
    try:
        out = np.array([int(s[len(prefix):]) for s in ids], dtype=np.int64)
    except ValueError:
        raise DataError(f"demo {what} ids do not have the generator's form '{prefix}<number>'") from None
    if len(out) and (out.min() < 0 or out.max() >= n or not all(s.startswith(prefix) for s in ids)):
        raise DataError(f"demo {what} ids do not match the card's generator configuration ({n:,} {what}s)")
    return out


def _one_hot(values: np.ndarray, n: int) -> np.ndarray:
    return np.eye(n, dtype=np.float32)[values]


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    return np.hstack(parts).astype(np.float32)
