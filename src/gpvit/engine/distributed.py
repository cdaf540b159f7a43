"""Process-group setup for torchrun (single- and multi-node) and small collective helpers.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; without them
the run is a single process. The backend is NCCL with CUDA and gloo on CPU.

The process group is made once per process, on the first run that needs it, kept for later runs in the same
process (a training then an evaluation, or several evaluations) and destroyed when the process exits. Destroying
and re-creating it between runs would race: rank 0 hosts the rendezvous store on ``MASTER_PORT``, and a rank that
finishes first could join rank 0's old store, read the previous rendezvous and wait forever.
"""
import atexit
import datetime
import logging
import os
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ['DistContext', 'init_distributed', 'destroy', 'wrap_ddp', 'align_grad_strides', 'all_reduce_sum',
           'all_gather_object', 'barrier']

_logger = logging.getLogger(__name__)


@dataclass
class DistContext:
    """Where this process runs: rank, world size and device."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


#: torch before 2.8 destroys a gloo process group holding the GIL while it waits for the group's worker threads;
#: a worker that is still dropping its last reference to a finished collective's tensors (ones Python made, as
#: ``all_gather_object`` does) needs the GIL to free them, so both wait forever. Seen as a hang at exit of a
#: two-process evaluation (twice, torch 2.7.0) and within 50 create-and-destroy cycles of a loop; none in 300 on
#: torch 2.8.0 or 2.14.1.
_GLOO_DESTROY_NEEDS_IDLE_WORKERS = torch.__version__ < '2.8'
#: How long those workers get, the GIL released, to finish first: they need microseconds (1 ms was enough in 400
#: cycles with both cores of the machine busy).
_GLOO_WORKER_GRACE_S = 0.1


def destroy() -> None:
    """Destroy the process group, if there is one: what every process does at exit (registered by
    :func:`init_distributed`). On torch < 2.8 with gloo it first lets the group's worker threads go idle."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if _GLOO_DESTROY_NEEDS_IDLE_WORKERS and dist.get_backend() == 'gloo':
        time.sleep(_GLOO_WORKER_GRACE_S)
    dist.destroy_process_group()


def init_distributed(device: Optional[str] = None, timeout_min: float = 30.) -> DistContext:
    """Join the process group torchrun describes in the environment, or run as a single process.

    Args:
        device: ``'cuda'``, ``'cpu'`` or None (CUDA if available).
        timeout_min: collective timeout.
    """
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith('cuda')
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError('device cuda requested, but CUDA is not available')
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device('cuda', torch.cuda.current_device())
    else:
        dev = torch.device('cpu')
    ctx = DistContext(rank, world_size, local_rank, dev)
    if world_size > 1 and not dist.is_initialized():
        backend = 'nccl' if use_cuda else 'gloo'
        kwargs = dict(backend=backend, timeout=datetime.timedelta(minutes=timeout_min))
        if use_cuda:
            kwargs['device_id'] = dev
        try:
            dist.init_process_group(**kwargs)
        except TypeError:  # torch without device_id
            kwargs.pop('device_id', None)
            dist.init_process_group(**kwargs)
        atexit.register(destroy)
    elif dist.is_initialized():
        ctx.rank, ctx.world_size = dist.get_rank(), dist.get_world_size()
    return ctx


def align_grad_strides(model: nn.Module) -> int:
    """Give gradients their parameter's strides where the two differ only along dimensions of size 1.

    The CPU's convolution backward (oneDNN) returns the weight gradient of a depthwise ``(C, 1, k, k)`` or a
    1x1 ``(O, I, 1, 1)`` convolution with channels-last strides: for these shapes the same memory order as the
    parameter's, but not the same strides, and DDP compares strides exactly, so every run warned once that
    "Grad strides do not match bucket view strides ... may impair performance". Along a dimension of size 1 a
    stride addresses nothing, so such a gradient is re-viewed with the parameter's strides (no copy) before it
    is accumulated; a real layout mismatch is left as it is, and still warned about. Returns how many
    parameters got the hook (those with a dimension of size 1).
    """
    n = 0
    for p in model.parameters():
        if p.requires_grad and p.dim() > 1 and 1 in p.shape:
            p.register_hook(_restrider(weakref.ref(p)))  # weak: the hook lives on the parameter itself
            n += 1
    return n


def _restrider(param: 'weakref.ref[torch.Tensor]') -> Callable[[torch.Tensor], Optional[torch.Tensor]]:
    def restride(grad: torch.Tensor) -> Optional[torch.Tensor]:
        p = param()
        if p is None or grad.layout != torch.strided or grad.shape != p.shape or grad.stride() == p.stride():
            return None
        if any(n != 1 and a != b for n, a, b in zip(p.shape, grad.stride(), p.stride())):
            return None
        return grad.as_strided(p.shape, p.stride())
    return restride


def wrap_ddp(model: nn.Module, ctx: DistContext, find_unused_parameters: bool = False) -> DistributedDataParallel:
    """``model`` in DistributedDataParallel, with its gradients living in DDP's communication buckets.

    ``gradient_as_bucket_view``: each gradient is a view of the bucket that is all-reduced, instead of a tensor
    of its own that is copied into the bucket before and back after the all-reduce: one copy of the gradients
    fewer in memory (302 MB for GPViT-L4) and no copy back. The optimiser and clipping work on the views.
    """
    align_grad_strides(model)
    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == 'cuda' else None,
                                   find_unused_parameters=find_unused_parameters, gradient_as_bucket_view=True)


def all_reduce_sum(values: Dict[str, float], device: torch.device) -> Dict[str, float]:
    """Sum a dict of numbers over all processes (float64; exact for counts)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1 or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: v for k, v in zip(keys, t.tolist())}


def all_gather_object(obj: Any) -> List[Any]:
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
