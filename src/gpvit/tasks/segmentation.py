"""Semantic segmentation (ADE20K recipes of GPViT): UperNet or SegFormer head, dataset-level mIoU.

Model: ``model.name`` is a registered segmentor (``upernet`` or ``segformer``, see
:mod:`gpvit.dense.segmentor`); ``model.kwargs`` holds its arguments, e.g. ``backbone: gpvit_l1``,
``drop_path_rate: 0.1``; ``model.pretrained`` is the backbone's initial weights (a classification checkpoint
of any supported format). Data: an ADE20K-format folder (:mod:`gpvit.data.ade`). Metric: mIoU over the whole
validation set (per-class intersections and unions summed over all images and processes, classes absent from
both prediction and ground truth left out), as the reference reports it, through torchmetrics'
``MulticlassJaccardIndex(ignore_index=255)``.
"""
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Literal, Optional, Tuple

import torch
import torch.nn as nn

from ..data.ade import ADE_MEAN, ADE_STD, IGNORE_INDEX, ADE20KDataset, SegEvalTransform, SegTrainTransform, collate_seg
from ..dense import Segmentor
from ..engine.config import checked
from ..engine.distributed import all_reduce_sum
from ..engine.task import StepOutput
from ..errors import ConfigError
from .base import ModelTask
from .registry import register_task

__all__ = ['SegmentationTask', 'SegmentationDataConfig', 'SegTrainAugConfig', 'MIoUEvaluator']

_logger = logging.getLogger(__name__)


def _pair_positive(v) -> bool:
    return all(x > 0 for x in v)


@dataclass
class SegTrainAugConfig:
    """The reference training pipeline (mmseg ADE20K): rescale, crop, flip, photometric distortion."""
    scale: Tuple[int, int] = checked((2048, 512), _pair_positive, 'positive')  # (long, short) side before ratio
    ratio_range: Tuple[float, float] = (0.5, 2.0)
    crop_size: Tuple[int, int] = checked((512, 512), _pair_positive, 'positive')  # (h, w)
    cat_max_ratio: float = checked(0.75, lambda v: 0 < v <= 1, 'in (0, 1]')
    hflip: float = checked(0.5, lambda v: 0 <= v <= 1, 'in [0, 1]')
    photometric: bool = True


@dataclass
class SegmentationDataConfig:
    """The ``data`` section of a segmentation run."""
    format: Literal['ade20k'] = 'ade20k'
    root: str = ''  # ADEChallengeData2016: images/<split>, annotations/<split>
    train_split: str = 'training'
    val_split: str = 'validation'
    num_classes: int = checked(150, lambda v: v > 0, '> 0')
    reduce_zero_label: bool = True  # label 0 -> ignored, 1..K -> 0..K-1 (ADE20K)
    mean: Tuple[float, float, float] = ADE_MEAN  # 0-255 scale, RGB
    std: Tuple[float, float, float] = ADE_STD
    train_aug: SegTrainAugConfig = field(default_factory=SegTrainAugConfig)
    test_scale: Tuple[int, int] = checked((2048, 512), _pair_positive, 'positive')
    size_divisor: int = checked(32, lambda v: v >= 1, '>= 1')
    inference: Literal['whole', 'slide'] = 'whole'
    slide_crop: Tuple[int, int] = checked((512, 512), _pair_positive, 'positive')
    slide_stride: Tuple[int, int] = checked((341, 341), _pair_positive, 'positive')

    def validate(self, cfg) -> None:
        lo, hi = self.train_aug.ratio_range
        if not 0 < lo <= hi:
            raise ConfigError(f'data.train_aug.ratio_range: expected 0 < min <= max, got {[lo, hi]}')
        if any(s <= 0 for s in self.std):
            raise ConfigError(f'data.std: must be > 0, got {list(self.std)}')
        mk = cfg.model.kwargs.get('num_classes')
        if mk is not None and mk != self.num_classes:
            raise ConfigError(f'model.kwargs.num_classes: {mk} differs from data.num_classes {self.num_classes}')
        for key in ('backbone_checkpoint', 'backbone_use_ema'):
            if key in cfg.model.kwargs:
                raise ConfigError(f'model.kwargs.{key}: give the backbone weights as model.pretrained '
                                  f'(and model.pretrained_use_ema)')


