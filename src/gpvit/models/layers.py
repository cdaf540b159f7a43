"""Building blocks shared by the GPViT and GC ViT families.

Both families are built from the same few pieces: multi-head attention whose inner product runs in
``torch.nn.functional.scaled_dot_product_attention`` (optionally with an additive bias such as a
relative-position table, or a boolean key mask), timm's ``Mlp`` and ``DropPath``, and checks on the
input image. Everything here works on channels-last token tensors ``(..., L, C)``.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp as _TimmMlp
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = ['is_tracing', 'split_heads', 'merge_heads', 'attention', 'window_partition', 'window_reverse', 'pad_amount', 'Mlp',
           'check_image_input']


def is_tracing() -> bool:
    """True under ``torch.export``, ``torch.compile`` and TorchScript tracing: eager-only fast paths step aside."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    exporting = getattr(torch.compiler, 'is_exporting', lambda: False)()  # torch >= 2.5
    return exporting or torch.compiler.is_compiling()


def _autocast_on_cpu() -> bool:
    try:
        return torch.is_autocast_enabled('cpu')
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled()


class Mlp(_TimmMlp):
    """timm's ``Mlp`` (fc1 -> act -> fc2), with a fused CPU inference path.

    In float32 CPU inference with the exact (erf) GELU, fc1, its bias and the GELU run as one oneDNN GEMM with
    a fused epilogue (``mkldnn._linear_pointwise``). It computes the same numbers, and saves the two passes
    over the ``4C``-wide hidden activations that the separate bias broadcast and GELU cost: about 1.5x faster
    for that pair at GPViT's sizes. Training, other devices and dtypes, autocast, export, compile and dispatch
    modes (FLOP counters, fake tensors) take timm's path; so does everything if the PyTorch build lacks the op.
    """
    _fused_available = True

    def _fusable(self, x: torch.Tensor) -> bool:
        return (Mlp._fused_available and x.device.type == 'cpu' and x.dtype == torch.float32
                and type(self.act) is nn.GELU and self.act.approximate == 'none' and self.fc1.bias is not None
                and not (torch.is_grad_enabled() and (x.requires_grad or self.fc1.weight.requires_grad))
                and not _autocast_on_cpu() and not is_tracing()
                # FLOP counters, fake-tensor and other dispatch modes see the standard ops
                and _get_current_dispatch_mode() is None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fusable(x):
            try:
                h = torch.ops.mkldnn._linear_pointwise(
                    x.reshape(-1, x.shape[-1]), self.fc1.weight, self.fc1.bias, 'gelu', [], 'none')
            except (RuntimeError, AttributeError, NotImplementedError):
                Mlp._fused_available = False  # not in this build: timm's path from now on
            else:
                h = h.view(*x.shape[:-1], h.shape[-1])
                return self.drop2(self.fc2(self.norm(self.drop1(h))))
        return super().forward(x)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(B, L, C)`` -> ``(B, num_heads, L, C // num_heads)``; heads are contiguous channel chunks."""
    B, L, C = x.shape
    return x.view(B, L, num_heads, C // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, num_heads, L, D)`` -> ``(B, L, num_heads * D)``, the inverse of :func:`split_heads`."""
    B, H, L, D = x.shape
    return x.transpose(1, 2).reshape(B, L, H * D)


def attention(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        num_heads: int,
        scale: Optional[float] = None,
        attn_mask: Optional[torch.Tensor] = None,
        dropout_p: float = 0.,
) -> torch.Tensor:
    """Multi-head attention on token tensors.

    Args:
        q: ``(B, Lq, C)`` queries, or ``(1, Lq, C)`` shared by the whole batch (broadcast, never copied).
        k: ``(B, Lk, C)`` keys.
        v: ``(B, Lk, Cv)`` values; ``Cv`` may differ from ``C``.
        num_heads: heads; each takes a contiguous chunk of ``C // num_heads`` channels.
        scale: logit scale, ``(C // num_heads) ** -0.5`` when None.
        attn_mask: boolean (True = attend) or additive float mask broadcastable to
            ``(B, num_heads, Lq, Lk)``, e.g. a relative-position bias.
        dropout_p: attention dropout (training only).

    Returns:
        ``(B, Lq, Cv)``: the heads concatenated, before any output projection.
    """
    qh = split_heads(q, num_heads)
    if qh.shape[0] != k.shape[0]:
        qh = qh.expand(k.shape[0], -1, -1, -1)
    out = F.scaled_dot_product_attention(
        qh, split_heads(k, num_heads), split_heads(v, num_heads),
        attn_mask=attn_mask, dropout_p=dropout_p, scale=scale,
    )
    return merge_heads(out)


def pad_amount(size, multiple: int):
    """How much to add to ``size`` to reach a multiple of ``multiple``.

    Written with floor division rather than ``%``: symbolic sizes under ``torch.compile(dynamic=True)`` and
    ONNX export trace floor division cleanly, the modulo of a negative number less so.
    """
    return (size + multiple - 1) // multiple * multiple - size


def window_partition(x: torch.Tensor, window_size: Tuple[int, int]) -> torch.Tensor:
    """``(B, H, W, *rest)`` -> ``(B * nW, wh, ww, *rest)``, windows in row-major order, batch-major.

    ``H`` and ``W`` must be multiples of the window. Unlike timm's Swin helper this keeps any trailing
    dimensions (e.g. a q/k/v axis) and accepts non-contiguous input.
    """
    B, H, W = x.shape[:3]
    rest = x.shape[3:]
    wh, ww = window_size
    x = x.reshape(B, H // wh, wh, W // ww, ww, *rest).transpose(2, 3)
    return x.reshape(B * (H // wh) * (W // ww), wh, ww, *rest)


def window_reverse(windows: torch.Tensor, window_size: Tuple[int, int], size: Tuple[int, int]) -> torch.Tensor:
    """``(B * nW, wh, ww, *rest)`` -> ``(B, H, W, *rest)``, the inverse of :func:`window_partition`."""
    wh, ww = window_size
    H, W = size
    rest = windows.shape[3:]
    x = windows.reshape(-1, H // wh, W // ww, wh, ww, *rest).transpose(2, 3)
    return x.reshape(-1, H, W, *rest)


def check_image_input(x: torch.Tensor, in_chans: int, min_size: int, model_name: str) -> Tuple[int, int]:
    """Validate an image batch and return its ``(H, W)``.

    Raises a ``ValueError`` naming what was expected, instead of the shape error some reshape deep
    inside the model would raise.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{model_name} expects a torch.Tensor image batch, got {type(x).__name__}')
    if x.ndim != 4:
        raise ValueError(
            f'{model_name} expects a 4-D image batch (B, {in_chans}, H, W), got a {x.ndim}-D tensor of shape '
            f'{tuple(x.shape)}')
    if x.shape[1] != in_chans:
        raise ValueError(
            f'{model_name} expects {in_chans} input channels (B, {in_chans}, H, W), got shape {tuple(x.shape)}'
            + (' (channels-last input? use x.permute(0, 3, 1, 2))' if x.shape[-1] == in_chans else ''))
    H, W = x.shape[-2:]
    if H < min_size or W < min_size:
        raise ValueError(
            f'{model_name} needs images of at least {min_size}x{min_size} pixels, got {H}x{W}')
    return H, W
