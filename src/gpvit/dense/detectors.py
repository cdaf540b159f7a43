"""COCO detectors from torchvision around GPViT (through the ViT-Adapter) or GC ViT (its four stage maps).

* ``mask_rcnn``: torchvision :class:`~torchvision.models.detection.MaskRCNN` on an FPN (256 channels, BatchNorm,
  LastLevelMaxPool: P2-P6) over the s4..s32 maps; RPN anchors 32..512 with ratios 0.5/1/2 (mmdet's, not rounded);
  RoIAlign as mmdet's (level ``floor(log2(sqrt(wh) / 56))``, ``aligned=True``, ``sampling_ratio=0``); the box
  head is 4 conv (BatchNorm) + 1 fc (mmdet's ``Shared4Conv1FCBBoxHead``), the mask head 4 convs.
* ``cascade_mask_rcnn``: :class:`CascadeMaskRCNN`, the same FPN and RPN (2000 proposals per image in training)
  with three box stages (:mod:`gpvit.dense.cascade`), each with its 4 conv + 1 fc box head and its mask head.
* ``retinanet``: torchvision :class:`~torchvision.models.detection.RetinaNet` on an FPN (BatchNorm) over the
  s8..s32 maps plus P6/P7 computed from P5's output (``add_extra_convs='on_output'``: 3x3/2 conv + BatchNorm,
  no ReLU between): focal loss (2, 0.25), L1 box loss, anchors 32..512 with 3 scales per octave (not rounded),
  100 detections per image (the reference test config).

The GPViT reference's mmdet checkpoints load into Mask R-CNN and RetinaNet (:mod:`gpvit.dense.reference`).

All are plain builders (the backbone is an argument), also reached through
``gpvit.create_model('mask_rcnn', backbone='gpvit_l1', num_classes=81, backbone_checkpoint='gpvit_l1.pth')``.
``num_classes`` counts the background (label 0): COCO's 80 categories give 81.

Images: training batches arrive already resized by the data pipeline (the recipes' single- or multi-scale
resizing and crops); at evaluation the detector resizes (short side ``min_size``, long side at most
``max_size``) and maps its predictions back to the input image. Both normalise with the ImageNet mean/std and
pad batches to multiples of 32.
"""
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import Conv2dNormActivation, MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork, LastLevelMaxPool

from .backbone import build_dense_body
from .cascade import (
    DEFAULT_STAGE_IOUS,
    DEFAULT_STAGE_STDS,
    DEFAULT_STAGE_WEIGHTS,
    CascadeRoIHeads,
    CascadeStage,
)

__all__ = ['FPNBackbone', 'LastLevelP6P7Conv', 'LevelRoIAlign', 'ExactAnchorGenerator', 'rpn_anchors',
           'retinanet_anchors', 'build_box_head', 'GPViTMaskRCNN', 'GPViTRetinaNet', 'CascadeMaskRCNN', 'mask_rcnn',
           'cascade_mask_rcnn', 'retinanet']

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class LastLevelP6P7Conv(ExtraFPNBlock):
    """P6 = 3x3/2 conv (+ norm) on the FPN output P5, P7 = the same on P6, no activation in between: mmdet's
    ``FPN(add_extra_convs='on_output', relu_before_extra_convs=False)`` (torchvision's ``LastLevelP6P7`` puts a
    ReLU before P7)."""

    def __init__(self, channels: int, norm_layer: Optional[type] = None):
        super().__init__()
        self.p6 = Conv2dNormActivation(channels, channels, 3, 2, norm_layer=norm_layer, activation_layer=None)
        self.p7 = Conv2dNormActivation(channels, channels, 3, 2, norm_layer=norm_layer, activation_layer=None)

    def forward(self, results: List[torch.Tensor], x: List[torch.Tensor], names: List[str]
                ) -> Tuple[List[torch.Tensor], List[str]]:
        p6 = self.p6(results[-1])
        return results + [p6, self.p7(p6)], names + ['p6', 'p7']


