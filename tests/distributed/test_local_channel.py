"""The shared-memory channel of one machine's ranks: sums equal to the process group's on every rank,
buffers that are never overwritten before every rank has read them, and a one-line error when a rank
stops answering."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from mrdib_cli.errors import MrdibError


def _sums_worker(rank: int, world: int, init: str, out: str, shm: str) -> None:
    import torch.distributed as dist

    from mrdib_cli import launch, local_channel

    os.environ["LOCAL_WORLD_SIZE"] = str(world)  # as torchrun sets it: every rank on this machine
    # this test's own folder: other test files run in parallel and make (and remove) their names in /dev/shm
    launch.SHM_DIR = local_channel.SHM_DIR = Path(shm)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        assert launch.local_channel() is not None
        got, ref, acc = [], [], torch.zeros(())
        for k in range(60):
            # each step's contribution depends on the last sum: a buffer overwritten too early shows at once
            if rank == k % world:
                time.sleep(0.002)  # one rank late in turn
            n = 1 + (k * 37) % 5000 if k != 40 else 300_000  # step 40 grows the slots (1.2 MB of floats)
            t = torch.arange(n, dtype=torch.float32) * (rank + 1) + acc
            expect = t.clone()
            dist.all_reduce(expect)
            launch.sum_across_ranks(t)
            acc = t[-1].clone()
            got.append(t.clone())
            ref.append(expect)
        counts = torch.tensor([[rank, 2 * rank]], dtype=torch.int64)  # another dtype through the same slots
        launch.sum_across_ranks(counts)
        launch.step_barrier()
        torch.save({"got": got, "ref": ref, "counts": counts}, f"{out}.{rank}")
    finally:
        launch.shutdown()


@pytest.mark.parametrize("world", [2, 3])
def test_channel_sums_match_the_process_group_and_every_rank_agrees(tmp_path, world: int) -> None:
    import torch.multiprocessing as mp

    out, shm = str(tmp_path / "r"), tmp_path / "shm"
    shm.mkdir()
    mp.spawn(_sums_worker, args=(world, f"file://{tmp_path / 'rdv'}", out, str(shm)), nprocs=world, join=True)
    results = [torch.load(f"{out}.{r}") for r in range(world)]
    for k, ref in enumerate(results[0]["ref"]):
        assert torch.allclose(results[0]["got"][k], ref, rtol=1e-6), k
        for other in results[1:]:
            assert torch.equal(other["got"][k], results[0]["got"][k])  # the same bits on every rank
    total = sum(range(world))
    assert results[0]["counts"].tolist() == [[total, 2 * total]]
    assert not list(shm.iterdir())  # every pipe and buffer name removed once the ranks held them


def _multi_node_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from mrdib_cli import launch

    os.environ["LOCAL_WORLD_SIZE"] = "1"  # one rank per machine: the ranks share no memory
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        t = torch.full((3,), float(rank + 1))
        launch.sum_across_ranks(t)
        torch.save({"channel": launch.local_channel() is not None, "sum": t}, f"{out}.{rank}")
    finally:
        launch.shutdown()


def test_ranks_on_several_machines_use_the_process_group(tmp_path) -> None:
    import torch.multiprocessing as mp

    out = str(tmp_path / "r")
    mp.spawn(_multi_node_worker, args=(2, f"file://{tmp_path / 'rdv'}", out), nprocs=2, join=True)
    for r in range(2):
        got = torch.load(f"{out}.{r}")
        assert not got["channel"] and got["sum"].tolist() == [3.0, 3.0, 3.0]


def _silent_peer_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from mrdib_cli.local_channel import LocalChannel

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        channel = LocalChannel(rank, world, timeout_s=1.0)
        message = ""
        if rank == 0:  # rank 1 never comes to the barrier
            try:
                channel.barrier()
            except MrdibError as e:
                message = str(e)
        with open(f"{out}.{rank}", "w") as f:
            f.write(message)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_a_rank_that_stops_answering_ends_the_wait_with_one_line(tmp_path) -> None:
    import torch.multiprocessing as mp

    out = str(tmp_path / "r")
    mp.spawn(_silent_peer_worker, args=(2, f"file://{tmp_path / 'rdv'}", out), nprocs=2, join=True)
    message = open(f"{out}.0").read()
    assert "stopped answering" in message and "\n" not in message
