"""Data-parallel SVI on PyTorch's own engine: torch.distributed process groups and DDP.

``fit`` runs data-parallel when launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the
environment) or when asked with ``strategy="ddp"``. Every rank draws the same global minibatches
(the same seeded permutation) and takes rows ``rank, rank + W, ...`` of each one; its ELBO
scales the data plate by W N / B_global, so the average of the ranks' gradients that DDP
takes equals the gradient of the one-process minibatch objective. For deterministic objectives
(exact maximum likelihood) a W-process run reproduces a one-process run to float tolerance; for
stochastic ones (ELBOs) each rank draws its own noise (seed + rank), so the gradients agree in
expectation and the runs agree within Monte Carlo error, not to float tolerance.

Launch (one node, 4 GPUs; or several nodes)::

    torchrun --nproc_per_node=4 -m ppgen train vae --data binarized_mnist --root DATA --out runs/vae
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=4 --rdzv_backend=c10d \\
             --rdzv_endpoint=HOST:29500 -m ppgen train vae ...
"""

from __future__ import annotations

import dataclasses
import datetime
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

__all__ = ["Cluster", "join", "STRATEGIES"]

STRATEGIES = ("auto", "single", "ddp")
TIMEOUT = datetime.timedelta(minutes=int(os.environ.get("PPGEN_DIST_TIMEOUT_MIN", "10")))


@dataclasses.dataclass
class Cluster:
    """This process's place in the job: rank, world size, and whether it made the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    def device(self, device: torch.device) -> torch.device:
        """Each process of a job on GPUs takes the GPU of its local rank."""
        if self.parallel and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, module: torch.nn.Module, device: torch.device, find_unused: bool = False) -> torch.nn.Module:
        """DDP around ``module`` (``find_unused``: an objective with several parameter groups
        leaves the other groups' parameters without gradients in each backward pass)."""
        if not self.parallel:
            return module
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Average of ``values`` over the ranks (identity for one process)."""
        if self.parallel:
            values = values.clone()
            dist.all_reduce(values)
            values /= self.world_size
        return values

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.parallel:
            values = values.clone()
            dist.all_reduce(values)
        return values

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if not self.parallel:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global minibatch: ``rows[rank::world_size]``."""
        return rows[self.rank::self.world_size]

    def close(self) -> None:
        """Destroy the group this process made, once every rank got here: Gloo can abort a rank
        that tears down while a peer still uses the group. Call it after a success only; after a
        failure leave the group to the process exit, since tearing it down while peers are still
        inside a collective can deadlock."""
        if self.created_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def join(strategy: str, device: torch.device) -> Cluster:
    """Join (creating when needed) the process group that ``strategy`` asks for.

    ``"auto"``: data-parallel when launched with ``WORLD_SIZE`` > 1 (``torchrun``), else one
    process. ``"ddp"``: data-parallel; needs the torchrun environment variables or an initialised
    process group. The backend is NCCL on CUDA and Gloo on CPU.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if strategy == "single" or (strategy == "auto" and world <= 1 and not dist.is_initialized()):
        return Cluster()
    created = False
    if not dist.is_initialized():
        missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise ValueError(f"strategy='ddp' needs a launch by torchrun (missing environment variables "
                             f"{', '.join(missing)}), or an initialised torch.distributed process group")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        created = True
    return Cluster(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), created)