class LevelRoIAlign(MultiScaleRoIAlign):
    """RoIAlign of each box on one FPN level, as mmdet's ``SingleRoIExtractor``: level
    ``floor(log2(sqrt(w * h) / finest_scale + 1e-6))`` clamped to the levels, ``aligned=True`` (half-pixel
    offset), ``spatial_scale = 1 / stride``. A drop-in for torchvision's ``MultiScaleRoIAlign``, which maps levels
    with ``canonical_scale=224`` and the epsilon outside the log, and samples with ``aligned=False``."""

    def __init__(self, featmap_names: Sequence[str], strides: Sequence[int], output_size: int,
                 sampling_ratio: int = 0, finest_scale: int = 56):
        super().__init__(list(featmap_names), output_size, sampling_ratio)
        if len(featmap_names) != len(strides):
            raise ValueError(f'featmap_names {featmap_names} and strides {strides} differ in length')
        self.strides = list(strides)
        self.roi_size = output_size
        self.finest_scale = finest_scale

    def levels(self, rois: torch.Tensor) -> torch.Tensor:
        """The level index of each RoI ``(K, 5)`` (``[batch, x1, y1, x2, y2]``)."""
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        return torch.floor(torch.log2(scale / self.finest_scale + 1e-6)).clamp(0, len(self.strides) - 1).long()

    def pool_rois(self, features: Sequence[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """RoI features ``(K, C, S, S)`` of ``rois`` ``(K, 5)`` from the maps ``features`` (finest first)."""
        levels = self.levels(rois)
        size = self.roi_size
        out = features[0].new_zeros(rois.shape[0], features[0].shape[1], size, size)
        for i, (feat, stride) in enumerate(zip(features, self.strides)):
            idx = torch.nonzero(levels == i).squeeze(1)
            if idx.numel():
                out[idx] = roi_align(feat, rois[idx], size, 1.0 / stride, self.sampling_ratio,
                                     aligned=True).to(out.dtype)
        return out

    def forward(self, x: Dict[str, torch.Tensor], boxes: List[torch.Tensor],  # type: ignore[override]
                image_shapes: List[Tuple[int, int]]) -> torch.Tensor:
        rois = torch.cat([torch.cat([b.new_full((b.shape[0], 1), i), b], dim=1) for i, b in enumerate(boxes)])
        return self.pool_rois([x[n] for n in self.featmap_names], rois)


class ExactAnchorGenerator(AnchorGenerator):
    """torchvision's anchor grid with mmdet's base anchors: not rounded to integers (torchvision rounds them),
    so sizes such as 32 * 2 ** (1/3) keep their fraction. Same order per location: ratio-major, size-minor."""

    def generate_anchors(self, scales, aspect_ratios, dtype: torch.dtype = torch.float32,
                         device: torch.device = torch.device('cpu')) -> torch.Tensor:
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=dtype, device=device))
        ws = (scales[None, :] / h_ratios[:, None]).reshape(-1)
        hs = (scales[None, :] * h_ratios[:, None]).reshape(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2


def rpn_anchors() -> ExactAnchorGenerator:
    """mmdet's RPN anchors: scale 8 x stride (32..512 on P2-P6), ratios 0.5 / 1 / 2."""
    return ExactAnchorGenerator(tuple((8.0 * s,) for s in (4, 8, 16, 32, 64)), ((0.5, 1.0, 2.0),) * 5)


def retinanet_anchors() -> ExactAnchorGenerator:
    """mmdet's RetinaNet anchors: octave base scale 4, 3 scales per octave, ratios 0.5 / 1 / 2 on P3-P7."""
    return ExactAnchorGenerator(tuple(tuple(4.0 * s * 2 ** (i / 3) for i in range(3)) for s in (8, 16, 32, 64, 128)),
                                ((0.5, 1.0, 2.0),) * 5)


class FPNBackbone(nn.Module):
    """Multi-level maps of ``body`` through torchvision's FPN; ``forward`` returns an OrderedDict of maps."""

    def __init__(self, body: nn.Module, in_channels: Sequence[int], out_channels: int = 256,
                 extra: str = 'pool', norm: bool = True):
        super().__init__()
        self.body = body
        if extra == 'pool':
            extra_blocks = LastLevelMaxPool()
        elif extra == 'p6p7':
            extra_blocks = LastLevelP6P7Conv(out_channels, nn.BatchNorm2d if norm else None)  # on P5's output
        else:
            raise ValueError(f"extra must be 'pool' or 'p6p7', got {extra!r}")
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, extra_blocks=extra_blocks,
                                         norm_layer=nn.BatchNorm2d if norm else None)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


