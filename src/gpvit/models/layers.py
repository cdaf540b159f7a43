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

__all__ = ['is_tracing', 'fused_linear', 'split_heads', 'merge_heads', 'attention', 'window_partition',
           'window_reverse', 'pad_amount', 'Mlp', 'check_image_input']


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


class _OneDNN:
    """Whether this PyTorch build runs ``mkldnn._linear_pointwise``; cleared on the first failure."""
    available = True


def _onednn_eligible(x: torch.Tensor, fc: nn.Linear) -> bool:
    """The eager CPU float32 inference case, where fused oneDNN GEMMs may replace the standard ops."""
    return (_OneDNN.available and x.device.type == 'cpu' and x.dtype == torch.float32
            and fc.weight.dtype == torch.float32 and fc.weight.device.type == 'cpu'
            and not (torch.is_grad_enabled() and (x.requires_grad or fc.weight.requires_grad))
            and not _autocast_on_cpu() and not is_tracing()
            # FLOP counters, fake-tensor and other dispatch modes see the standard ops
            and _get_current_dispatch_mode() is None)


def fused_linear(
        x: torch.Tensor,
        fc: nn.Linear,
        gelu: bool = False,
        residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``fc(x)``, then an exact GELU if ``gelu``, then ``+ residual``: in CPU float32 inference, one GEMM.

    The bias, the GELU and the residual add run in the epilogue of a oneDNN GEMM (``mkldnn._linear_pointwise``)
    instead of as separate passes over the output; the numbers are the same. PyTorch's ``addmm`` copies the
    broadcast bias into the output before the GEMM, and the GELU and the residual add each read and write the
    whole output again: at GPViT's sizes these passes cost up to a third of the GEMM. Training, other
    devices and dtypes, autocast, export, compile and dispatch modes (FLOP counters, fake tensors) take the
    standard ops; so does everything if the build lacks the op.

    Args:
        x: ``(..., in_features)``.
        fc: the Linear layer.
        gelu: apply the exact (erf) GELU to ``fc(x)``; cannot be combined with ``residual``.
        residual: ``(..., out_features)`` added to the result.
    """
    if gelu and residual is not None:
        raise ValueError('fused_linear: gelu and residual cannot be combined')
    if _onednn_eligible(x, fc) and (residual is None or residual.dtype == torch.float32):
        out_shape = (*x.shape[:-1], fc.out_features)
        x2d = x.reshape(-1, fc.in_features)  # shape errors surface here, outside the try
        res2d = None if residual is None else residual.expand(out_shape).reshape(-1, fc.out_features)
        try:
            if res2d is None:
                y = torch.ops.mkldnn._linear_pointwise(x2d, fc.weight, fc.bias, 'gelu' if gelu else 'none', [], 'none')
            else:
                y = torch.ops.mkldnn._linear_pointwise.binary(x2d, res2d, fc.weight, fc.bias, 'add')
        except (RuntimeError, AttributeError, NotImplementedError):
            _OneDNN.available = False  # not in this build: the standard ops from now on
        else:
            return y.view(out_shape)
    y = fc(x)
    if gelu:
        y = F.gelu(y)
    return y if residual is None else residual + y


class Mlp(_TimmMlp):
    """timm's ``Mlp`` (fc1 -> act -> fc2), with a fused CPU inference path and an optional residual.

    ``forward(x, residual)`` returns ``residual + mlp(x)``. In float32 CPU inference with the exact GELU and no
    dropout or norm in between, fc1 + bias + GELU and fc2 + bias + residual each run as one oneDNN GEMM
    (:func:`fused_linear`): 1.05x-1.4x faster than timm's path at GPViT's sizes, most where every fresh ``4C``-wide
    activation costs page faults (glibc's default malloc, large inputs). Everything else takes timm's path.
    """

    def _fusable(self) -> bool:
        """fc1 -> exact GELU -> fc2 with nothing in between (eval: dropout is the identity); :func:`fused_linear`
        decides per call whether the fused GEMMs may run, and falls back to the same plain ops otherwise."""
        return (type(self.act) is nn.GELU and self.act.approximate == 'none' and isinstance(self.norm, nn.Identity)
                and not self.training)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self._fusable():
            return fused_linear(fused_linear(x, self.fc1, gelu=True), self.fc2, residual=residual)
        y = super().forward(x)
        return y if residual is None else residual + y


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
