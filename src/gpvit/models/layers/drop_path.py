"""Stochastic depth on a residual branch, added in the same pass, and computed only for the samples it keeps.

timm's ``x + DropPath(p)(branch)`` runs two elementwise passes over the activation in training (the per-sample
mask multiply into a temporary of the activation's size, then the residual add). :class:`DropPathAdd` computes
the same ``x + branch * mask / keep`` as one ``torch.addcmul``; its backward is the same single masked
multiply. It draws the mask as timm's ``drop_path`` does (same shape, same ``bernoulli_`` call), so a seeded
run drops the same samples; in the residual stream's dtype (timm: the branch's, which rounds ``1 / keep`` to
bfloat16 under autocast). A block with a layer scale (timm's ``LayerScale``, ``branch * gamma``) passes
``gamma`` along and it joins the per-sample factor, a ``(B, 1, .., C)`` tensor: one pass where timm's
``LayerScale``, ``DropPath`` and add take three.

timm (and the reference code) still compute the branch of every dropped sample, forward and backward, and
multiply it by zero. :meth:`DropPathAdd.add_branch` draws the mask first and runs the branch on the kept samples
alone: the same function, with on average ``drop_prob`` of the branch's work left undone (the recipes' drop-path
rates of 0.2-0.3, linear over depth, leave 10-15 % of the blocks' work undone on average).
:meth:`DropPathAdd.drop_branch` does the same for a branch that is dropped but not added (``DropPath(branch)``
alone, :meth:`DropPathAdd.drop`).
"""
from typing import Callable, Optional, Tuple

import torch
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .tracing import is_tracing

__all__ = ['DropPathAdd']


