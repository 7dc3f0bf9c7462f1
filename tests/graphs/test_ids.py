"""The id helpers give torch's own results on every size, inside the padded range and around it."""

from __future__ import annotations

import pytest
import torch

from mrdib_cli.ids import PAD_FROM, RADIX_MIN, isin_ids, unique_ids, unique_ids_inverse

SIZES = [0, 1, 100, PAD_FROM - 1, PAD_FROM, 20000, RADIX_MIN - 1, RADIX_MIN, 50000]


@pytest.mark.parametrize("n", SIZES)
def test_unique_and_isin_equal_torch(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    x = torch.randint(0, max(2 * n, 10), (n,), generator=g)  # about half the ids repeat
    table = torch.randint(0, max(2 * n, 10), (max(n // 7, 1),), generator=g)
    assert torch.equal(unique_ids(x), torch.unique(x))
    u, inv = unique_ids_inverse(x)
    ref_u, ref_inv = torch.unique(x, return_inverse=True)
    assert torch.equal(u, ref_u) and torch.equal(inv, ref_inv)
    hit = isin_ids(x, table)
    assert torch.equal(hit, torch.isin(x, table))
    assert 0 < int(hit.sum()) < n or n < 100  # the check sees both answers


@pytest.mark.parametrize("n", [PAD_FROM, 20000, RADIX_MIN - 1])
def test_sorted_runs_give_torch_results_too(n: int) -> None:
    """Mostly sorted input (two sorted runs, as two ranks' row lists) takes torch's own path: same results."""
    g = torch.Generator().manual_seed(n)
    x = torch.cat([torch.randint(0, n, (n // 3,), generator=g).sort().values,
                   torch.randint(0, n, (n - n // 3,), generator=g).sort().values])
    assert torch.equal(unique_ids(x), torch.unique(x))
    u, inv = unique_ids_inverse(x)
    ref_u, ref_inv = torch.unique(x, return_inverse=True)
    assert torch.equal(u, ref_u) and torch.equal(inv, ref_inv)
    assert torch.equal(isin_ids(x[::3], x[1::5]), torch.isin(x[::3], x[1::5]))


def test_ids_as_large_as_a_catalogue_allows() -> None:
    """Ids near the top of int64 stay below the padding sentinel and are kept."""
    big = torch.iinfo(torch.int64).max - 1
    x = torch.cat([torch.randperm(PAD_FROM, generator=torch.Generator().manual_seed(0)), torch.tensor([big, big])])
    assert torch.equal(unique_ids(x), torch.unique(x))
    assert bool(isin_ids(torch.tensor([big]), x)[0]) and not bool(isin_ids(torch.tensor([big - 1]), x)[0])