class _Transform(GeneralizedRCNNTransform):
    """Normalise and batch; resize only at evaluation (training data come resized by the recipe's pipeline), to
    mmcv's test size: the scale of torchvision's (short side ``min_size``, long side at most ``max_size``), each
    side rounded to the nearest pixel (mmcv's ``rescale_size``) where torchvision's ``interpolate`` floors it
    (480x640 -> 800x1067 as in the reference, not 800x1066)."""

    def resize(self, image, target=None):
        if self.training:
            return image, target
        h, w = image.shape[-2:]
        scale = min(self.min_size[-1] / min(h, w), self.max_size / max(h, w))
        size = (int(h * scale + 0.5), int(w * scale + 0.5))
        image = F.interpolate(image[None], size=size, mode='bilinear', align_corners=False)[0]
        if target is not None and 'boxes' in target:
            target = {**target, 'boxes': resize_boxes(target['boxes'], (h, w), size)}
        return image, target


class _DetectorMixin:
    @property
    def num_classes(self) -> int:
        """Classes of the classifier, background (label 0) included."""
        if hasattr(self, 'head'):  # RetinaNet
            return self.head.classification_head.num_classes
        heads = self.roi_heads
        predictor = heads.stages[-1].box_predictor if hasattr(heads, 'stages') else heads.box_predictor
        return predictor.cls_score.out_features

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        body = self.backbone.body
        return {f'backbone.body.{n}' for n in body.no_weight_decay()} if hasattr(body, 'no_weight_decay') else set()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.body.set_grad_checkpointing(enable)


def build_box_head(kind: str, channels: int, roi_size: int = 7) -> Tuple[nn.Module, int]:
    """The R-CNN box head on ``(K, channels, roi_size, roi_size)`` RoI features and its output width:
    ``'4conv1fc'`` four 3x3 conv + BatchNorm + ReLU and one fc (mmdet's ``Shared4Conv1FCBBoxHead``, the GPViT and
    the cascade recipes), ``'2fc'`` two fc layers (mmdet's ``Shared2FCBBoxHead``, torchvision's ``TwoMLPHead``)."""
    if kind == '4conv1fc':
        return FastRCNNConvFCHead((channels, roi_size, roi_size), [channels] * 4, [1024],
                                  norm_layer=nn.BatchNorm2d), 1024
    if kind == '2fc':
        return TwoMLPHead(channels * roi_size ** 2, 1024), 1024
    raise ValueError(f"box_head must be '4conv1fc' or '2fc', got {kind!r}")


def _level_roi_pools() -> Tuple[LevelRoIAlign, LevelRoIAlign]:
    """Box (7x7) and mask (14x14) RoIAlign from P2-P5 (not the max-pooled P6), adaptive sampling as mmdet."""
    levels, strides = ['0', '1', '2', '3'], [4, 8, 16, 32]
    return LevelRoIAlign(levels, strides, 7, sampling_ratio=0), LevelRoIAlign(levels, strides, 14, sampling_ratio=0)


class GPViTMaskRCNN(_DetectorMixin, MaskRCNN):
    """torchvision Mask R-CNN with the reference's box head and mmdet's RPN proposal count."""


class GPViTRetinaNet(_DetectorMixin, RetinaNet):
    """torchvision RetinaNet."""


class CascadeMaskRCNN(_DetectorMixin, GeneralizedRCNN):
    """torchvision's ``GeneralizedRCNN`` (transform, FPN backbone, RPN) with :class:`CascadeRoIHeads`: inputs
    and outputs as torchvision's ``MaskRCNN``."""


