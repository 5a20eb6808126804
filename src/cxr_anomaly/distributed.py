"""Data-parallel training across processes with torch DistributedDataParallel (DDP).

``cxr-anomaly train`` started by ``torchrun`` finds the launcher's environment variables
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins a process
group: NCCL when the process has a GPU, gloo on CPU. Every rank holds a full copy of the
networks; DDP averages gradients after each backward pass, so the weights stay identical.

Decisions made here on purpose:

- ``train.batch_size`` is the *global* batch: each of W ranks takes ``batch_size // W`` films per
  step, so the optimiser sees the same number of films per step as a single-process run.
- BatchNorm normalises with each rank's own batch statistics unless ``train.sync_batchnorm`` is
  set, which converts the layers to :class:`torch.nn.SyncBatchNorm` (CUDA only: PyTorch has no
  CPU implementation). Running statistics are copied from rank 0 to every rank at the end of each
  epoch, so all ranks hold the same model.
- Only rank 0 writes files (training states, the checkpoint, logs) and logs below WARNING.
- Each rank draws its own input noise from a seed derived from the run's seed and its rank.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_distributed
from torch import nn

from .errors import ConfigError

logger = logging.getLogger(__name__)

LAUNCH_VARIABLES: tuple[str, ...] = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
RANK_SEED_STRIDE = 1_000_003  # a prime, so per-rank noise seeds of nearby run seeds do not collide


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a (possibly one-process) training job.

    Attributes:
        rank: this process's global rank, 0 for a single process.
        world_size: how many processes train together.
        local_rank: rank on this node; picks the GPU.
        backend: ``"nccl"``, ``"gloo"`` or ``"none"`` for a single process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "none"

    @property
    def is_distributed(self) -> bool:
        """Whether gradients must be synchronised with other processes."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and logs (rank 0)."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether the launcher's variables describe a job of more than one process."""
    return all(name in os.environ for name in LAUNCH_VARIABLES) and int(os.environ["WORLD_SIZE"]) > 1


def current_context() -> DistributedContext:
    """The context of an already initialised process group, or a single-process context."""
    if not (torch_distributed.is_available() and torch_distributed.is_initialized()):
        return DistributedContext()
    return DistributedContext(
        rank=torch_distributed.get_rank(),
        world_size=torch_distributed.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", torch_distributed.get_rank())),
        backend=str(torch_distributed.get_backend()),
    )


def initialise_from_environment(device_name: str, *, timeout_minutes: float = 30.0) -> DistributedContext:
    """Join the process group described by torchrun's variables (no-op without them).

    Args:
        device_name: ``train.device``; ``auto`` or ``cuda*`` with a visible GPU selects NCCL,
            anything else gloo.
        timeout_minutes: how long collective operations wait for a missing rank.

    Raises:
        ConfigError: CUDA is asked for but this process sees no GPU.
    """
    if torch_distributed.is_initialized():
        return current_context()
    if not launched_by_torchrun():
        return DistributedContext()
    wants_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if wants_cuda and not torch.cuda.is_available():
        raise ConfigError(f"train.device={device_name!r} under torchrun, but this process sees no GPU")
    local_rank = int(os.environ["LOCAL_RANK"])
    backend = "nccl" if wants_cuda else "gloo"
    if wants_cuda:
        torch.cuda.set_device(local_rank)
    torch_distributed.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    context = current_context()
    quiet_other_ranks(context)
    logger.info("joined a %s process group as rank %d of %d", backend, context.rank, context.world_size)
    return context


def quiet_other_ranks(context: DistributedContext) -> None:
    """Keep log output to rank 0: other ranks report warnings and errors only."""
    if not context.is_main:
        logging.getLogger("cxr_anomaly").setLevel(logging.WARNING)


def shutdown(context: DistributedContext, *, wait: bool = True) -> None:
    """Leave the process group; with ``wait``, after a barrier so no rank exits while others write."""
    if context.is_distributed and torch_distributed.is_initialized():
        if wait:
            torch_distributed.barrier()
        torch_distributed.destroy_process_group()


def training_device(device_name: str, context: DistributedContext) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` under NCCL, else ``train.device`` resolved."""
    if context.backend == "nccl":
        return torch.device("cuda", context.local_rank)
    if device_name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() and not context.is_distributed else "cpu")
    return torch.device(device_name)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of a rank's own random stream; rank 0 keeps ``seed`` (the single-process value)."""
    return seed + rank * RANK_SEED_STRIDE


def barrier(context: DistributedContext) -> None:
    """Wait for every rank (no-op for a single process)."""
    if context.is_distributed:
        torch_distributed.barrier()


def all_reduce_sum(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum a float64 CPU tensor over ranks (returned unchanged for a single process)."""
    if not context.is_distributed:
        return values
    device = torch.device("cuda", context.local_rank) if context.backend == "nccl" else torch.device("cpu")
    reduced = values.to(device)
    torch_distributed.all_reduce(reduced, op=torch_distributed.ReduceOp.SUM)
    return reduced.cpu()


def all_gather_bytes(payload: torch.Tensor, context: DistributedContext) -> list[torch.Tensor]:
    """Gather one equally sized uint8 CPU tensor (an RNG state, say) from every rank, in rank order."""
    if not context.is_distributed:
        return [payload]
    device = torch.device("cuda", context.local_rank) if context.backend == "nccl" else torch.device("cpu")
    local = payload.to(device)
    gathered = [torch.empty_like(local) for _ in range(context.world_size)]
    torch_distributed.all_gather(gathered, local)
    return [tensor.cpu() for tensor in gathered]


def broadcast_buffers(module: nn.Module, context: DistributedContext) -> None:
    """Copy BatchNorm running statistics (all buffers) from rank 0 to every rank."""
    if not context.is_distributed:
        return
    for buffer in module.buffers():
        torch_distributed.broadcast(buffer.data, src=0)


def max_parameter_difference(module: nn.Module, context: DistributedContext) -> float:
    """Largest absolute difference between this rank's parameters and buffers and rank 0's.

    Returns the maximum over all ranks (0.0 for a single process), so every rank gets the same
    answer. DDP should keep it exactly 0; anything else means the ranks went out of step.
    """
    if not context.is_distributed:
        return 0.0
    largest = torch.zeros((), dtype=torch.float64)
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.numel() == 0:
            continue
        reference = tensor.detach().clone()
        torch_distributed.broadcast(reference, src=0)
        difference = (tensor.detach().double() - reference.double()).abs().max().cpu()
        largest = torch.maximum(largest, difference)
    device = torch.device("cuda", context.local_rank) if context.backend == "nccl" else torch.device("cpu")
    largest = largest.to(device)
    torch_distributed.all_reduce(largest, op=torch_distributed.ReduceOp.MAX)
    return float(largest.cpu())


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace BatchNorm layers by SyncBatchNorm in place (children) and return the module.

    Raises:
        ConfigError: the device is not a GPU; PyTorch implements SyncBatchNorm for CUDA only.
    """
    if device.type != "cuda":
        raise ConfigError(
            f"train.sync_batchnorm=True needs CUDA devices (PyTorch has no CPU SyncBatchNorm); "
            f"this rank trains on {device}. Leave it off: each rank then uses its own batch statistics."
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)
