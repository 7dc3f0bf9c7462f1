"""Barriers and small sums among the ranks of a job that runs on one machine's CPU (gloo), through shared
memory and named pipes instead of the process group (docs/scaling.md).

Why: a ``--minibatch sampled`` step meets the other ranks three times (the batch-level norms, the gradient sum,
the published rows), each time with a few floats at most. Through gloo each meeting wakes gloo's two helper
threads per rank over loopback TCP; inside a training step that cost 1.5-2 ms of CPU per meeting and rank,
the largest part of what a second rank added to a 25 ms step. Here a rank copies its floats into its slot of
a shared buffer and meets the others at a barrier of pipes: every other rank writes one byte to rank 0's
pipe, and rank 0 answers each with one byte, about 0.05 ms of CPU. The pipes' system calls order the memory
writes before them on every architecture, so no atomics are involved.

A sum reads the slots in rank order on every rank, so every rank gets the same bits. Two buffers alternate:
a rank can only write a buffer again after the barrier of the next sum, which every rank reaches after it
has read that buffer.
"""

from __future__ import annotations

import math
import os
import select
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from mrdib_cli.errors import MrdibError

#: where the shared buffers and pipes are created (a RAM-backed file system); the names go once mapped
SHM_DIR = Path("/dev/shm")

#: initial bytes of a rank's slot; a larger sum grows every slot once (all ranks decide alike)
SLOT_BYTES = 1 << 16

#: a sum larger than this goes through the process group: its slots would hold that much RAM per rank
MAX_SLOT_BYTES = 64 << 20


def map_shared(path: Path, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, made: list[Path]) -> Tensor:
    """A tensor backed by the shared file ``path`` (created at its size when missing); ``path`` is added to
    ``made`` so that the caller can remove the name once every rank has mapped it."""
    made.append(path)
    n = max(math.prod(shape), 1)  # a mapping cannot be empty
    return torch.from_file(str(path), shared=True, size=n, dtype=dtype)[:math.prod(shape)].view(*shape)


def shared_setup(rank: int, create: Callable[[Path, list[Path]], None], tag_prefix: str) -> None:
    """Run ``create(tag, paths)`` on rank 0 first, then on the other ranks (which map what rank 0 made), then
    remove the names: every rank holds its mappings and descriptors, and nothing is left behind on a crash."""
    tag = [f"{tag_prefix}-{uuid.uuid4().hex}" if rank == 0 else ""]
    dist.broadcast_object_list(tag, src=0)
    paths: list[Path] = []
    for first in (True, False):
        if first == (rank == 0):
            create(SHM_DIR / tag[0], paths)
        dist.barrier()
    if rank == 0:
        for path in paths:
            path.unlink(missing_ok=True)


class LocalChannel:
    """The job's barrier and sums through shared memory (see the module docstring). Collective: every rank
    builds it, and calls :meth:`barrier` and :meth:`sum_` at the same points."""

    def __init__(self, rank: int, world: int, timeout_s: float) -> None:
        self.slots = torch.empty(0, dtype=torch.uint8)
        self.rank, self.world, self.timeout_s = rank, world, timeout_s
        self.calls = 0
        self.pipes: list[int] = []
        shared_setup(rank, self._open_pipes, "mrdib-pipes")
        self._map_slots(SLOT_BYTES)

    def _open_pipes(self, base: Path, made: list[Path]) -> None:
        for r in range(self.world):
            path = Path(f"{base}-{r}")
            made.append(path)
            if self.rank == 0:
                os.mkfifo(path, 0o600)
            # read-write: opening never waits for the other end, and a pipe never reads end-of-file
            self.pipes.append(os.open(path, os.O_RDWR))

    def _map_slots(self, slot_bytes: int) -> None:
        def create(base: Path, made: list[Path]) -> None:
            self.slots = map_shared(Path(f"{base}-sums"), (2, self.world, slot_bytes), torch.uint8, made)

        shared_setup(self.rank, create, "mrdib-sums")

    def close(self) -> None:
        for fd in self.pipes:
            os.close(fd)
        self.pipes = []

    def barrier(self) -> None:
        """Return once every rank has called it (memory written before it is seen by every rank after it)."""
        if self.rank == 0:
            for _ in range(self.world - 1):
                self._read(0)
            for r in range(1, self.world):
                os.write(self.pipes[r], b"\x01")
        else:
            os.write(self.pipes[0], b"\x01")
            self._read(self.rank)

    def _read(self, r: int) -> None:
        poller = select.poll()  # not select(): a process may hold descriptors above FD_SETSIZE
        poller.register(self.pipes[r], select.POLLIN)
        if not poller.poll(int(self.timeout_s * 1000)) or not os.read(self.pipes[r], 1):
            raise MrdibError(f"rank {self.rank}: another rank stopped answering for {self.timeout_s:.0f} s; "
                             "see the other ranks' messages")

    def fits(self, t: Tensor) -> bool:
        """Whether :meth:`sum_` takes ``t`` (a CPU tensor of at most MAX_SLOT_BYTES)."""
        return t.device.type == "cpu" and t.numel() * t.element_size() <= MAX_SLOT_BYTES

    def sum_(self, t: Tensor) -> None:
        """In-place sum of ``t`` over the ranks (every rank passes a tensor of the same shape and dtype)."""
        nbytes = t.numel() * t.element_size()
        if nbytes > self.slots.shape[2]:  # slots stay multiples of 64 bytes: every dtype's view lines up
            self._map_slots(-(-max(nbytes, 2 * self.slots.shape[2]) // 64) * 64)
        buf = self.slots[self.calls % 2]
        self.calls += 1
        buf[self.rank, :nbytes].copy_(t.detach().contiguous().view(-1).view(torch.uint8))
        self.barrier()
        t.copy_(buf[:, :nbytes].view(t.dtype).sum(0).view_as(t))
