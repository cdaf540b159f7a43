"""Multi-head attention on channels-last token tensors ``(B, L, C)``, computed by ``scaled_dot_product_attention``
(written out for a learned bias on the CPU, see :func:`_attention_learned_bias`; in float32 for half-precision
training on the CPU, see :func:`_float32_on_cpu`)."""
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ['split_heads', 'merge_heads', 'attention']


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(B, L, C)`` -> ``(B, num_heads, L, C // num_heads)``; heads are contiguous channel chunks."""
    return x.unflatten(-1, [num_heads, -1]).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, num_heads, L, D)`` -> ``(B, L, num_heads * D)``, the inverse of :func:`split_heads`."""
    return x.transpose(1, 2).flatten(2)


def _learned_bias_on_cpu(q: torch.Tensor, attn_mask: torch.Tensor, dropout_p: float) -> bool:
    """Whether :func:`_attention_learned_bias` applies: a float mask that autograd will differentiate, on the
    CPU, without dropout. FX symbolic tracing records SDPA (its proxies cannot steer control flow)."""
    if not torch.jit.is_scripting():
        if isinstance(attn_mask, torch.fx.Proxy):
            return False
    return (attn_mask.is_floating_point() and attn_mask.requires_grad and torch.is_grad_enabled()
            and q.device.type == 'cpu' and dropout_p == 0.)


def _float32_on_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether SDPA runs in float32 for bfloat16 / float16 inputs: under autograd, on the CPU.

    PyTorch's CPU flash kernel is slow to differentiate in half precision at short sequences: forward + backward
    of one branch of GPViT-L1's stripe attention at 224x224, batch 8 (q ``(112, 6, 56, 18)``, 2 threads, torch
    2.14) takes 70 ms in bfloat16 against 12.5 in float32; at 112-token stripes 265-320 against 58, at 196
    tokens 141 against 76, at 784 153 against 128, and float16 is as slow (289 against 71 ms at 112 tokens).
    Its forward alone is as fast or faster in bfloat16 (12 against 15-18 ms at 112 tokens), so inference keeps
    the half type. Under bf16 autocast this backward was half of GPViT-L1's training step. CUDA's kernels are
    fast in half precision and are left alone. (Never compiled by TorchScript: :func:`attention` asks only
    outside it.)
    """
    if isinstance(q, torch.fx.Proxy):  # FX symbolic tracing records SDPA
        return False
    return (q.device.type == 'cpu' and q.dtype in (torch.bfloat16, torch.float16) and torch.is_grad_enabled()
            and (q.requires_grad or k.requires_grad or v.requires_grad))


def _sdpa_float32(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: Optional[torch.Tensor],
        dropout_p: float,
        scale: Optional[float],
) -> torch.Tensor:
    """SDPA on float32 copies of ``(B, heads, L, D)`` q, k, v (and a float mask), outside autocast; the result in
    q's dtype. Autograd casts the gradients back."""
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask.float()
    with torch.autocast('cpu', enabled=False):
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask,
                                             dropout_p=dropout_p, scale=scale)
    return out.to(q.dtype)


def _attention_learned_bias(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        num_heads: int,
        scale: Optional[float],
        bias: torch.Tensor,
) -> torch.Tensor:
    """``softmax(q k^T * scale + bias) v`` written out, for an additive bias that needs a gradient, on the CPU.

    PyTorch's CPU flash kernel has no gradient for the mask, so ``scaled_dot_product_attention`` falls back to
    its math path there, which adds "safe softmax" passes over the logits (``isneginf``, ``all``, ``where``: a
    row of -inf gives zeros rather than NaN) and scales both q and k. A finite bias cannot mask a whole row, so
    the plain computation is the same function with fewer passes (GC ViT's training step: 3-4 % faster). CUDA
    keeps SDPA, whose memory-efficient kernel computes the bias gradient itself.
    """
    qh = split_heads(q, num_heads)
    if scale is None:
        scale = qh.shape[-1] ** -0.5
    logits = (qh * scale) @ split_heads(k, num_heads).transpose(-2, -1) + bias
    return merge_heads(logits.softmax(dim=-1) @ split_heads(v, num_heads))


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
            ``(B, num_heads, Lq, Lk)``, e.g. a relative-position bias (finite where it needs a gradient).
        dropout_p: attention dropout (training only).

    Returns:
        ``(B, Lq, Cv)``: the heads concatenated, before any output projection.
    """
    if attn_mask is not None and _learned_bias_on_cpu(q, attn_mask, dropout_p):
        return _attention_learned_bias(q, k, v, num_heads, scale, attn_mask)
    qh = split_heads(q, num_heads).expand(k.shape[0], -1, -1, -1)  # a view; the identity when q has k's batch
    kh, vh = split_heads(k, num_heads), split_heads(v, num_heads)
    if not torch.jit.is_scripting():
        if _float32_on_cpu(q, k, v):
            return merge_heads(_sdpa_float32(qh, kh, vh, attn_mask, dropout_p, scale))
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    return merge_heads(out)