class MIoUEvaluator:
    """Dataset-level mIoU, mean class accuracy and pixel accuracy from predicted and true label maps."""

    def __init__(self, num_classes: int, device: torch.device = torch.device('cpu'),
                 ignore_index: int = IGNORE_INDEX):
        from torchmetrics.classification import MulticlassJaccardIndex
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.iou = MulticlassJaccardIndex(num_classes, ignore_index=ignore_index, average='macro',
                                          sync_on_compute=False).to(device)
        self.correct = 0
        self.total = 0
        self.images = 0

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """``pred`` and ``label``: ``(H, W)`` or ``(B, H, W)`` integer maps; label 255 is ignored."""
        if pred.shape != label.shape:
            raise ValueError(f'prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in size')
        self.images += 1 if pred.ndim == 2 else pred.shape[0]
        label = label.long()
        valid = label != self.ignore_index
        pred, label = pred.long()[valid], label[valid]  # the ignored pixels' predictions never count
        self.iou.update(pred, label)
        self.correct += int((pred == label).sum())
        self.total += int(valid.sum())

    def compute(self, device: Optional[torch.device] = None) -> Dict[str, float]:
        """Metrics over everything seen, summed over all processes (collective under DDP)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.iou.confmat)  # summed once; compute() then reads the total
        confmat = self.iou.confmat.double()  # (K, K): rows true, columns predicted
        sums = all_reduce_sum({'correct': float(self.correct), 'total': float(self.total),
                               'images': float(self.images)}, device or confmat.device)
        gt = confmat.sum(1)
        miou = self.iou.compute().item() if confmat.sum() > 0 else 0.
        macc = (confmat.diag()[gt > 0] / gt[gt > 0]).mean().item() if (gt > 0).any() else 0.
        return {'mIoU': miou, 'mAcc': macc, 'aAcc': sums['correct'] / max(sums['total'], 1.),
                'images': int(sums['images'])}


@register_task
class SegmentationTask(ModelTask):
    """Semantic segmentation; primary metric ``mIoU`` (a fraction in [0, 1])."""
    name = 'segmentation'
    data_config = SegmentationDataConfig
    primary_metric = 'mIoU'
    model_names = ('upernet', 'segformer')
    requires = {'torchmetrics': 'dense'}
    higher_is_better = True

    def __init__(self, cfg, dist):
        super().__init__(cfg, dist)
        self.data: SegmentationDataConfig = cfg.data

    @classmethod
    def preflight(cls, cfg, splits=('train', 'val')) -> None:
        super().preflight(cfg, splits)  # the model name first
        d = cfg.data
        if not d.root:
            raise ConfigError('data.root: required (the ADEChallengeData2016 folder)')
        root = Path(d.root).expanduser()
        if not root.is_dir():
            raise ConfigError(f'data.root: {root} is not a folder')
        for split in splits:
            name = d.train_split if split == 'train' else d.val_split
            for sub in ('images', 'annotations'):
                if not (root / sub / name).is_dir():
                    key = 'data.train_split' if split == 'train' else 'data.val_split'
                    raise ConfigError(f'{key}: {root / sub / name} does not exist; expected ROOT/images/<split> '
                                      f'and ROOT/annotations/<split> (ADEChallengeData2016 layout)')

    # -- data ------------------------------------------------------------------------------------------------

    def transform(self, split: str):
        d, a = self.data, self.data.train_aug
        if split == 'train':
            return SegTrainTransform(a.scale, a.ratio_range, a.crop_size, a.cat_max_ratio, a.hflip, a.photometric,
                                     d.mean, d.std)
        return SegEvalTransform(d.test_scale, d.size_divisor, d.mean, d.std)

    def build_datasets(self, splits=('train', 'val'), **_: Any) -> Dict[str, Any]:
        d = self.data
        return {split: ADE20KDataset(Path(d.root).expanduser(), d.train_split if split == 'train' else d.val_split,
                                     d.num_classes, d.reduce_zero_label, self.transform(split),
                                     on_error='substitute' if split == 'train' else 'skip')
                for split in splits}

    def collate_fn(self, split: str):
        return collate_seg

    # -- model -----------------------------------------------------------------------------------------------

    def model_spec(self) -> Dict[str, Any]:
        kwargs = dict(self.cfg.model.kwargs)
        kwargs.setdefault('num_classes', self.data.num_classes)
        return {'name': self.cfg.model.name, 'kwargs': kwargs}

    def build_model(self) -> nn.Module:
        spec, m = self.model_spec(), self.cfg.model
        model = self.create_model(spec['name'], backbone_checkpoint=m.pretrained,
                                  backbone_use_ema=m.pretrained_use_ema, **spec['kwargs'])
        if not isinstance(model, Segmentor):
            raise ConfigError(f'model.name: {spec["name"]} is not a segmentor (use upernet or segformer with '
                              f'model.kwargs.backbone)')
        return model

    # -- training ----------------------------------------------------------------------------------------------

    def train_step(self, model: nn.Module, batch: Dict[str, Any]) -> StepOutput:
        dev = self.dist.device
        images = batch['images'].to(dev, non_blocking=True)
        if self.cfg.model.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = batch['labels'].to(dev, non_blocking=True)
        losses = model(images, labels)
        loss = sum(losses.values())
        return StepOutput(loss=loss, batch_size=images.shape[0],
                          logs={k: v.detach().float().item() for k, v in losses.items()},
                          counts={'skipped_images': int(batch['skipped']), 'clipped_labels': int(batch['clipped'])})

    @torch.no_grad()
    def predict(self, model: nn.Module, image: torch.Tensor, out_size: Tuple[int, int]) -> torch.Tensor:
        """Label map ``(H, W)`` at ``out_size`` for one normalised image ``(3, h, w)``."""
        d = self.data
        logits = model.inference(image[None].to(self.dist.device), d.inference, d.slide_crop, d.slide_stride,
                                 out_size=out_size)
        return logits[0].argmax(0)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader) -> Dict[str, float]:
        """mIoU / mAcc / aAcc over all processes' shards; unusable samples are excluded and counted."""
        ev = MIoUEvaluator(self.data.num_classes, self.dist.device)
        skipped = clipped = 0
        for batch in loader:
            skipped += batch['skipped']
            clipped += batch['clipped']
            if batch['images'] is None:
                continue
            for image, label in zip(batch['images'], batch['labels']):
                label = label.to(self.dist.device)
                ev.update(self.predict(model, image, tuple(label.shape)), label)
        out = ev.compute(self.dist.device)
        counts = all_reduce_sum({'skipped': float(skipped), 'clipped': float(clipped)}, self.dist.device)
        out.update(skipped_images=int(counts['skipped']), clipped_labels=int(counts['clipped']))
        return out
