"""Padding maps to window multiples, and splitting them into windows and back.

The size-dependent helpers are registered as FX leaf functions (``register_notrace_function``): under
``torch.fx`` symbolic tracing they are recorded as calls and run on the real tensors, since their control flow
and reshapes depend on the input size. They are TorchScript-compatible.
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

from .tracing import is_tracing

__all__ = ['pad_amount', 'pad_to_multiple', 'window_partition', 'window_reverse']


def pad_amount(size: int, multiple: int) -> int:
    """How much to add to ``size`` to reach a multiple of ``multiple``.

    Written with floor division rather than ``%``: symbolic sizes under ``torch.compile(dynamic=True)`` and
    ONNX export trace floor division cleanly, the modulo of a negative number less so.
    """
    return (size + multiple - 1) // multiple * multiple - size


@register_notrace_function
def pad_to_multiple(x: torch.Tensor, multiple: Tuple[int, int], channels_last: bool = False) -> torch.Tensor:
    """Zero-pad the bottom and right of a map to multiples of ``multiple = (mh, mw)``.

    ``(B, C, H, W)`` -> ``(B, C, H', W')``, or ``(B, H, W, C)`` -> ``(B, H', W', C)`` with ``channels_last``. A map
    that is already a multiple is returned as it is in eager mode (a zero pad would still copy it) and padded by
    zero under export / compile (see :func:`~.tracing.is_tracing`).
    """
    h_dim = 1 if channels_last else 2
    pad_h = pad_amount(x.shape[h_dim], multiple[0])
    pad_w = pad_amount(x.shape[h_dim + 1], multiple[1])
    if pad_h == 0 and pad_w == 0 and not is_tracing():
        return x
    return F.pad(x, [0, 0, 0, pad_w, 0, pad_h] if channels_last else [0, pad_w, 0, pad_h])


@register_notrace_function
def window_partition(x: torch.Tensor, window_size: Tuple[int, int]) -> torch.Tensor:
    """``(B, H, W, *rest)`` -> ``(B * nW, wh, ww, *rest)``, windows in row-major order, batch-major.

    ``H`` and ``W`` must be multiples of the window. Unlike timm's Swin helper this keeps any trailing
    dimensions (e.g. a q/k/v axis) and accepts non-contiguous input.
    """
    B, H, W = x.shape[0], x.shape[1], x.shape[2]
    rest = list(x.shape[3:])
    wh, ww = window_size
    x = x.reshape([B, H // wh, wh, W // ww, ww] + rest).transpose(2, 3)
    return x.reshape([B * (H // wh) * (W // ww), wh, ww] + rest)


@register_notrace_function
def window_reverse(windows: torch.Tensor, window_size: Tuple[int, int], size: List[int]) -> torch.Tensor:
    """``(B * nW, wh, ww, *rest)`` -> ``(B, H, W, *rest)`` for ``size = (H, W)``, the inverse of
    :func:`window_partition`."""
    wh, ww = window_size
    H, W = size[0], size[1]
    rest = list(windows.shape[3:])
    x = windows.reshape([-1, H // wh, W // ww, wh, ww] + rest).transpose(2, 3)
    return x.reshape([-1, H, W] + rest)
