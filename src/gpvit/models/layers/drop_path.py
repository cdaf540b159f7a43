"""Stochastic depth on a residual branch, added in the same pass.

timm's ``x + DropPath(p)(branch)`` runs two elementwise passes over the activation in training (the per-sample
mask multiply into a temporary of the activation's size, then the residual add). :class:`DropPathAdd` computes
the same ``x + branch * mask / keep`` as one ``torch.addcmul``; its backward is the same single masked
multiply. It draws the mask exactly as timm's ``drop_path`` does (same shape, same ``bernoulli_`` call), so a
seeded run drops the same samples. A block with a layer scale (timm's ``LayerScale``, ``branch * gamma``) passes
``gamma`` along and it joins the per-sample factor, a ``(B, 1, .., C)`` tensor: one pass where timm's
``LayerScale``, ``DropPath`` and add take three.
"""
from typing import Optional

import torch
from torch import nn

__all__ = ['DropPathAdd']


class DropPathAdd(nn.Module):
    """``x + DropPath(drop_prob)(branch * scale)``: the residual add of a block whose branch has stochastic depth
    and, optionally, a layer scale.

    In training each sample's branch is kept with probability ``1 - drop_prob`` and, with ``scale_by_keep``,
    scaled by ``1 / (1 - drop_prob)``; in eval mode (or at ``drop_prob`` 0) it is ``x + branch * scale``.
    ``x``, ``branch``: ``(B, ..., C)`` of one shape; ``scale``: ``(C,)`` or None -> ``(B, ..., C)``.
    """

    def __init__(self, drop_prob: float = 0., scale_by_keep: bool = True):
        super().__init__()
        if not 0. <= drop_prob <= 1.:
            raise ValueError(f'DropPathAdd: drop_prob must lie in [0, 1], got {drop_prob}')
        self.drop_prob = float(drop_prob)
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor, branch: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.drop_prob == 0. or not self.training:
            return x + branch if scale is None else torch.addcmul(x, branch, scale)
        keep = 1. - self.drop_prob
        mask = branch.new_empty((branch.shape[0],) + (1,) * (branch.ndim - 1)).bernoulli_(keep)
        if keep > 0. and self.scale_by_keep:
            mask.div_(keep)
        return torch.addcmul(x, branch, mask if scale is None else mask * scale)

    def extra_repr(self) -> str:
        return f'drop_prob={round(self.drop_prob, 3):0.3f}'
