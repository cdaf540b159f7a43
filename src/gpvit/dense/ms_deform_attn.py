"""Multi-scale deformable attention (Deformable DETR; the ViT-Adapter's injector and extractor) in pure PyTorch.

Each query attends to a few sampled points per head and per feature level: the points sit at the query's
reference point plus learned offsets, their values are read by bilinear interpolation, and a softmax over all
``levels x points`` weights them. The reference implementations need a compiled CUDA op
(``MultiScaleDeformableAttnFunction``) that often fails to build; here the sampling is
:func:`torch.nn.functional.grid_sample` (bilinear, zero padding, ``align_corners=False``) at ``2 * loc - 1``,
which computes the same thing on every device, with autograd, mixed precision and ``torch.compile``.

Shapes: ``N`` batch, ``Lq`` queries, ``L`` levels, ``P`` points, ``M`` heads, ``D`` channels per head;
the multi-level feature is flattened level after level into ``(N, sum(H_l * W_l), C)``.
"""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['MSDeformAttn', 'ms_deform_attn_sample', 'level_start_index']


def level_start_index(spatial_shapes: torch.Tensor) -> torch.Tensor:
    """Offsets of each level in the flattened feature: ``[0, H0*W0, H0*W0 + H1*W1, ...]`` (one per level)."""
    areas = spatial_shapes.prod(1)
    return torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])


def ms_deform_attn_sample(
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The core of multi-scale deformable attention: sample, weight and sum.

    Args:
        value: ``(N, S, M, D)``, the projected values of all levels (``S = sum(H_l * W_l)``).
        spatial_shapes: ``(L, 2)`` integer ``(H_l, W_l)`` of each level.
        sampling_locations: ``(N, Lq, M, L, P, 2)`` points as ``(x, y)`` in ``[0, 1]`` of each level's map
            (0 and 1 are the outer edges of the border pixels; outside samples read zeros).
        attention_weights: ``(N, Lq, M, L, P)``, normalised over ``L x P`` by the caller.

    Returns:
        ``(N, Lq, M * D)``.
    """
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    if sum(sizes) != S:
        raise ValueError(f'value has {S} positions, spatial_shapes {spatial_shapes.tolist()} cover {sum(sizes)}')
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] with align_corners=False
    sampled = []
    for lvl, v in enumerate(value.split(sizes, dim=1)):
        H, W = (int(s) for s in spatial_shapes[lvl].tolist())
        v = v.permute(0, 2, 3, 1).reshape(N * M, D, H, W)  # (N*M, D, H, W)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(N * M, Lq, P, 2)  # (N*M, Lq, P, 2)
        sampled.append(F.grid_sample(v, g.to(v.dtype), mode='bilinear', padding_mode='zeros', align_corners=False))
    out = torch.stack(sampled, dim=-2).flatten(-2)  # (N*M, D, Lq, L*P)
    w = attention_weights.transpose(1, 2).reshape(N * M, 1, Lq, L * P).to(out.dtype)
    out = (out * w).sum(-1)  # (N*M, D, Lq)
    return out.view(N, M * D, Lq).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with the Deformable DETR / ViT-Adapter parameterisation and init.

    Queries ``(N, Lq, C)`` with reference points ``(N, Lq, L, 2)`` (``(x, y)`` in ``[0, 1]``) attend to a
    flattened multi-level feature ``(N, S, C)``. Values are projected to ``C * ratio`` channels (split over
    the heads) and the output is projected back to ``C``.
    """

    def __init__(self, dim: int = 256, num_levels: int = 4, num_heads: int = 8, num_points: int = 4,
                 ratio: float = 1.0):
        """
        Args:
            dim: query and feature width C.
            num_levels: feature levels L.
            num_heads: heads M; ``int(dim * ratio)`` must be divisible by it.
            num_points: sampled points per head and level P.
            ratio: value width / C (the ViT-Adapter's ``deform_ratio``).
        """
        super().__init__()
        value_dim = int(dim * ratio)
        if value_dim % num_heads:
            raise ValueError(f'value width {value_dim} (dim {dim} x ratio {ratio}) is not divisible by '
                             f'num_heads {num_heads}')
        self.dim, self.num_levels, self.num_heads, self.num_points = dim, num_levels, num_heads, num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, value_dim)
        self.output_proj = nn.Linear(value_dim, dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Reference init: offsets start on a radial grid (head h points along angle ``2*pi*h/M``, point p at
        distance ``p + 1`` pixels of each level), uniform attention weights, Xavier projections."""
        M, L, P = self.num_heads, self.num_levels, self.num_points
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(M, dtype=torch.float32) * (2.0 * math.pi / M)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(M, 1, 1, 2).repeat(1, L, P, 1)
        grid = grid * torch.arange(1, P + 1, dtype=torch.float32).view(1, 1, P, 1)
        self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
            self,
            query: torch.Tensor,
            reference_points: torch.Tensor,
            feature: torch.Tensor,
            spatial_shapes: torch.Tensor,
            padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            query: ``(N, Lq, C)``.
            reference_points: ``(N, Lq, L, 2)`` as ``(x, y)`` in ``[0, 1]`` per level.
            feature: ``(N, S, C)``, the levels flattened row-major one after the other.
            spatial_shapes: ``(L, 2)`` integer ``(H_l, W_l)``.
            padding_mask: optional ``(N, S)``, True where the feature is padding (its value is zeroed).

        Returns:
            ``(N, Lq, C)``.
        """
        N, Lq, _ = query.shape
        M, L, P = self.num_heads, self.num_levels, self.num_points
        if spatial_shapes.shape[0] != L or reference_points.shape[2] != L:
            raise ValueError(f'expected {L} levels, got spatial_shapes {tuple(spatial_shapes.shape)} and '
                             f'reference_points {tuple(reference_points.shape)}')
        value = self.value_proj(feature)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.)
        value = value.view(N, feature.shape[1], M, -1)
        offsets = self.sampling_offsets(query).view(N, Lq, M, L, P, 2)
        weights = self.attention_weights(query).view(N, Lq, M, L * P).softmax(-1).view(N, Lq, M, L, P)
        # Offsets are in pixels of each level: normalise by (W_l, H_l).
        normaliser = spatial_shapes.flip(-1).to(offsets.dtype)  # (L, 2) as (W, H)
        locations = reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        out = ms_deform_attn_sample(value, spatial_shapes, locations, weights)
        return self.output_proj(out)
