"""Semantic-segmentation heads: UperNet (with its auxiliary FCN head) and the SegFormer all-MLP head.

Both take a list of feature maps ``[(B, C_i, H_i, W_i)]`` (any strides; GPViT gives four stride-8 maps, GC ViT
four maps at strides 4..32) and return logits ``(B, num_classes, H_0, W_0)`` at the resolution of the first
map; the segmentor upsamples them to the image. Written from the papers and the GPViT reference settings
(``channels=512``, pool scales 1/2/3/6, dropout 0.1; SegFormer head 256 channels); every conv followed by a
norm has no bias, and the norms are BatchNorm (SyncBatchNorm under DDP with ``model.sync_bn``).
"""
from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import Conv2dNormActivation

__all__ = ['conv_bn_relu', 'PyramidPooling', 'UperNetHead', 'FCNHead', 'SegFormerHead']


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1) -> Conv2dNormActivation:
    """Conv (no bias) + BatchNorm + ReLU (torchvision's ``Conv2dNormActivation``: state-dict keys ``0.*``, ``1.*``),
    Kaiming-initialised (fan out) as the reference's ConvModule."""
    block = Conv2dNormActivation(in_channels, out_channels, kernel_size)
    nn.init.kaiming_normal_(block[0].weight, mode='fan_out', nonlinearity='relu')
    return block


class _ClassifierMixin:
    def _init_classifier(self, channels: int, num_classes: int, dropout: float) -> None:
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: average-pool to s x s for each scale, 1x1 conv, upsample, concat with the input."""

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_bn_relu(in_channels, channels, 1)) for s in pool_scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [_resize(stage(x), size) for stage in self.stages], dim=1)


class UperNetHead(nn.Module, _ClassifierMixin):
    """UperNet decode head: PPM on the last map, FPN top-down path, all levels fused at the first map's size.

    1. The last map goes through pyramid pooling and a 3x3 bottleneck (``channels``).
    2. The other maps get 1x1 laterals; top-down, each lateral adds the upsampled coarser one.
    3. 3x3 convs on the laterals; every level upsampled to level 0, concatenated, 3x3 fused, dropout, 1x1
       classifier.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1):
        super().__init__()
        in_channels = list(in_channels)
        self.ppm = PyramidPooling(in_channels[-1], channels, pool_scales)
        self.ppm_bottleneck = conv_bn_relu(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(conv_bn_relu(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = conv_bn_relu(len(in_channels) * channels, channels, 3)
        self._init_classifier(channels, num_classes, dropout)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features[:-1])]
        laterals.append(self.ppm_bottleneck(self.ppm(features[-1])))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        x = self.fpn_bottleneck(torch.cat([_resize(o, size) for o in outs], dim=1))
        return self.classifier(self.dropout(x))


class FCNHead(nn.Module, _ClassifierMixin):
    """The auxiliary head: ``num_convs`` 3x3 conv-BN-ReLU on one feature map, dropout, 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, num_convs: int = 1,
                 in_index: int = -1, dropout: float = 0.1):
        super().__init__()
        self.in_index = in_index
        self.convs = nn.Sequential(*[conv_bn_relu(in_channels if i == 0 else channels, channels, 3)
                                     for i in range(num_convs)])
        self._init_classifier(channels if num_convs else in_channels, num_classes, dropout)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.dropout(self.convs(features[self.in_index])))


class SegFormerHead(nn.Module, _ClassifierMixin):
    """SegFormer's all-MLP decoder: per-level projection to ``channels``, upsample to level 0, concat, 1x1 fuse.

    The per-level projections are 1x1 convs (a per-pixel Linear). With ``proj_norm=True`` (default, the GPViT
    reference head) each is followed by BatchNorm and ReLU; ``proj_norm=False`` gives the paper's plain Linear
    layers. The fusion is a 1x1 conv + BatchNorm + ReLU, then dropout and the 1x1 classifier.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 256, dropout: float = 0.1,
                 proj_norm: bool = True):
        super().__init__()
        if proj_norm:
            self.proj = nn.ModuleList(conv_bn_relu(c, channels, 1) for c in in_channels)
        else:
            self.proj = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.fuse = conv_bn_relu(len(in_channels) * channels, channels, 1)
        self._init_classifier(channels, num_classes, dropout)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        x = torch.cat([_resize(p(f), size) for p, f in zip(self.proj, features)], dim=1)
        return self.classifier(self.dropout(self.fuse(x)))
