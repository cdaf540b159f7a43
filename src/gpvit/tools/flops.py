"""FLOP counting with ``torch.utils.flop_counter`` (2 FLOPs per multiply-accumulate).

The counter sees matrix products, convolutions and attention (SDPA included); it does not count norms,
activations or element-wise ops. The reference's published "FLOPs" are multiply-accumulate counts from
mmcv's hook counter, which also misses the attention matmuls; see docs/models.md.

:func:`count_flops` runs the forward pass for real. :func:`count_flops_symbolic` runs it on fake tensors
(``torch._subclasses.FakeTensorMode``): shapes are propagated and counted, nothing is computed or allocated, so
it costs the same at 224x224 as at 800x1280 and counts models whose activations would not fit in memory. Both
give the same number for any model whose forward pass does not depend on tensor values.
"""
from typing import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ['count_flops', 'count_flops_symbolic']


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of ``model`` on a zero tensor of ``input_shape``, in eval mode."""
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    x = torch.zeros(*input_shape, device=param.device, dtype=param.dtype)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def count_flops_symbolic(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of ``model`` on an input of ``input_shape``, counted without computing.

    The forward pass runs in eval mode on fake tensors (the model's own weights are wrapped, not copied or
    changed). Raises whatever the model raises for data-dependent control flow (e.g. ``.item()`` in forward);
    :func:`count_flops` is the fallback for such models.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    try:
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
            x = torch.zeros(*input_shape, device=param.device, dtype=param.dtype)
            with FlopCounterMode(display=False) as counter:
                model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops()
