"""Image classification (ImageNet recipes of GPViT and GC ViT): model, data, loss and top-1 / top-5.

Data: an ImageNet-style folder (``ROOT/train/<class>/*``, ``ROOT/val/<class>/*``) or two LMDB databases
written by ``gpvit lmdb`` (``ROOT/train``, ``ROOT/val`` by default). Augmentation through timm's
``create_transform``; Mixup / CutMix with timm's ``Mixup`` and ``SoftTargetCrossEntropy`` (label smoothing
folded into the mixed targets), else timm's ``LabelSmoothingCrossEntropy``.
"""
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from ..data import DataError, ImageFolderDataset, LMDBDataset, collate_skipping, eval_transform, train_transform
from ..engine.config import checked
from ..engine.distributed import all_reduce_sum
from ..engine.task import StepOutput
from ..errors import ConfigError
from .base import ModelTask
from .registry import register_task

__all__ = ['ClassificationTask', 'ClassificationDataConfig', 'TrainAugConfig', 'MixupConfig']

_logger = logging.getLogger(__name__)


@dataclass
class TrainAugConfig:
    """Training augmentation (timm ``create_transform(is_training=True)``)."""
    scale: Tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect range
    hflip: float = checked(0.5, lambda v: 0 <= v <= 1, 'in [0, 1]')
    vflip: float = checked(0., lambda v: 0 <= v <= 1, 'in [0, 1]')
    auto_augment: Optional[str] = 'rand-m9-mstd0.5-inc1'  # timm policy string; null for none
    color_jitter: Optional[float] = None  # timm disables it while RandAugment is on
    interpolation: Literal['bicubic', 'bilinear', 'nearest', 'random'] = 'bicubic'
    re_prob: float = checked(0.25, lambda v: 0 <= v <= 1, 'in [0, 1]')  # RandomErasing probability
    re_mode: Literal['pixel', 'rand', 'const'] = 'pixel'
    re_count: int = checked(1, lambda v: v >= 1, '>= 1')


