"""FLOP counting with ``torch.utils.flop_counter`` (2 FLOPs per multiply-accumulate).

The counter sees matrix products, convolutions and attention (SDPA included); it does not count norms,
activations or element-wise ops. The reference's published "FLOPs" are multiply-accumulate counts from
mmcv's hook counter, which also misses the attention matmuls; see docs/models.md.

:func:`count_flops` runs the forward pass for real. :func:`count_flops_symbolic` runs it on fake tensors
(``torch._subclasses.FakeTensorMode``): shapes are propagated and counted, nothing is computed or allocated, so
it costs the same at 224x224 as at 800x1280 and counts models whose activations would not fit in memory. Both
give the same number for any model whose forward pass does not depend on tensor values.

The same count on every supported PyTorch. ``F.scaled_dot_product_attention`` dispatches to one of several
kernels (CPU flash, CUDA flash / memory-efficient / cuDNN, a backend's overridable kernel), and which of them
``torch.utils.flop_counter`` has a formula for depends on the release: torch 2.14 has none for the CPU flash
kernel, so every CPU attention would count 0 FLOPs. :func:`register_sdpa_flop_formulas` (run when this module
is imported) registers, with the counter's own ``register_flop_formula``, the standard attention count for each
SDPA kernel of the installed torch that has no formula yet; kernels torch already counts keep torch's formula.
"""
from typing import List, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula

__all__ = ['count_flops', 'count_flops_symbolic', 'register_sdpa_flop_formulas', 'sdpa_flops',
           'sdpa_backward_flops']

# SDPA kernels whose first arguments are (query, key, value, ...), and whose backward's are
# (grad_out, query, key, value, ...); all with (batch, heads, length, head_dim) tensors.
_SDPA_FORWARD = ('_scaled_dot_product_flash_attention_for_cpu', '_scaled_dot_product_flash_attention',
                 '_scaled_dot_product_efficient_attention', '_scaled_dot_product_cudnn_attention',
                 '_scaled_dot_product_fused_attention_overrideable', '_scaled_dot_product_attention_math_for_mps')
_SDPA_BACKWARD = ('_scaled_dot_product_flash_attention_for_cpu_backward',
                  '_scaled_dot_product_flash_attention_backward', '_scaled_dot_product_efficient_attention_backward',
                  '_scaled_dot_product_cudnn_attention_backward',
                  '_scaled_dot_product_fused_attention_overrideable_backward')


def sdpa_flops(query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int]) -> int:
    """FLOPs of one attention forward: ``q @ k^T`` and ``softmax(.) @ v``, ``2 * b * h * Lq * Lk * (Dq + Dv)``.

    Shapes are ``(b, h, Lq, Dq)``, ``(b, h_kv, Lk, Dq)``, ``(b, h_kv, Lk, Dv)``; grouped key/value heads count
    as many heads as the queries have (torch's convention).
    """
    *batch, lq, dq = query_shape
    lk, dv = key_shape[-2], value_shape[-1]
    bh = 1
    for n in batch:
        bh *= n
    return 2 * bh * lq * lk * (dq + dv)


def sdpa_backward_flops(query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int]) -> int:
    """FLOPs of one attention backward as torch counts it: the scores recomputed (``q @ k^T``), then the
    gradients of the scores, of ``v``, of ``q`` and of ``k``: ``2 * b * h * Lq * Lk * (3 * Dq + 2 * Dv)``."""
    *batch, lq, dq = query_shape
    lk, dv = key_shape[-2], value_shape[-1]
    bh = 1
    for n in batch:
        bh *= n
    return 2 * bh * lq * lk * (3 * dq + 2 * dv)


def _forward_formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flops(query_shape, key_shape, value_shape)


def _backward_formula(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flops(query_shape, key_shape, value_shape)


def register_sdpa_flop_formulas() -> List[str]:
    """Give every SDPA kernel of the installed torch that ``torch.utils.flop_counter`` cannot count a formula.

    Idempotent; kernels that already have one (torch's own, or registered before) are left alone. Counters
    created afterwards use the formulas (a ``FlopCounterMode`` copies the registry when it is constructed).

    Returns:
        The names of the kernels registered by this call.
    """
    registered = []
    for names, formula in ((_SDPA_FORWARD, _forward_formula), (_SDPA_BACKWARD, _backward_formula)):
        for name in names:
            op = getattr(torch.ops.aten, name, None)
            if op is None or op in flop_registry:
                continue
            register_flop_formula(op)(formula)
            registered.append(name)
    return registered


register_sdpa_flop_formulas()


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of ``model`` on a zero tensor of ``input_shape``, in eval mode."""
    was_training = model.training
    model.eval()
    param = next(model.parameters(), torch.empty(0))
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
    param = next(model.parameters(), torch.empty(0))
    try:
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
            x = torch.zeros(*input_shape, device=param.device, dtype=param.dtype)
            with FlopCounterMode(display=False) as counter:
                model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops()
