"""FLOP counting with ``torch.utils.flop_counter`` (2 FLOPs per multiply-accumulate).

The counter sees matrix products, convolutions and attention (SDPA included); it does not count norms,
activations or element-wise ops. The reference's published "FLOPs" are multiply-accumulate counts from
mmcv's hook counter, which also misses the attention matmuls; see docs/models.md.
"""
from typing import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ['count_flops']


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
