"""Where distillation trains: the process group under torchrun, and the device of each rank.

A rank trains on ``cuda:LOCAL_RANK`` when CUDA is there (or asked for), else on the CPU; the
process-group backend follows the device (nccl needs CUDA tensors, gloo takes CPU ones), so the
two can never disagree.
"""

from __future__ import annotations

import os
from typing import Any

from edgeport.errors import UsageError

DEVICES = ("auto", "cpu", "cuda")


def training_device(choice: str, local_rank: int, cuda_devices: int) -> str:
    """The torch device string a rank trains on: ``cpu`` or ``cuda:<n>``. ``cuda_devices`` is how
    many GPUs this process sees: one means each rank was given its own (CUDA_VISIBLE_DEVICES)."""
    if choice not in DEVICES:
        raise UsageError(f"device '{choice}' is unknown", fix=f"use one of {', '.join(DEVICES)}")
    if choice == "cuda" and cuda_devices == 0:
        raise UsageError("device 'cuda' was asked for, but torch sees no CUDA device here",
                         fix="use --device cpu (or auto), or install a CUDA build of torch")
    if choice == "cpu" or cuda_devices == 0:
        return "cpu"
    if cuda_devices == 1:
        return "cuda:0"
    if local_rank >= cuda_devices:
        raise UsageError(f"rank {local_rank} on this node has no GPU of its own ({cuda_devices} are visible)",
                         fix="run as many ranks per node as there are GPUs (--nproc_per_node), or use --device cpu")
    return f"cuda:{local_rank}"


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


class World:
    """This process's rank in the run (0 of 1 without torchrun) and the device it trains on."""

    def __init__(self, rank: int, size: int, device: str):
        self.rank, self.size, self.device = rank, size, device

    @classmethod
    def setup(cls, device_choice: str = "auto") -> "World":
        import torch
        import torch.distributed as dist

        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = training_device(device_choice, local_rank, torch.cuda.device_count() if torch.cuda.is_available() else 0)
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls(0, 1, device)
        if not dist.is_initialized():
            dist.init_process_group(backend=backend_for(device))
        return cls(dist.get_rank(), dist.get_world_size(), device)

    def wrap(self, module: Any) -> Any:
        """DistributedDataParallel over ranks (pinned to this rank's GPU), or the module itself."""
        if self.size <= 1:
            return module
        from torch import nn

        device_ids = [int(self.device.split(":")[1])] if self.device.startswith("cuda") else None
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=False)


def finish_distributed() -> None:
    """All ranks meet, then tear the process group down: a gloo thread left running when the
    interpreter exits aborts the process ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Rank 0, or no distributed run. Read from torchrun's RANK before the group exists."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0