class DropPathAdd(nn.Module):
    """``x + DropPath(drop_prob)(branch * scale)``: the residual add of a block whose branch has stochastic depth
    and, optionally, a layer scale.

    In training each sample's branch is kept with probability ``1 - drop_prob`` and, with ``scale_by_keep``,
    scaled by ``1 / (1 - drop_prob)``; in eval mode (or at ``drop_prob`` 0) it is ``x + branch * scale``.
    ``x``, ``branch``: ``(B, ..., C)`` of one shape; ``scale``: ``(C,)`` or None -> ``(B, ..., C)``.
    """

    #: Whether :meth:`add_branch` computes the branch for the kept samples only (False: for every sample, then
    #: multiplied by the mask, as timm does; for comparisons).
    skip_dropped: bool = True

    def __init__(self, drop_prob: float = 0., scale_by_keep: bool = True):
        super().__init__()
        if not 0. <= drop_prob <= 1.:
            raise ValueError(f'DropPathAdd: drop_prob must lie in [0, 1], got {drop_prob}')
        self.drop_prob = float(drop_prob)
        self.scale_by_keep = scale_by_keep

    def _mask(self, x: torch.Tensor) -> torch.Tensor:
        """This step's per-sample factors ``(B, 1, .., 1)``: 0 or ``1 / keep`` (timm's ``drop_path`` draw)."""
        keep = 1. - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        if keep > 0. and self.scale_by_keep:
            mask.div_(keep)
        return mask

    def forward(self, x: torch.Tensor, branch: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.drop_prob == 0. or not self.training:
            return x + branch if scale is None else torch.addcmul(x, branch, scale)
        return _masked_add(x, branch, self._mask(x), scale)

    def drop(self, branch: torch.Tensor) -> torch.Tensor:
        """``DropPath(drop_prob)(branch)`` alone, for a branch that is not added to a residual stream (GPViT's
        ungrouping output is concatenated): ``branch * mask`` in training, ``branch`` otherwise."""
        if self.drop_prob == 0. or not self.training:
            return branch
        return branch * self._mask(branch)

    @torch.jit.unused
    def _skips(self, x: torch.Tensor) -> bool:
        """Whether :meth:`add_branch` leaves the dropped samples' branch undone for this input: eager training
        with ``drop_prob > 0``, and no tracing, compiling, export or dispatch mode (FLOP counters, fake tensors),
        which see the whole batch as timm computes it. Off the CPU not under deterministic algorithms either
        (``index_add`` has no deterministic CUDA kernel)."""
        return (self.skip_dropped and self.training and self.drop_prob > 0.
                and not isinstance(x, torch.fx.Proxy) and not is_tracing()
                and _get_current_dispatch_mode() is None
                and (x.device.type == 'cpu' or not torch.are_deterministic_algorithms_enabled()))

    @torch.jit.unused
    def _kept(self, mask: torch.Tensor) -> Tuple[torch.Tensor, float]:
        """The kept samples' indices and their factor, ``1 / keep``, as ``index_add``'s alpha (no pass over the
        branch to scale it). None kept: the first sample, times 0, so that every parameter still gets a
        gradient."""
        kept = mask.view(-1).nonzero().view(-1)
        if kept.numel() == 0:
            return kept.new_zeros(1), 0.
        return kept, 1. / (1. - self.drop_prob) if self.scale_by_keep else 1.

    @torch.jit.unused
    def add_branch(
            self,
            branch_fn: Callable[..., torch.Tensor],
            x: torch.Tensor,
            *args: torch.Tensor,
            scale: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``self(x, branch_fn(x, *args), scale)``, with the branch computed for the kept samples only.

        Where :meth:`_skips` holds, the mask is drawn first (the same draw as :meth:`forward`; the same samples
        are dropped when the branch draws no random numbers itself, i.e. without dropout) and ``branch_fn`` runs
        on the kept samples of ``x`` and of ``args`` (tensors with the same batch dimension first, taken alike);
        ``index_add`` adds their results back, and its backward passes the gradient back to those samples only.
        The same function and gradients, without the dropped samples' share of the work. If every sample is
        kept, the whole batch runs as in :meth:`forward`; if none is, the first sample runs and is added times 0,
        so that every parameter still gets a gradient (zeros, as :meth:`forward` gives them; DDP expects one).

        ``branch_fn`` must treat the samples independently (no batch statistics): ``(B', ...)`` -> ``(B', ..., C)``
        for any ``B'``.
        """
        if not self._skips(x):
            return self(x, branch_fn(x, *args), scale)
        mask = self._mask(x)
        kept, alpha = self._kept(mask)
        if kept.numel() == x.shape[0]:
            return _masked_add(x, branch_fn(x, *args), mask, scale)
        branch = branch_fn(x.index_select(0, kept), *[a.index_select(0, kept) for a in args])
        if scale is not None:  # the factor joins the layer scale (0 where none is kept)
            branch = branch * (mask.index_select(0, kept) * scale)
            alpha = 1.
        # the dtype addcmul would give: under autocast a bfloat16 branch may meet a float32 stream (CUDA's
        # LayerNorm gives float32) or a float32 layer scale a bfloat16 stream (the CPU's)
        dtype = torch.promote_types(x.dtype, branch.dtype)
        return x.to(dtype).index_add(0, kept, branch.to(dtype), alpha=alpha)

    @torch.jit.unused
    def drop_branch(self, branch_fn: Callable[..., torch.Tensor], x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        """``self.drop(branch_fn(x, *args))``, with the branch computed for the kept samples only.

        As :meth:`add_branch` (the same conditions, mask draw and fallbacks), for a branch whose result is not
        added to ``x``: the kept samples' results are placed into zeros with ``index_add`` (times ``1 / keep``),
        the dropped samples' rows stay zero. ``x`` and ``args``: ``(B, ...)``; the result ``(B, ...)`` must
        have as many dimensions as ``x``.
        """
        if not self._skips(x):
            return self.drop(branch_fn(x, *args))
        mask = self._mask(x)
        kept, alpha = self._kept(mask)
        if kept.numel() == x.shape[0]:
            branch = branch_fn(x, *args)
            return branch * mask.to(branch.dtype)
        branch = branch_fn(x.index_select(0, kept), *[a.index_select(0, kept) for a in args])
        return branch.new_zeros((x.shape[0],) + branch.shape[1:]).index_add(0, kept, branch, alpha=alpha)

    def extra_repr(self) -> str:
        return f'drop_prob={round(self.drop_prob, 3):0.3f}'


def _masked_add(x: torch.Tensor, branch: torch.Tensor, mask: torch.Tensor,
                scale: Optional[torch.Tensor]) -> torch.Tensor:
    """``x + branch * mask (* scale)`` in one ``addcmul``."""
    return torch.addcmul(x, branch, mask if scale is None else mask * scale)
