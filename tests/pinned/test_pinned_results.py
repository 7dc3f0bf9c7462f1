"""Refactors must not move results: every backbone's one-epoch figures equal the pinned ones exactly."""

from __future__ import annotations

import json

import pytest

from tests.pinned.pin_results import CASES, PINNED, collect, machine_key, sums_close


@pytest.fixture(scope="module")
def got(tmp_path_factory):
    return collect(tmp_path_factory.mktemp("pin") / "wd")


def test_every_case_is_pinned():
    assert set(json.loads(PINNED.read_text())) == set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_epoch_is_bit_identical(got, case):
    want = json.loads(PINNED.read_text())[case]
    # exact equality on purpose: floats round-trip through JSON unchanged
    assert got[case]["loss"] == want["loss"]
    assert got[case]["valid"] == want["valid"]
    assert sums_close(got[case]["embedding_sums"], want["embedding_sums"])
    digests = want["embeddings"]
    key = machine_key()
    if key in digests:  # this kind of machine is pinned: its bits exactly
        assert got[case]["embeddings"] == digests[key], key
    # else: a CPU that rounds in its own way and is not pinned yet: the sums above (pin_results --add-machine)
