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


def test_id_table_answers_as_sorting_does_call_after_call() -> None:
    """The slot table is reused without clearing: every call must still answer as the sort-based operations
    do, whatever earlier calls left in it (positions and marks share the slots)."""
    from mrdib_cli.graphs.sampling import extend, positions
    from mrdib_cli.ids import IdTable

    g = torch.Generator().manual_seed(0)
    ids = IdTable(5000, torch.device("cpu"))
    for _ in range(20):
        table = torch.randperm(5000, generator=g)[:int(torch.randint(1, 3000, (1,), generator=g))]
        x = torch.randint(0, 5000, (4000,), generator=g)
        assert torch.equal(ids.isin(x, table), isin_ids(x, table))
        q = table[torch.randint(0, len(table), (700,), generator=g)]
        assert torch.equal(ids.positions(table, q), positions(table, q))
        assert torch.equal(extend(table, x, ids.isin), extend(table, x))
        assert ids.distinct(table) and ids.distinct(table[:1]) and ids.distinct(table[:0])
        assert ids.distinct(x) == (len(torch.unique(x)) == len(x))
        assert not ids.distinct(torch.cat([table, table[-1:]]))


def test_sampled_blocks_unchanged_by_the_id_table(monkeypatch) -> None:
    """Neighbourhoods drawn with the slot table are the ones the sort-based operations draw (same bits)."""
    from mrdib_cli.graphs import sampling

    n = 3000
    g = torch.Generator().manual_seed(1)
    rows, cols = torch.randint(0, n, (2, 40000), generator=g)
    m = torch.sparse_coo_tensor(torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])]),
                                torch.rand(80000, generator=g), (n, n)).coalesce()
    graph = sampling.CSRGraph(m)
    seeds = torch.randint(0, n, (300,), generator=g)

    class Sorting:
        positions, isin = staticmethod(sampling.positions), staticmethod(isin_ids)

    for budget in (0, 200):
        draw = [sampling.sample_blocks(graph, seeds, [5, 3], torch.Generator().manual_seed(7), budget)]
        monkeypatch.setattr(graph, "ids", Sorting())
        draw.append(sampling.sample_blocks(graph, seeds, [5, 3], torch.Generator().manual_seed(7), budget))
        monkeypatch.undo()
        (na, ba), (nb, bb) = draw
        assert all(torch.equal(a, b) for a, b in zip(na, nb)) and len(na) == len(nb) == 3
        assert all(torch.equal(getattr(a, f), getattr(b, f)) for a, b in zip(ba, bb) for f in ("dst", "src", "weight"))


def test_aggregate_gives_autograd_bits_forward_and_backward() -> None:
    """The hop's own backward is the arithmetic autograd would run, in the same order: same bits."""
    from mrdib_cli.graphs.sampling import Block, aggregate

    g = torch.Generator().manual_seed(3)
    dst = torch.randint(0, 300, (5000,), generator=g).sort().values
    block = Block(dst, torch.randint(0, 900, (5000,), generator=g), torch.rand(5000, generator=g), 300)
    x = torch.randn(900, 16, generator=g, requires_grad=True)
    grad = torch.randn(300, 16, generator=g)
    out = aggregate(block, x)
    out.backward(grad)
    ref_x = x.detach().clone().requires_grad_(True)
    ref = torch.zeros(300, 16).index_add(0, block.dst, ref_x.index_select(0, block.src) * block.weight[:, None])
    ref.backward(grad)
    assert torch.equal(out, ref) and torch.equal(x.grad, ref_x.grad)
    assert torch.equal(aggregate(block, x.detach()), ref.detach())
    w = block.weight.clone().requires_grad_(True)  # a learned weight gets its gradient
    aggregate(Block(block.dst, block.src, w, 300), x.detach()).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
