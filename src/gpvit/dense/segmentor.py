"""Semantic segmentation: a GPViT or GC ViT backbone's feature maps into a UperNet or SegFormer head.

:class:`DenseBackbone` turns a registered classification model into a multi-level feature extractor (each
level through a LayerNorm of its own: GPViT's four stride-8 maps after blocks 2, 5, 8, 11 as the reference
``GPViTSeg``; GC ViT's four stage maps at strides 4..32) and initialises it from a classification checkpoint
of any supported format. :class:`Segmentor` adds the decode head, the optional auxiliary head, the loss and
whole-image / sliding-window inference.

The segmentors are registered in timm's registry as ``upernet`` and ``segformer`` (the backbone is an
argument), so ``gpvit.create_model('upernet', backbone='gpvit_l1', num_classes=150)`` builds one and
``gpvit.create_model('upernet', checkpoint='runs/x/best.pth', **kwargs)`` reloads a trained one.
"""
import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model

from ..checkpoint import CheckpointError
from .heads import FCNHead, SegFormerHead, UperNetHead

__all__ = ['DenseBackbone', 'Segmentor', 'default_out_indices', 'upernet', 'segformer']

_logger = logging.getLogger(__name__)

IGNORE_INDEX = 255


def _create(name: str, **kwargs) -> nn.Module:
    from ..factory import create_model
    return create_model(name, **kwargs)


def default_out_indices(model: nn.Module) -> Tuple[int, ...]:
    """GC ViT: every stage. GPViT: the last block of each quarter (2, 5, 8, 11 for the 12-block variants)."""
    if hasattr(model, 'stages'):
        return tuple(range(len(model.stages)))
    depth = len(model.blocks)
    return tuple(sorted({max(0, round(depth * (k + 1) / 4) - 1) for k in range(4)}))