def mask_rcnn(backbone: str = 'gpvit_l1', num_classes: int = 81, backbone_checkpoint: Optional[str] = None,
              backbone_use_ema: bool = False, adapter_kwargs: Optional[Dict[str, Any]] = None, min_size: int = 800,
              max_size: int = 1333, fpn_channels: int = 256, fpn_norm: bool = True, box_head: str = '4conv1fc',
              detector_kwargs: Optional[Dict[str, Any]] = None, **kwargs) -> GPViTMaskRCNN:
    """Mask R-CNN + FPN on GPViT-Adapter (s4..s32) or GC ViT (four stages). ``fpn_norm``: BatchNorm after the FPN
    convs (the GPViT reference) or conv biases (mmdet's default FPN); ``box_head``: :func:`build_box_head`.
    ``detector_kwargs`` go to torchvision's ``MaskRCNN`` (e.g. ``box_batch_size_per_image``); extra kwargs go to
    the backbone."""
    body = build_dense_body(backbone, True, backbone_checkpoint, backbone_use_ema, adapter_kwargs, **kwargs)
    fpn = FPNBackbone(body, body.out_channels, fpn_channels, 'pool', norm=fpn_norm)
    head, width = build_box_head(box_head, fpn_channels)
    mask_head = MaskRCNNHeads(fpn_channels, [fpn_channels] * 4, 1)
    box_roi_pool, mask_roi_pool = _level_roi_pools()
    model = GPViTMaskRCNN(fpn, None, min_size=min_size, max_size=max_size, image_mean=IMAGENET_MEAN,
                          image_std=IMAGENET_STD, rpn_anchor_generator=rpn_anchors(), box_roi_pool=box_roi_pool,
                          box_head=head, mask_roi_pool=mask_roi_pool, mask_head=mask_head,
                          box_predictor=FastRCNNPredictor(width, num_classes),
                          mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes),
                          **{'rpn_post_nms_top_n_train': 1000, **(detector_kwargs or {})})
    model.transform = _Transform(min_size, max_size, IMAGENET_MEAN, IMAGENET_STD)
    return model


def retinanet(backbone: str = 'gpvit_l1', num_classes: int = 81, backbone_checkpoint: Optional[str] = None,
              backbone_use_ema: bool = False, adapter_kwargs: Optional[Dict[str, Any]] = None, min_size: int = 800,
              max_size: int = 1333, fpn_channels: int = 256, detector_kwargs: Optional[Dict[str, Any]] = None,
              **kwargs) -> GPViTRetinaNet:
    """RetinaNet + FPN (P3-P7) on GPViT-Adapter (s8..s32) or GC ViT (stages 2-4). ``detector_kwargs`` go to
    torchvision's ``RetinaNet``; extra kwargs go to the backbone."""
    body = build_dense_body(backbone, False, backbone_checkpoint, backbone_use_ema, adapter_kwargs, **kwargs)
    fpn = FPNBackbone(body, body.out_channels, fpn_channels, 'p6p7')
    model = GPViTRetinaNet(fpn, num_classes, min_size=min_size, max_size=max_size, image_mean=IMAGENET_MEAN,
                           image_std=IMAGENET_STD, anchor_generator=retinanet_anchors(),
                           **{'detections_per_img': 100, **(detector_kwargs or {})})
    model.transform = _Transform(min_size, max_size, IMAGENET_MEAN, IMAGENET_STD)
    return model


#: The cascade's settings that ``detector_kwargs`` may change (torchvision ``MaskRCNN``'s argument names) and
#: their defaults: mmdet's Cascade Mask R-CNN (2000 RPN proposals per image in training, 1000 at test).
CASCADE_DEFAULTS: Dict[str, Any] = {
    'rpn_pre_nms_top_n_train': 2000, 'rpn_pre_nms_top_n_test': 1000, 'rpn_post_nms_top_n_train': 2000,
    'rpn_post_nms_top_n_test': 1000, 'rpn_nms_thresh': 0.7, 'rpn_fg_iou_thresh': 0.7, 'rpn_bg_iou_thresh': 0.3,
    'rpn_batch_size_per_image': 256, 'rpn_positive_fraction': 0.5, 'rpn_score_thresh': 0.0,
    'box_score_thresh': 0.05, 'box_nms_thresh': 0.5, 'box_detections_per_img': 100,
    'box_batch_size_per_image': 512, 'box_positive_fraction': 0.25,
}


