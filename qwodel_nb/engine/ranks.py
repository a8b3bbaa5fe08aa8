"""Where this process stands in a distributed run, and the few collectives the engine needs.

A run with ``gpus`` > 1 starts one process per GPU under torchrun (``engine/distributed.py``
starts them, ``engine/worker.py`` is each process). Every decision that changes how many
collective operations a rank performs must be taken from values all ranks share; the helpers
here make such values agree (:func:`agree_max`, :func:`agree_any`) and sum tensors across ranks
(:func:`all_reduce`) on the device the process group's backend wants: the rank's GPU for NCCL,
the CPU for gloo (the CPU rehearsal and tests). Outside a distributed run each is the identity.
"""

from __future__ import annotations

import os
from typing import Any

import torch

#: the process-group backend workers use: "nccl" (default, one GPU per rank) or "gloo" (CPU rehearsal)
BACKEND_ENV = "QWODEL_DISTRIBUTED_BACKEND"
BACKENDS = ("nccl", "gloo")


def requested_backend() -> str:
    backend = os.environ.get(BACKEND_ENV, "nccl").strip().lower() or "nccl"
    return backend if backend in BACKENDS else "nccl"


def is_distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if is_distributed() else 1


def is_rank0() -> bool:
    return rank() == 0


def collective_device() -> torch.device:
    """Where tensors must be for a collective: the rank's GPU under NCCL, else the CPU."""
    import torch.distributed as dist

    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(tensors: list[torch.Tensor], op: Any = None) -> list[torch.Tensor]:
    """Each tensor summed (or ``op``) over all ranks; new tensors, the inputs are left as they are.

    The reduced tensors are on :func:`collective_device`. Every rank gets bit-identical values.
    """
    if not is_distributed():
        return tensors
    import torch.distributed as dist

    device = collective_device()
    out = [t.detach().to(device, copy=True) for t in tensors]
    works = [dist.all_reduce(t, op=op or dist.ReduceOp.SUM, async_op=True) for t in out]
    for work in works:
        work.wait()
    return out


def agree_max(value: int | float) -> int | float:
    """The largest of the ranks' values (the value itself outside a distributed run)."""
    if not is_distributed():
        return value
    import torch.distributed as dist

    kind = torch.int64 if isinstance(value, int) else torch.float64
    (out,) = all_reduce([torch.tensor(value, dtype=kind)], dist.ReduceOp.MAX)
    return out.item() if kind is torch.float64 else int(out.item())


def agree_min(value: int | float) -> int | float:
    if not is_distributed():
        return value
    return -agree_max(-value)


def agree_any(flag: bool) -> bool:
    """True on every rank if it is true on any rank."""
    return bool(agree_max(int(bool(flag))))


def agree_all(flag: bool) -> bool:
    """True on every rank only if it is true on every rank."""
    return not agree_any(not flag)


def union_of_names(names: list[str]) -> list[str]:
    """The names any rank holds, in the first order they appear across ranks (rank 0 first)."""
    if not is_distributed():
        return list(names)
    import torch.distributed as dist

    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, list(names))
    out: list[str] = []
    seen: set[str] = set()
    for part in gathered:
        for name in part:
            if name not in seen:
                seen.add(name)
                out.append(name)
    return out


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` outside a distributed run."""
    if not is_distributed():
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()


def agree_sum(value: int) -> int:
    """The sum of the ranks' values (the value itself outside a distributed run)."""
    if not is_distributed():
        return value
    (out,) = all_reduce([torch.tensor(int(value), dtype=torch.int64)])
    return int(out.item())


def leave_process_group() -> None:
    """Wait for every rank, then close the process group (this process is on its own afterwards)."""
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
