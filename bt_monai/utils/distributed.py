"""Which process this is in a ``torch.distributed`` run, for code that reads the same with one process or many.

A bundle step such as ``"$bt_monai.utils.is_main_process() and @train#checkpoint_saver.attach(@train#trainer)"``
runs in ``train.json`` (one process: always) and in ``multi_gpu_train.json`` under ``torchrun`` (rank 0 only).
torch is not imported here: a process that never imported it has no process group, hence is rank 0 of 1.

``bt-monai infer`` / ``evaluate`` on slice folders under ``torchrun`` join the group with
:func:`init_process_group` (which alone imports torch), take their share with :func:`block_of` and give it to
rank 0 with :func:`gather_blocks`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TypeVar

__all__ = [
    "barrier",
    "block_of",
    "broadcast_from_main",
    "gather_blocks",
    "gather_in_sampler_order",
    "init_process_group",
    "is_distributed",
    "is_main_process",
    "launched_world_size",
    "rank",
    "share",
    "world_size",
]

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialized in this process."""
    torch = sys.modules.get("torch")
    dist = getattr(torch, "distributed", None)
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


def rank() -> int:
    """This process's rank in the process group (0 when there is none)."""
    return int(sys.modules["torch"].distributed.get_rank()) if is_distributed() else 0


def world_size() -> int:
    """How many processes the process group holds (1 when there is none)."""
    return int(sys.modules["torch"].distributed.get_world_size()) if is_distributed() else 1


def is_main_process() -> bool:
    """True when no process group is initialized or this is rank 0: the process that writes shared files."""
    return rank() == 0


def gather_in_sampler_order(items: Sequence[T]) -> list[T]:
    """Every rank's ``items`` (picklable), in the order one process would have produced them; on every rank.

    The ranks' lists are taken as the shards of an unshuffled ``DistributedSampler`` (MONAI's with
    ``even_divisible=False``, or torch's): rank ``r`` of ``W`` holds the dataset items ``r, r + W, r + 2W, ...``,
    so interleaving the lists restores the dataset order. A collective call: every rank must make it. Without a
    process group, ``items`` are returned as they are.
    """
    if not is_distributed():
        return list(items)
    dist = sys.modules["torch"].distributed
    shards: list[list[T] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(shards, list(items))
    lists = [shard or [] for shard in shards]
    longest = max((len(shard) for shard in lists), default=0)
    return [shard[k] for k in range(longest) for shard in lists if k < len(shard)]


# --- slice folders under torchrun (``bt-monai infer`` / ``evaluate``): each rank a contiguous share ---------


def launched_world_size() -> int:
    """How many processes the launcher started: ``WORLD_SIZE`` of torchrun's environment, else 1.

    Known before any process group exists, so a command can refuse a mode that does not shard (DICOM input)
    before it loads anything.
    """
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number of processes") from None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (a container's or taskset's share)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def init_process_group(device=None) -> bool:
    """Join the process group of a ``torchrun`` launch (``WORLD_SIZE`` > 1); return whether there is one.

    ``device``: where the networks run (``"cuda"``, ``"cpu"``, a ``torch.device``; None: CUDA when available).
    CUDA: each process takes the GPU ``LOCAL_RANK`` (modulo the GPUs there are), and the group is ``nccl`` when
    every local process has a GPU of its own, else ``gloo`` (so is it when CUDA was in use before the call);
    CPU: ``gloo``. Each process gets ``cores /
    LOCAL_WORLD_SIZE`` torch threads (at least 1), so N processes share the cores instead of each taking
    them all (torchrun itself would leave every process one thread). Call it before building the networks, so
    they land on this process's GPU; later calls, and calls without torchrun, do nothing. The group is left
    at exit.
    """
    if is_distributed():
        return True
    if launched_world_size() == 1:
        return False
    import atexit

    import torch
    import torch.distributed as dist

    missing = [key for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if key not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start the processes with "
            "torchrun (torchrun --nproc_per_node N -m bt_monai ...), or unset WORLD_SIZE for one process"
        )
    local_rank, local_size = int(os.environ["LOCAL_RANK"]), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    device_type = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")).type
    backend = "gloo"
    # Networks already on a GPU (a library caller built them first) stay where they are, and gloo serves them.
    if device_type == "cuda" and torch.cuda.is_available() and not torch.cuda.is_initialized():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())  # "cuda" now means this process's GPU
        backend = "nccl" if torch.cuda.device_count() >= local_size else "gloo"  # nccl: one GPU per rank
    torch.set_num_threads(max(1, _cores() // max(1, local_size)))
    dist.init_process_group(backend)
    atexit.register(lambda: dist.destroy_process_group() if dist.is_initialized() else None)
    return True


def block_of(n_items: int, batch_size: int = 1) -> range:
    """This rank's contiguous share of ``n_items`` (indices), cut at multiples of ``batch_size``.

    Rank ``r`` of ``W`` takes the batches ``r * B // W`` to ``(r + 1) * B // W`` of the ``B`` batches one
    process would run, so each batch keeps the slices it has in one process (a network's result may depend
    on its batch) and the ranks' shares, joined in rank order (:func:`gather_blocks`), are the one-process
    order. Without a process group: all of them.
    """
    n_batches, size, index = -(-n_items // max(1, batch_size)), world_size(), rank()
    start, stop = index * n_batches // size * batch_size, (index + 1) * n_batches // size * batch_size
    return range(min(start, n_items), min(stop, n_items))


def share(items: Sequence[T], batch_size: int = 1, what: str = "slices") -> list[T]:
    """This rank's :func:`block_of` of ``items``; in a process group it says so on stderr, once per rank.

    The line (``rank 1 of 2: 4 of 6 slices``) shows how the work was split, e.g. when one rank is slower.
    """
    block = block_of(len(items), batch_size)
    if is_distributed():
        print(f"rank {rank()} of {world_size()}: {len(block)} of {len(items)} {what}", file=sys.stderr, flush=True)
    return [items[i] for i in block]


def gather_blocks(items: Sequence[T]) -> list[T]:
    """Every rank's ``items`` (picklable), joined in rank order (the shares of :func:`block_of`); on every rank.

    A collective call: every rank must make it. Without a process group, ``items`` are returned as they are.
    """
    if not is_distributed():
        return list(items)
    dist = sys.modules["torch"].distributed
    shares: list[list[T] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(shares, list(items))
    return [item for share in shares for item in share or []]


def broadcast_from_main(obj: T) -> T:
    """Rank 0's ``obj`` (picklable), on every rank; a collective call. Without a process group: ``obj``."""
    if not is_distributed():
        return obj
    dist = sys.modules["torch"].distributed
    box = [obj if is_main_process() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every rank is here (nothing to wait for without a process group)."""
    if is_distributed():
        sys.modules["torch"].distributed.barrier()