def cascade_mask_rcnn(backbone: str = 'gc_vit_tiny', num_classes: int = 81, backbone_checkpoint: Optional[str] = None,
                      backbone_use_ema: bool = False, adapter_kwargs: Optional[Dict[str, Any]] = None,
                      min_size: int = 800, max_size: int = 1333, fpn_channels: int = 256, fpn_norm: bool = False,
                      box_head: str = '4conv1fc', stage_ious: Sequence[float] = DEFAULT_STAGE_IOUS,
                      stage_loss_weights: Sequence[float] = DEFAULT_STAGE_WEIGHTS,
                      stage_stds: Sequence[Sequence[float]] = DEFAULT_STAGE_STDS, giou_weight: float = 10.0,
                      detector_kwargs: Optional[Dict[str, Any]] = None, **kwargs) -> CascadeMaskRCNN:
    """Cascade Mask R-CNN + FPN (P2-P6) on GC ViT (four stages) or GPViT-Adapter (s4..s32).

    One stage per entry of ``stage_ious`` / ``stage_loss_weights`` / ``stage_stds`` (three by default, see
    :mod:`gpvit.dense.cascade`), each with its own ``box_head`` (:func:`build_box_head`), class-specific
    predictor and mask head. ``fpn_norm=False``: mmdet's plain FPN (conv biases), as the GC ViT / Swin cascade
    recipes.
    ``detector_kwargs``: any of :data:`CASCADE_DEFAULTS`; extra kwargs go to the backbone.
    """
    if not len(stage_ious) == len(stage_loss_weights) == len(stage_stds):
        raise ValueError(f'stage_ious, stage_loss_weights and stage_stds need one entry per stage, got '
                         f'{len(stage_ious)}, {len(stage_loss_weights)} and {len(stage_stds)}')
    unknown = sorted(set(detector_kwargs or {}) - set(CASCADE_DEFAULTS))
    if unknown:
        raise ValueError(f'detector_kwargs: unknown {", ".join(unknown)}; known: {", ".join(CASCADE_DEFAULTS)}')
    o = {**CASCADE_DEFAULTS, **(detector_kwargs or {})}
    body = build_dense_body(backbone, True, backbone_checkpoint, backbone_use_ema, adapter_kwargs, **kwargs)
    fpn = FPNBackbone(body, body.out_channels, fpn_channels, 'pool', norm=fpn_norm)
    anchors = rpn_anchors()
    rpn = RegionProposalNetwork(
        anchors, RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]), o['rpn_fg_iou_thresh'],
        o['rpn_bg_iou_thresh'], o['rpn_batch_size_per_image'], o['rpn_positive_fraction'],
        dict(training=o['rpn_pre_nms_top_n_train'], testing=o['rpn_pre_nms_top_n_test']),
        dict(training=o['rpn_post_nms_top_n_train'], testing=o['rpn_post_nms_top_n_test']), o['rpn_nms_thresh'],
        score_thresh=o['rpn_score_thresh'])
    stages = []
    for iou, weight, stds in zip(stage_ious, stage_loss_weights, stage_stds):
        head, width = build_box_head(box_head, fpn_channels)
        stages.append(CascadeStage(head, FastRCNNPredictor(width, num_classes), iou, stds, weight,
                                   MaskRCNNHeads(fpn_channels, [fpn_channels] * 4, 1),
                                   MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes)))
    box_roi_pool, mask_roi_pool = _level_roi_pools()
    roi_heads = CascadeRoIHeads(box_roi_pool, stages, o['box_batch_size_per_image'], o['box_positive_fraction'],
                                o['box_score_thresh'], o['box_nms_thresh'], o['box_detections_per_img'],
                                mask_roi_pool, giou_weight)
    return CascadeMaskRCNN(fpn, rpn, roi_heads, _Transform(min_size, max_size, IMAGENET_MEAN, IMAGENET_STD))
