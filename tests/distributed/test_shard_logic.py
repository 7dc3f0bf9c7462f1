"""In-process checks of the sharding arithmetic (no process group needed)."""

from __future__ import annotations

import numpy as np
import polars as pl

from mrdib_cli.training.distributed import slice_bounds, strip_option
from tests.synth_data import make_dataset


def test_slice_bounds_cover_each_batch_once():
    for n in (1, 2, 5, 2048, 2049):
        for w in (1, 2, 3, 8):
            parts = [slice_bounds(n, r, w) for r in range(w)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            sizes = [hi - lo for lo, hi in parts]
            assert max(sizes) - min(sizes) <= 1


def test_strip_option_removes_only_nproc():
    argv = ["--workdir", "w", "train", "--nproc", "2", "-b", "lightgcn", "--nproc=3", "--n-layers", "2"]
    assert strip_option(argv, "--nproc") == ["--workdir", "w", "train", "-b", "lightgcn", "--n-layers", "2"]


def test_three_shards_merge_to_the_single_process_result(tmp_path):
    from mrdib_cli.data.handle import DatasetHandle
    from mrdib_cli.evaluation.engine import evaluate_split
    from mrdib_cli.evaluation.sharded import evaluate_shard, merge, to_rows
    from mrdib_cli.workspace import Workspace

    make_dataset(tmp_path, n_users=70, n_items=40, features=False)
    h = DatasetHandle.open(Workspace(tmp_path), "tiny")
    rng = np.random.default_rng(0)
    u, i = rng.normal(size=(h.n_users, 8)), rng.normal(size=(h.n_items, 8))
    ref = evaluate_split(h, u, i, "valid", mask="train", ks=(5, 10))
    parts = [evaluate_shard(h, u, i, "valid", "train", s, 3, ks=(5, 10)) for s in range(3)]
    assert sorted(np.concatenate([p.users for p in parts]).tolist()) == ref.users.tolist()
    got = merge([to_rows(p) for p in parts], parts[0].protocol)
    assert got.per_user.equals(ref.per_user)
    assert np.array_equal(got.topk, ref.topk) and np.array_equal(got.scores, ref.scores)
    assert got.metrics == ref.metrics
    assert got.protocol.fingerprint() == ref.protocol.fingerprint()
    assert isinstance(got.per_user, pl.DataFrame)
