"""The demo's planted ground truth as scorers (mrdib_cli/data/demo_truth.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mrdib_cli.data.demo_truth import PREFERENCE_ATTRS, PlantedTruth
from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.data.prepare import PrepareOptions, prepare
from mrdib_cli.errors import DataError, UsageError
from mrdib_cli.evaluation.engine import evaluate_split
from mrdib_cli.workspace import Workspace


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DatasetHandle:
    ws = Workspace(tmp_path_factory.mktemp("demo-truth"))
    prepare(ws, "demo", PrepareOptions(), demo={"n_users": 300, "n_items": 150, "n_interactions": 4000})
    return DatasetHandle.open(ws, "demo")


def _match_rate(truth: PlantedTruth, users: np.ndarray, items: np.ndarray, attr: str) -> float:
    return float((truth.items[attr][items] == truth.prefs[attr][users]).mean())


def test_the_truth_explains_who_bought_what(demo: DatasetHandle) -> None:
    """Mapped to the dataset's indices, users' train items match their planted preferences far above chance;
    with the users shuffled (a wrong mapping) the rate falls to chance."""
    truth = PlantedTruth.of(demo)
    users, items = demo.pairs("train")
    shuffled = np.random.default_rng(0).permutation(demo.n_users)[users]
    for attr, n_values in PREFERENCE_ATTRS.items():
        chance = 1.0 / n_values
        assert _match_rate(truth, users, items, attr) > chance + 0.2, attr
        assert abs(_match_rate(truth, shuffled, items, attr) - chance) < 0.06, attr


def test_oracle_is_the_generators_score(demo: DatasetHandle) -> None:
    truth = PlantedTruth.of(demo)
    u, v = truth.oracle()
    want = 0.4 * truth.items["popularity"][None, :] + sum(
        truth.weight * (truth.items[a][None, :] == truth.prefs[a][:, None]) for a in PREFERENCE_ATTRS)
    np.testing.assert_allclose(u @ v.T, want, rtol=1e-5, atol=1e-5)
    u2, v2 = truth.oracle(("colour",), popularity=False)
    np.testing.assert_array_equal(u2 @ v2.T, truth.weight * (truth.items["colour"][None, :]
                                                             == truth.prefs["colour"][:, None]))


def test_more_planted_knowledge_ranks_better(demo: DatasetHandle) -> None:
    """The full oracle beats popularity alone and the oracle without fit; a profile of the true attributes
    (preferences estimated from train) beats popularity too."""
    truth = PlantedTruth.of(demo)

    def r20(uv: tuple[np.ndarray, np.ndarray]) -> float:
        return evaluate_split(demo, *uv, split="test", ks=(20,)).metrics["recall@20"]

    full, no_fit, pop = r20(truth.oracle()), r20(truth.oracle(("colour", "shape", "material"))), r20(truth.oracle(()))
    prof = r20(truth.profile(demo.csr("train"), ("colour", "shape", "material", "fit")))
    assert full > no_fit > pop
    assert prof > pop + 0.1


def test_profile_users_are_the_mean_of_their_train_items(demo: DatasetHandle) -> None:
    truth = PlantedTruth.of(demo)
    train = demo.csr("train")
    u, v = truth.profile(train, ("shape", "size"))
    assert v.shape == (demo.n_items, 4 + 2)
    np.testing.assert_allclose(v.mean(axis=0), 0.0, atol=1e-6)
    row = train[7].indices
    np.testing.assert_allclose(u[7], v[row].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_attribute_matrix_is_the_one_hot_blocks_side_by_side(demo: DatasetHandle) -> None:
    truth = PlantedTruth.of(demo)
    m = truth.attribute_matrix(("fit", "noun"))  # in the order asked
    assert m.shape == (len(truth.items["fit"]), 2 + 10) and m.dtype == np.float32
    assert np.array_equal(m[:, :2].argmax(1), truth.items["fit"])
    assert np.array_equal(m[:, 2:].argmax(1), truth.items["noun"])
    assert np.array_equal(m.sum(1), np.full(m.shape[0], 2.0))


def test_refuses_what_it_cannot_vouch_for(demo: DatasetHandle, tmp_path: Path) -> None:
    truth = PlantedTruth.of(demo)
    with pytest.raises(UsageError, match="no user preference on texture"):
        truth.oracle(("texture",))
    with pytest.raises(UsageError, match="no planted attribute noun"):
        truth.profile(demo.csr("train"), ("noun",))
    with pytest.raises(UsageError, match="no planted attribute weight"):
        truth.attribute_matrix(("colour", "weight"))

    other = DatasetHandle(demo.dir)
    other.card = {**other.card, "demo": {**other.card["demo"], "seed": 1}}  # not what generated the items
    with pytest.raises(DataError, match="generator changed since this dataset was prepared"):
        PlantedTruth.of(other)
    other.card = {**other.card, "demo": {**other.card["demo"], "seed": 0, "sparkle": 1}}
    with pytest.raises(DataError, match="is not this version's"):
        PlantedTruth.of(other)
    del other.card["demo"]
    with pytest.raises(UsageError, match="is not a demo dataset"):
        PlantedTruth.of(other)