class DenseBackbone(nn.Module):
    """Multi-level features of a GPViT or GC ViT for dense heads.

    Attributes:
        body: the (pruned) backbone model; its ``forward_intermediates`` gives the maps.
        out_indices: the blocks (GPViT) or stages (GC ViT) returned.
        out_channels: channels of each returned map.
        strides: stride of each returned map.
    """

    def __init__(self, name: str, out_indices: Optional[Sequence[int]] = None,
                 checkpoint: Optional[Union[str, Mapping]] = None, use_ema: bool = False, **kwargs: Any):
        """
        Args:
            name: a registered GPViT or GC ViT model, e.g. ``'gpvit_l1'`` or ``'gc_vit_tiny'``.
            out_indices: blocks (GPViT) or stages (GC ViT) to return; default :func:`default_out_indices`.
            checkpoint: initial backbone weights, a classification checkpoint of any supported format (its
                classifier is dropped; the per-level norms start as identity LayerNorms, as in the reference).
            use_ema: take the EMA weights of ``checkpoint``.
            **kwargs: model arguments (``drop_path_rate``, GC ViT's ``window_size``, ...).
        """
        super().__init__()
        for key in ('num_classes', 'global_pool', 'features_only', 'out_norm_indices'):
            if key in kwargs:
                raise ValueError(f'DenseBackbone sets {key} itself; got {key}={kwargs[key]!r}')
        with torch.device('meta'):  # the architecture only (depth, feature_info): no memory, no init cost
            probe = _create(name, num_classes=0, global_pool='', **kwargs)
        if not hasattr(probe, 'forward_intermediates') or not hasattr(probe, 'out_norms'):
            raise ValueError(f'{name!r} is not a GPViT or GC ViT model')
        n = len(probe.stages) if hasattr(probe, 'stages') else len(probe.blocks)
        out_indices = tuple(out_indices) if out_indices is not None else default_out_indices(probe)
        if not out_indices or any(not -n <= i < n for i in out_indices):
            raise ValueError(f'out_indices {out_indices} must index the {n} '
                             f'{"stages" if hasattr(probe, "stages") else "blocks"} of {name}')
        self.out_indices = tuple(sorted({i % n for i in out_indices}))
        # Each returned level gets a LayerNorm of its own (GPViT's last block keeps the final norm, the
        # reference's ln1); a classification checkpoint has none, so they start fresh, as in the reference.
        body = _create(name, checkpoint=checkpoint, use_ema=use_ema, num_classes=0, global_pool='',
                       out_norm_indices=self.out_indices, **kwargs)
        body.prune_intermediate_layers(list(self.out_indices), prune_head=True)
        self.body = body
        self.out_channels = [body.feature_info[i]['num_chs'] for i in self.out_indices]
        self.strides = [body.feature_info[i]['reduction'] for i in self.out_indices]

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.body.forward_intermediates(x, indices=list(self.out_indices), norm=True, stop_early=True,
                                               intermediates_only=True)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {f'body.{n}' for n in self.body.no_weight_decay()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.body.set_grad_checkpointing(enable)


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
# Registered builders
# ---------------------------------------------------------------------------------------------------------------

_TIMM_KWARGS = ('pretrained_cfg', 'cache_dir')


def _finish(model: nn.Module, pretrained: bool, pretrained_cfg_overlay: Optional[Dict]) -> nn.Module:
    """Load a whole-model state dict handed over by ``gpvit.create_model(name, checkpoint=...)``."""
    if pretrained:
        state_dict = (pretrained_cfg_overlay or {}).get('state_dict')
        if state_dict is None:
            raise ValueError('no released weights for this model: pass checkpoint=PATH to gpvit.create_model '
                             '(a checkpoint of this project), or backbone_checkpoint= for backbone weights')
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        missing = [k for k in missing if not k.endswith('num_batches_tracked')]
        if missing or unexpected:
            raise CheckpointError(f'checkpoint does not fit this {type(model).__name__}: {len(missing)} missing keys '
                                  f'(first {missing[:8]}), {len(unexpected)} unexpected (first {unexpected[:8]})')
    return model


def _backbone(backbone: str, out_indices, backbone_checkpoint, backbone_use_ema, kwargs) -> DenseBackbone:
    for k in _TIMM_KWARGS:
        kwargs.pop(k, None)
    return DenseBackbone(backbone, out_indices, backbone_checkpoint, backbone_use_ema, **kwargs)


@register_model
def upernet(pretrained: bool = False, backbone: str = 'gpvit_l1', num_classes: int = 150,
            out_indices: Optional[Sequence[int]] = None, channels: int = 512,
            pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1, aux_channels: int = 256,
            aux_in_index: int = 3, aux_weight: float = 0.4, backbone_checkpoint: Optional[str] = None,
            backbone_use_ema: bool = False, pretrained_cfg_overlay: Optional[Dict] = None, **kwargs) -> Segmentor:
    """UperNet (PPM 1/2/3/6, 512 channels) with an auxiliary FCN head (256 channels, one conv, loss x0.4) on the
    maps of ``backbone``; ``aux_weight=0`` drops the auxiliary head. Extra kwargs go to the backbone."""
    body = _backbone(backbone, out_indices, backbone_checkpoint, backbone_use_ema, kwargs)
    head = UperNetHead(body.out_channels, num_classes, channels, pool_scales, dropout)
    aux = None
    if aux_weight > 0:
        aux = FCNHead(body.out_channels[aux_in_index], num_classes, aux_channels, 1, aux_in_index, dropout)
    model = Segmentor(body, head, num_classes, aux, aux_weight)
    return _finish(model, pretrained, pretrained_cfg_overlay)


@register_model
def segformer(pretrained: bool = False, backbone: str = 'gpvit_l1', num_classes: int = 150,
              out_indices: Optional[Sequence[int]] = None, channels: int = 256, dropout: float = 0.1,
              proj_norm: bool = True, backbone_checkpoint: Optional[str] = None, backbone_use_ema: bool = False,
              pretrained_cfg_overlay: Optional[Dict] = None, **kwargs) -> Segmentor:
    """The SegFormer all-MLP head (256 channels) on the maps of ``backbone``. Extra kwargs go to the backbone."""
    body = _backbone(backbone, out_indices, backbone_checkpoint, backbone_use_ema, kwargs)
    head = SegFormerHead(body.out_channels, num_classes, channels, dropout, proj_norm)
    model = Segmentor(body, head, num_classes)
    return _finish(model, pretrained, pretrained_cfg_overlay)
