"""Semantic segmentation: a GPViT or GC ViT backbone's feature maps into a UperNet or SegFormer head.

:class:`Segmentor` runs a :class:`~gpvit.dense.backbone.DenseBackbone`, the decode head, the optional auxiliary
head, the loss and whole-image / sliding-window inference. :func:`upernet` and :func:`segformer` build the two
recipes' models (the backbone is an argument); ``gpvit.create_model('upernet', backbone='gpvit_l1',
num_classes=150)`` calls them, and ``checkpoint=`` reloads a trained one (:mod:`gpvit.dense`).
"""
import logging
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import DenseBackbone
from .heads import FCNHead, SegFormerHead, UperNetHead

__all__ = ['Segmentor', 'segmentation_loss', 'upernet', 'segformer']

_logger = logging.getLogger(__name__)

IGNORE_INDEX = 255


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=False)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixel cross-entropy of logits upsampled (bilinear) to the labels' size, averaged over all pixels with
    ignored ones counting as zero (the reference's mmseg default, ``avg_non_ignore=False``)."""
    logits = _resize(logits, labels.shape[-2:]).float()
    return F.cross_entropy(logits, labels.long(), ignore_index=ignore_index, reduction='none').mean()


class Segmentor(nn.Module):
    """Backbone + decode head (+ auxiliary head).

    ``forward(images)`` returns logits ``(B, K, H, W)`` at the images' size. In training mode with ``labels``
    ``(B, H, W)`` (255 = ignore) it returns the losses ``{'loss_decode', 'loss_aux'}`` (the auxiliary loss
    already weighted).
    """

    def __init__(self, backbone: DenseBackbone, decode_head: nn.Module, num_classes: int,
                 auxiliary_head: Optional[nn.Module] = None, aux_weight: float = 0.4,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head
        self.aux_weight = aux_weight
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {f'backbone.{n}' for n in self.backbone.no_weight_decay()}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def forward(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None
                ) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        feats = self.backbone(images)
        logits = self.decode_head(feats)
        if self.training and labels is not None:
            losses = {'loss_decode': segmentation_loss(logits, labels, self.ignore_index)}
            if self.auxiliary_head is not None:
                losses['loss_aux'] = self.aux_weight * segmentation_loss(self.auxiliary_head(feats), labels,
                                                                         self.ignore_index)
            return losses
        return _resize(logits, images.shape[-2:])

    @torch.no_grad()
    def inference(self, images: torch.Tensor, mode: str = 'whole', crop_size: Tuple[int, int] = (512, 512),
                  stride: Tuple[int, int] = (341, 341), out_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Logits ``(B, K, *out_size)`` (default the images' size).

        ``'whole'``: one forward of the full image. ``'slide'``: overlapping ``crop_size`` windows every
        ``stride`` pixels (the last window of a row or column is moved back to end at the border); the logits
        of overlapping windows are averaged.
        """
        if mode == 'whole':
            logits = self(images)
        elif mode == 'slide':
            logits = self._slide(images, crop_size, stride)
        else:
            raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
        return _resize(logits, out_size) if out_size is not None else logits

    def _slide(self, images: torch.Tensor, crop_size: Tuple[int, int], stride: Tuple[int, int]) -> torch.Tensor:
        (ch, cw), (sh, sw) = crop_size, stride
        if min(ch, cw, sh, sw) <= 0:
            raise ValueError(f'crop_size {crop_size} and stride {stride} must be positive')
        B, _, H, W = images.shape
        rows = max(H - ch + sh - 1, 0) // sh + 1
        cols = max(W - cw + sw - 1, 0) // sw + 1
        out = images.new_zeros(B, self.num_classes, H, W, dtype=torch.float32)
        count = images.new_zeros(1, 1, H, W, dtype=torch.float32)
        for r in range(rows):
            for c in range(cols):
                y2, x2 = min(r * sh + ch, H), min(c * sw + cw, W)
                y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
                out[:, :, y1:y2, x1:x2] += self(images[:, :, y1:y2, x1:x2]).float()
                count[:, :, y1:y2, x1:x2] += 1
        return out / count


# ---------------------------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------------------------

def upernet(backbone: str = 'gpvit_l1', num_classes: int = 150, out_indices: Optional[Sequence[int]] = None,
            channels: int = 512, pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1,
            aux_channels: int = 256, aux_in_index: int = 3, aux_weight: float = 0.4,
            backbone_checkpoint: Optional[str] = None, backbone_use_ema: bool = False, **kwargs) -> Segmentor:
    """UperNet (PPM 1/2/3/6, 512 channels) with an auxiliary FCN head (256 channels, one conv, loss x0.4) on the
    maps of ``backbone``; ``aux_weight=0`` drops the auxiliary head. Extra kwargs go to the backbone."""
    body = DenseBackbone(backbone, out_indices, backbone_checkpoint, backbone_use_ema, **kwargs)
    head = UperNetHead(body.out_channels, num_classes, channels, pool_scales, dropout)
    aux = None
    if aux_weight > 0:
        aux = FCNHead(body.out_channels[aux_in_index], num_classes, aux_channels, 1, aux_in_index, dropout)
    return Segmentor(body, head, num_classes, aux, aux_weight)


def segformer(backbone: str = 'gpvit_l1', num_classes: int = 150, out_indices: Optional[Sequence[int]] = None,
              channels: int = 256, dropout: float = 0.1, proj_norm: bool = True,
              backbone_checkpoint: Optional[str] = None, backbone_use_ema: bool = False, **kwargs) -> Segmentor:
    """The SegFormer all-MLP head (256 channels) on the maps of ``backbone``. Extra kwargs go to the backbone."""
    body = DenseBackbone(backbone, out_indices, backbone_checkpoint, backbone_use_ema, **kwargs)
    head = SegFormerHead(body.out_channels, num_classes, channels, dropout, proj_norm)
    return Segmentor(body, head, num_classes)