@dataclass
class MixupConfig:
    """Batch Mixup / CutMix (timm ``Mixup``); both alphas 0 turn it off."""
    mixup_alpha: float = checked(0.8, lambda v: v >= 0, '>= 0')
    cutmix_alpha: float = checked(1.0, lambda v: v >= 0, '>= 0')
    prob: float = checked(1.0, lambda v: 0 <= v <= 1, 'in [0, 1]')  # probability of mixing a batch
    switch_prob: float = checked(0.5, lambda v: 0 <= v <= 1, 'in [0, 1]')  # CutMix instead of Mixup
    mode: Literal['batch', 'pair', 'elem'] = 'batch'

    @property
    def enabled(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0


@dataclass
class ClassificationDataConfig:
    """The ``data`` section of a classification run."""
    format: Literal['folder', 'lmdb'] = 'folder'
    root: str = ''  # holds the splits
    train_split: str = 'train'  # folder (or LMDB database) under root
    val_split: str = 'val'
    num_classes: Optional[int] = checked(None, lambda v: v is None or v > 0, '> 0 or null (from the data)')
    img_size: int = checked(224, lambda v: v >= 32, '>= 32')
    mean: Tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: Tuple[float, float, float] = IMAGENET_DEFAULT_STD
    train_aug: TrainAugConfig = field(default_factory=TrainAugConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)
    label_smoothing: float = checked(0.1, lambda v: 0 <= v < 1, 'in [0, 1)')
    # Evaluation: resize to img_size / crop_pct, centre crop img_size ('center'), or resize to img_size ('squash').
    crop_pct: float = checked(0.875, lambda v: 0 < v <= 1, 'in (0, 1]')  # during training
    test_crop_pct: Optional[float] = checked(None, lambda v: v is None or 0 < v <= 1, 'in (0, 1] or null')  # gpvit eval
    crop_mode: Literal['center', 'squash', 'border'] = 'center'
    eval_interpolation: Literal['bicubic', 'bilinear', 'nearest'] = 'bicubic'

    def validate(self, cfg) -> None:
        a = self.train_aug
        for key, (lo, hi) in (('scale', a.scale), ('ratio', a.ratio)):
            if not 0 < lo <= hi:
                raise ConfigError(f'data.train_aug.{key}: expected 0 < min <= max, got {[lo, hi]}')
        if a.scale[1] > 1:
            raise ConfigError(f'data.train_aug.scale: the area fraction cannot exceed 1, got {list(a.scale)}')
        if a.auto_augment:
            from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform
            hp = dict(translate_const=int(self.img_size * 0.45), img_mean=(124, 116, 104))
            try:
                if a.auto_augment.startswith('rand'):
                    rand_augment_transform(a.auto_augment, hp)
                elif a.auto_augment.startswith('augmix'):
                    augment_and_mix_transform(a.auto_augment, hp)
                else:
                    auto_augment_transform(a.auto_augment, hp)
            except (AssertionError, KeyError, ValueError, IndexError) as e:
                raise ConfigError(f'data.train_aug.auto_augment: not a timm policy string '
                                  f'(e.g. rand-m9-mstd0.5-inc1): {a.auto_augment!r} ({type(e).__name__}: {e})') from None
        if any(s <= 0 for s in self.std):
            raise ConfigError(f'data.std: must be > 0, got {list(self.std)}')
        if self.mixup.enabled and cfg.loader.batch_size % 2:
            raise ConfigError(f'loader.batch_size: Mixup/CutMix needs an even batch size, got {cfg.loader.batch_size}')
        mk = cfg.model.kwargs.get('num_classes')
        if mk is not None and self.num_classes is not None and mk != self.num_classes:
            raise ConfigError(f'model.kwargs.num_classes: {mk} differs from data.num_classes {self.num_classes}')


@register_task
class ClassificationTask(ModelTask):
    """Image classification; primary metric ``top1`` (%)."""
    name = 'classification'
    data_config = ClassificationDataConfig
    primary_metric = 'top1'
    higher_is_better = True

    def __init__(self, cfg, dist):
        super().__init__(cfg, dist)
        self.data: ClassificationDataConfig = cfg.data
        self.classes: Optional[List[str]] = None
        self.mixup: Optional[Mixup] = None
        self.criterion: Optional[nn.Module] = None

    @classmethod
    def preflight(cls, cfg, splits=('train', 'val')) -> None:
        super().preflight(cfg, splits)  # the model name first
        d = cfg.data
        if not d.root:
            raise ConfigError('data.root: required (the folder holding the train and val splits)')
        root = Path(d.root).expanduser()
        if not root.is_dir():
            raise ConfigError(f'data.root: {root} is not a folder')
        for split in splits:
            name = d.train_split if split == 'train' else d.val_split
            if not (root / name).exists():
                key = 'data.train_split' if split == 'train' else 'data.val_split'
                have = sorted(p.name for p in root.iterdir())[:10]
                raise ConfigError(f'{key}: {root / name} does not exist ({root} holds {have}); expected '
                                  + ('ROOT/train/<class>/*.jpeg and ROOT/val/<class>/*.jpeg' if d.format == 'folder'
                                     else 'LMDB databases written by `gpvit lmdb` under ROOT'))

    # -- data ------------------------------------------------------------------------------------------------

    def _split_path(self, split: str) -> Path:
        if not self.data.root:
            raise ConfigError('data.root: required (the folder holding the train and val splits)')
        root = Path(self.data.root).expanduser()
        if not root.exists():
            raise DataError(f'data.root: {root} does not exist')
        return root / (self.data.train_split if split == 'train' else self.data.val_split)

    def transform(self, split: str, crop_pct: Optional[float] = None):
        d, a = self.data, self.data.train_aug
        if split == 'train':
            return train_transform(d.img_size, a.scale, a.ratio, a.hflip, a.vflip, a.auto_augment, a.color_jitter,
                                   a.interpolation, a.re_prob, a.re_mode, a.re_count, d.mean, d.std)
        return eval_transform(d.img_size, crop_pct or d.crop_pct, d.crop_mode, d.eval_interpolation, d.mean, d.std)

    def build_datasets(self, splits=('train', 'val'), crop_pct: Optional[float] = None) -> Dict[str, Any]:
        """Datasets of the requested splits; class indices from the training split (or the first one built)."""
        cls = ImageFolderDataset if self.data.format == 'folder' else LMDBDataset
        out = {}
        for split in splits:
            ds = cls(self._split_path(split), self.transform(split, crop_pct), class_names=self.classes,
                     on_error='substitute' if split == 'train' else 'skip')
            if self.classes is None:
                self.classes = ds.classes
            out[split] = ds
        n = len(self.classes)
        if self.data.num_classes is not None and self.data.num_classes != n:
            raise DataError(f'data.num_classes is {self.data.num_classes}, but the data has {n} classes')
        return out

    @property
    def num_classes(self) -> int:
        if self.data.num_classes is not None:
            return self.data.num_classes
        if self.classes is None:
            raise RuntimeError('build_datasets() first')
        return len(self.classes)

    def collate_fn(self, split: str):
        return collate_skipping

    # -- model -----------------------------------------------------------------------------------------------

    def model_spec(self) -> Dict[str, Any]:
        kwargs = dict(self.cfg.model.kwargs)
        kwargs.setdefault('num_classes', self.num_classes)
        return {'name': self.cfg.model.name, 'kwargs': kwargs}

    def build_model(self) -> nn.Module:
        spec = self.model_spec()
        m = self.cfg.model
        if m.pretrained:
            return self.create_model(spec['name'], checkpoint=m.pretrained, use_ema=m.pretrained_use_ema,
                                     **spec['kwargs'])
        return self.create_model(spec['name'], **spec['kwargs'])

    # -- training ----------------------------------------------------------------------------------------------

    def train_begin(self, model: nn.Module) -> None:
        d = self.data
        if d.mixup.enabled:
            mx = d.mixup
            self.mixup = Mixup(mixup_alpha=mx.mixup_alpha, cutmix_alpha=mx.cutmix_alpha, prob=mx.prob,
                               switch_prob=mx.switch_prob, mode=mx.mode, label_smoothing=d.label_smoothing,
                               num_classes=self.num_classes)
            self.criterion = SoftTargetCrossEntropy()
        elif d.label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=d.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

    def _to_device(self, batch: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        dev = self.dist.device
        images = batch['images'].to(dev, non_blocking=True)
        if self.cfg.model.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, batch['targets'].to(dev, non_blocking=True)

    def train_step(self, model: nn.Module, batch: Dict[str, Any]) -> StepOutput:
        images, targets = self._to_device(batch)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        loss = self.criterion(model(images), targets)
        return StepOutput(loss=loss, batch_size=images.shape[0], counts={'skipped_images': int(batch['skipped'])})

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader) -> Dict[str, float]:
        """Top-1 / top-5 accuracy (%) and cross-entropy over all processes' shards; unreadable images are
        excluded and counted (``skipped_images``)."""
        sums = {'correct1': 0., 'correct5': 0., 'loss': 0., 'count': 0., 'skipped_images': 0.}
        for batch in loader:
            sums['skipped_images'] += batch['skipped']
            if batch['images'] is None:
                continue
            images, targets = self._to_device(batch)
            logits = model(images).float()
            # counts, not timm's accuracy(): the shards' counts are summed over processes before dividing
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hit = top == targets[:, None]
            sums['correct1'] += hit[:, 0].sum().item()
            sums['correct5'] += hit.any(dim=1).sum().item()
            sums['loss'] += F.cross_entropy(logits, targets, reduction='sum').item()
            sums['count'] += targets.shape[0]
        sums = all_reduce_sum(sums, self.dist.device)
        n = max(sums['count'], 1.)
        return {'top1': 100. * sums['correct1'] / n, 'top5': 100. * sums['correct5'] / n, 'loss': sums['loss'] / n,
                'count': int(sums['count']), 'skipped_images': int(sums['skipped_images'])}
