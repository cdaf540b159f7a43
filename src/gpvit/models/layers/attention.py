"""Multi-head attention on channels-last token tensors ``(B, L, C)``, computed by ``scaled_dot_product_attention``."""
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
    qh = split_heads(q, num_heads).expand(k.shape[0], -1, -1, -1)  # a view; the identity when q has k's batch
    out = F.scaled_dot_product_attention(
        qh, split_heads(k, num_heads), split_heads(v, num_heads),
        attn_mask=attn_mask, dropout_p=dropout_p, scale=scale,
    )
    return merge_heads(out)
