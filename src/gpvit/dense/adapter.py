"""ViT-Adapter for GPViT: a multi-scale feature pyramid (strides 4/8/16/32) around the plain stride-8 GPViT.

Written from the ViT-Adapter paper (Chen et al., ICLR 2023) and the GPViT detection settings (gpvit.md 6.1):

* a **spatial prior module** (SPM), a small conv stem, gives maps c1..c4 at strides 4, 8, 16, 32; c2..c4 are
  projected to the GPViT width C, get a learned level embedding and are flattened into one token sequence;
* four **interactions**, each over three GPViT blocks ([0-2], [3-5], [6-8], [9-11]):

  1. injector: GPViT tokens (stride 8) query the SPM tokens with 3-level deformable attention; the result is
     added scaled by a per-channel gamma that starts at 0, so the pretrained GPViT is untouched at the start;
  2. the three GPViT blocks;
  3. extractor: SPM tokens query the GPViT tokens with 1-level deformable attention, then a ConvFFN (hidden
     C/4, a depthwise 3x3 conv on each level's map); the last interaction has two extra extractors;

* **outputs**: s4 = ConvTranspose(c2) + c1 + 2x up(x), s8 = c2 + x, s16 = c3 + down2(x), s32 = c4 + down4(x),
  where x is the final GPViT map (after the last interaction; bilinear resampling), each through a BatchNorm
  (``model.sync_bn`` makes them SyncBatchNorm). RetinaNet uses s8..s32 only (``with_s4=False``).

Deformable attention is the pure-PyTorch :class:`~gpvit.dense.ms_deform_attn.MSDeformAttn` (6 heads, 4 points).
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_

from .ms_deform_attn import MSDeformAttn

__all__ = ['GPViTAdapter', 'SpatialPriorModule', 'Injector', 'Extractor', 'ConvFFN', 'reference_points']


def reference_points(shapes: Sequence[Tuple[int, int]], device: torch.device) -> torch.Tensor:
    """Pixel centres of each level's grid, normalised to [0, 1], concatenated: ``(1, sum(H*W), 2)`` as (x, y)."""
    pts = []
    for H, W in shapes:
        ys, xs = torch.meshgrid(torch.linspace(0.5, H - 0.5, H, device=device) / H,
                                torch.linspace(0.5, W - 0.5, W, device=device) / W, indexing='ij')
        pts.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))
    return torch.cat(pts, 0)[None]


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> List[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SpatialPriorModule(nn.Module):
    """Conv stem: c1 (stride 4, ``inplanes``), c2 (8, 2x), c3 (16, 4x), c4 (32, 4x), each projected to ``dim``."""

    def __init__(self, inplanes: int = 64, dim: int = 384, with_c1: bool = True):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(3, inplanes, 2), *_conv_bn_relu(inplanes, inplanes),
                                  *_conv_bn_relu(inplanes, inplanes), nn.MaxPool2d(3, 2, 1))
        self.conv2 = nn.Sequential(*_conv_bn_relu(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*_conv_bn_relu(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*_conv_bn_relu(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, dim, 1) if with_c1 else None
        self.fc2 = nn.Conv2d(2 * inplanes, dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, dim, 1)

    def forward(self, x: torch.Tensor) -> Tuple[Optional[torch.Tensor], List[torch.Tensor]]:
        """Returns ``c1`` (``(B, dim, H/4, W/4)`` or None) and ``[c2, c3, c4]`` as ``(B, dim, h, w)`` maps."""
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return (self.fc1(c1) if self.fc1 is not None else None), [self.fc2(c2), self.fc3(c3), self.fc4(c4)]


class ConvFFN(nn.Module):
    """Linear -> depthwise 3x3 conv on each level's map -> GELU -> Linear, on a multi-level token sequence."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, shapes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        x = self.fc1(x)
        B, _, C = x.shape
        parts = []
        for t, (H, W) in zip(x.split([h * w for h, w in shapes], dim=1), shapes):
            parts.append(self.dwconv(t.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2))
        x = self.drop(self.act(torch.cat(parts, dim=1)))
        return self.drop(self.fc2(x))


class Injector(nn.Module):
    """Backbone tokens += gamma * DeformAttn(LN(tokens), LN(SPM tokens)); gamma starts at ``init_values``."""

    def __init__(self, dim: int, num_heads: int = 6, num_points: int = 4, num_levels: int = 3,
                 deform_ratio: float = 1.0, init_values: float = 0.):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MSDeformAttn(dim, num_levels, num_heads, num_points, deform_ratio)
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, query, ref, feat, shapes) -> torch.Tensor:
        return query + self.gamma * self.attn(self.query_norm(query), ref, self.feat_norm(feat), shapes)


class Extractor(nn.Module):
    """SPM tokens += DeformAttn(LN(SPM tokens), LN(backbone tokens)); then += ConvFFN(LN(.))."""

    def __init__(self, dim: int, num_heads: int = 6, num_points: int = 4, deform_ratio: float = 1.0,
                 with_cffn: bool = True, cffn_ratio: float = 0.25, drop: float = 0., drop_path: float = 0.):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MSDeformAttn(dim, 1, num_heads, num_points, deform_ratio)
        self.ffn = ConvFFN(dim, int(dim * cffn_ratio), drop) if with_cffn else None
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-6) if with_cffn else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, query, ref, feat, feat_shapes, query_shapes) -> torch.Tensor:
        query = query + self.attn(self.query_norm(query), ref, self.feat_norm(feat), feat_shapes)
        if self.ffn is not None:
            query = query + self.drop_path(self.ffn(self.ffn_norm(query), query_shapes))
        return query


class GPViTAdapter(nn.Module):
    """A GPViT with a ViT-Adapter: ``forward(images)`` returns ``[s4, s8, s16, s32]`` (or ``[s8, s16, s32]``),
    each ``(B, C, H/s, W/s)``. Inputs are zero-padded bottom/right to a multiple of 32."""

    def __init__(self, backbone: nn.Module, interaction_indexes: Sequence[Tuple[int, int]] = ((0, 2), (3, 5),
                 (6, 8), (9, 11)), conv_inplane: int = 64, num_points: int = 4, deform_num_heads: int = 6,
                 init_values: float = 0., cffn_ratio: float = 0.25, deform_ratio: float = 1.0,
                 with_cffn: bool = True, use_extra_extractor: bool = True, with_s4: bool = True,
                 drop_path_rate: float = 0.):
        """
        Args:
            backbone: a GPViT (its blocks run here; its final norm, output norms and head are not used and are
                removed).
            interaction_indexes: first and last block of each interaction.
            conv_inplane: SPM width.
            num_points, deform_num_heads, deform_ratio: deformable attention settings.
            init_values: initial injector gamma.
            cffn_ratio: ConvFFN hidden size / C.
            with_cffn: extractors with ConvFFN.
            use_extra_extractor: two extra extractors after the last interaction.
            with_s4: also return the stride-4 level (Mask R-CNN); False for RetinaNet (s8..s32).
            drop_path_rate: drop path of the extractors' ConvFFN.
        """
        super().__init__()
        if not hasattr(backbone, 'blocks') or not hasattr(backbone, '_stem'):
            raise ValueError('GPViTAdapter needs a GPViT backbone')
        depth = len(backbone.blocks)
        if len(interaction_indexes) != 4:
            raise ValueError(f'the adapter has 4 interactions (one per output level), got {interaction_indexes}')
        flat = [i for pair in interaction_indexes for i in pair]
        if flat[0] != 0 or flat[-1] != depth - 1 or any(b < a for a, b in interaction_indexes) or any(
                interaction_indexes[k + 1][0] != interaction_indexes[k][1] + 1
                for k in range(len(interaction_indexes) - 1)):
            raise ValueError(f'interaction_indexes {interaction_indexes} must split blocks 0..{depth - 1} into '
                             f'consecutive ranges')
        # Only the blocks, the stem and the position embedding are used (the reference's final_norm=False).
        backbone.norm = nn.Identity()
        backbone.out_norms = nn.ModuleDict()
        backbone.reset_classifier(0, '')
        self.backbone = backbone
        dim = backbone.embed_dim
        self.dim = dim
        self.interaction_indexes = [tuple(p) for p in interaction_indexes]
        self.with_s4 = with_s4
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.spm = SpatialPriorModule(conv_inplane, dim, with_c1=with_s4)
        n = len(interaction_indexes)
        self.injectors = nn.ModuleList(
            Injector(dim, deform_num_heads, num_points, 3, deform_ratio, init_values) for _ in range(n))
        n_extract = n + (2 if use_extra_extractor else 0)
        self.extractors = nn.ModuleList(
            Extractor(dim, deform_num_heads, num_points, deform_ratio, with_cffn, cffn_ratio, 0., drop_path_rate)
            for _ in range(n_extract))
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2) if with_s4 else None
        self.out_norms = nn.ModuleList(nn.BatchNorm2d(dim) for _ in range(4 if with_s4 else 3))
        self.out_channels = [dim] * len(self.out_norms)
        self.strides = [4, 8, 16, 32] if with_s4 else [8, 16, 32]
        self._init_adapter()

    @torch.no_grad()
    def _init_adapter(self) -> None:
        for m in [*self.spm.modules(), *self.injectors.modules(), *self.extractors.modules(),
                  *([self.up] if self.up is not None else []), *self.out_norms.modules()]:
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                m.weight.normal_(0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {'level_embed'} | {f'backbone.{n}' for n in self.backbone.no_weight_decay()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        H, W = images.shape[-2:]
        ph, pw = (-H) % 32, (-W) % 32
        if ph or pw:
            images = F.pad(images, (0, pw, 0, ph))
        B = images.shape[0]
        c1, cs = self.spm(images)
        shapes = [tuple(c.shape[-2:]) for c in cs]
        c = torch.cat([(t.flatten(2).transpose(1, 2) + self.level_embed[i]) for i, t in enumerate(cs)], dim=1)

        x = self.backbone._stem(images)  # (B, h, w, C) at stride 8, position embedding added
        h, w = x.shape[1:3]
        if (h, w) != shapes[0]:
            raise RuntimeError(f'GPViT grid {(h, w)} differs from the SPM stride-8 grid {shapes[0]}')
        dev = images.device
        spatial_spm = torch.as_tensor(shapes, device=dev)
        spatial_vit = torch.as_tensor([(h, w)], device=dev)
        ref_vit = reference_points([(h, w)], dev).unsqueeze(2).expand(1, h * w, 3, 2).expand(B, -1, -1, -1)
        ref_spm = reference_points(shapes, dev).unsqueeze(2).expand(B, -1, -1, -1)

        n = len(self.interaction_indexes)
        for k, (first, last) in enumerate(self.interaction_indexes):
            tokens = self.injectors[k](x.reshape(B, h * w, -1), ref_vit, c, spatial_spm)
            x = tokens.view(B, h, w, -1)
            for blk in self.backbone.blocks[first:last + 1]:
                x = self.backbone._run_block(blk, x)
            tokens = x.reshape(B, h * w, -1)
            extractors = [self.extractors[k]] + (list(self.extractors[n:]) if k == n - 1 else [])
            for ex in extractors:
                c = ex(c, ref_spm, tokens, spatial_vit, shapes)

        c2, c3, c4 = [t.transpose(1, 2).reshape(B, self.dim, *s) for t, s in zip(
            c.split([a * b for a, b in shapes], dim=1), shapes)]
        x = x.permute(0, 3, 1, 2)  # the final GPViT map, resampled, goes to every level (the reference GPViTAdapter)
        levels = [c2 + x,
                  c3 + F.interpolate(x, size=c3.shape[-2:], mode='bilinear', align_corners=False),
                  c4 + F.interpolate(x, size=c4.shape[-2:], mode='bilinear', align_corners=False)]
        if self.with_s4:
            s4 = self.up(c2) + c1 + F.interpolate(x, size=c1.shape[-2:], mode='bilinear', align_corners=False)
            levels.insert(0, s4)
        return [norm(f) for norm, f in zip(self.out_norms, levels)]
