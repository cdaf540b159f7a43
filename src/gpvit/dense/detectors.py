"""COCO detectors from torchvision around GPViT (through the ViT-Adapter) or GC ViT (its four stage maps).

* ``mask_rcnn``: torchvision :class:`~torchvision.models.detection.MaskRCNN` on an FPN (256 channels, BatchNorm,
  LastLevelMaxPool: P2-P6) over the s4..s32 maps; RPN anchors 32..512 with ratios 0.5/1/2; RoIAlign with
  adaptive sampling (``sampling_ratio=0``, as mmdet); the box head is 4 conv (BatchNorm) + 1 fc (mmdet's
  ``Shared4Conv1FCBBoxHead``), the mask head 4 convs.
* ``retinanet``: torchvision :class:`~torchvision.models.detection.RetinaNet` on an FPN (BatchNorm) over the
  s8..s32 maps plus P6/P7 computed from P5's output (``add_extra_convs='on_output'``): focal loss (2, 0.25),
  L1 box loss, anchors 32..512 with 3 scales per octave.

Both are plain builders (the backbone is an argument), also reached through
``gpvit.create_model('mask_rcnn', backbone='gpvit_l1', num_classes=81, backbone_checkpoint='gpvit_l1.pth')``.
``num_classes`` counts the background (label 0): COCO's 80 categories give 81.

Images: training batches arrive already resized by the data pipeline (the recipes' single- or multi-scale
resizing and crops); at evaluation the detector resizes (short side ``min_size``, long side at most
``max_size``) and maps its predictions back to the input image. Both normalise with the ImageNet mean/std and
pad batches to multiples of 32.
"""
from collections import OrderedDict
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from .backbone import build_dense_body

__all__ = ['FPNBackbone', 'GPViTMaskRCNN', 'GPViTRetinaNet', 'mask_rcnn', 'retinanet']

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class FPNBackbone(nn.Module):
    """Multi-level maps of ``body`` through torchvision's FPN; ``forward`` returns an OrderedDict of maps."""

    def __init__(self, body: nn.Module, in_channels: Sequence[int], out_channels: int = 256,
                 extra: str = 'pool', norm: bool = True):
        super().__init__()
        self.body = body
        if extra == 'pool':
            extra_blocks = LastLevelMaxPool()
        elif extra == 'p6p7':
            extra_blocks = LastLevelP6P7(out_channels, out_channels)  # from P5's output ('on_output')
        else:
            raise ValueError(f"extra must be 'pool' or 'p6p7', got {extra!r}")
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, extra_blocks=extra_blocks,
                                         norm_layer=nn.BatchNorm2d if norm else None)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


class _Transform(GeneralizedRCNNTransform):
    """Normalise and batch; resize only at evaluation (training data come resized by the recipe's pipeline)."""

    def resize(self, image, target=None):
        if self.training:
            return image, target
        return super().resize(image, target)


class _DetectorMixin:
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        body = self.backbone.body
        return {f'backbone.body.{n}' for n in body.no_weight_decay()} if hasattr(body, 'no_weight_decay') else set()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.body.set_grad_checkpointing(enable)


class GPViTMaskRCNN(_DetectorMixin, MaskRCNN):
    """torchvision Mask R-CNN with the reference's box head and mmdet's RPN proposal count."""


class GPViTRetinaNet(_DetectorMixin, RetinaNet):
    """torchvision RetinaNet."""


def mask_rcnn(backbone: str = 'gpvit_l1', num_classes: int = 81, backbone_checkpoint: Optional[str] = None,
              backbone_use_ema: bool = False, adapter_kwargs: Optional[Dict[str, Any]] = None, min_size: int = 800,
              max_size: int = 1333, fpn_channels: int = 256, detector_kwargs: Optional[Dict[str, Any]] = None,
              **kwargs) -> GPViTMaskRCNN:
    """Mask R-CNN + FPN on GPViT-Adapter (s4..s32) or GC ViT (four stages). ``detector_kwargs`` go to
    torchvision's ``MaskRCNN`` (e.g. ``box_batch_size_per_image``); extra kwargs go to the backbone."""
    body = build_dense_body(backbone, True, backbone_checkpoint, backbone_use_ema, adapter_kwargs, **kwargs)
    fpn = FPNBackbone(body, body.out_channels, fpn_channels, 'pool')
    box_head = FastRCNNConvFCHead((fpn_channels, 7, 7), [fpn_channels] * 4, [1024], norm_layer=nn.BatchNorm2d)
    mask_head = MaskRCNNHeads(fpn_channels, [fpn_channels] * 4, 1)
    levels = ['0', '1', '2', '3']  # RoIs pooled from P2-P5 (not the max-pooled P6), adaptive sampling as mmdet
    box_roi_pool = MultiScaleRoIAlign(levels, 7, sampling_ratio=0)
    mask_roi_pool = MultiScaleRoIAlign(levels, 14, sampling_ratio=0)
    model = GPViTMaskRCNN(fpn, None, min_size=min_size, max_size=max_size, image_mean=IMAGENET_MEAN,
                          image_std=IMAGENET_STD, box_roi_pool=box_roi_pool, box_head=box_head,
                          mask_roi_pool=mask_roi_pool, mask_head=mask_head,
                          box_predictor=FastRCNNPredictor(1024, num_classes),
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
                           image_std=IMAGENET_STD, **(detector_kwargs or {}))
    model.transform = _Transform(min_size, max_size, IMAGENET_MEAN, IMAGENET_STD)
    return model
