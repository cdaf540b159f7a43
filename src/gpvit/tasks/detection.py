"""COCO object detection and instance segmentation (GPViT / GC ViT recipes): Mask R-CNN or RetinaNet.

Model: ``model.name`` is a registered detector (``mask_rcnn``, ``cascade_mask_rcnn`` or ``retinanet``, see
:mod:`gpvit.dense.detectors`); ``model.kwargs`` holds its arguments (``backbone: gpvit_l1``,
``drop_path_rate``, ``adapter_kwargs``, ...); ``model.pretrained`` is the backbone's initial weights (a
classification checkpoint of any supported format). ``num_classes`` (background included) and the test
sizes come from the data. Data: a COCO instances JSON and its image folder (:mod:`gpvit.data.coco`).
Metrics: COCO bbox AP (and segm AP for the mask detectors) with pycocotools over all processes' predictions.
"""
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

import torch
import torch.nn as nn

from ..data.coco import (
    MULTISCALE_SHORT,
    CocoDetection,
    CocoEvaluator,
    collate_detection,
    eval_transform,
    train_transform_1x,
    train_transform_3x,
)
from ..engine.config import checked
from ..engine.distributed import all_gather_object, all_reduce_sum
from ..engine.task import StepOutput
from ..errors import ConfigError
from .base import ModelTask
from .registry import register_task

__all__ = ['DetectionTask', 'DetectionDataConfig']

_logger = logging.getLogger(__name__)


@dataclass
class DetectionDataConfig:
    """The ``data`` section of a detection run (paths relative to ``root`` unless absolute)."""
    format: Literal['coco'] = 'coco'
    root: str = ''
    train_ann: str = 'annotations/instances_train2017.json'
    train_images: str = 'train2017'
    val_ann: str = 'annotations/instances_val2017.json'
    val_images: str = 'val2017'
    # Training augmentation: '1x' single scale (min_size, max_size) + flip; '3x' the multi-scale / crop recipe.
    recipe: Literal['1x', '3x'] = '1x'
    min_size: int = checked(800, lambda v: v >= 32, '>= 32')  # short side (1x training and all testing)
    max_size: int = checked(1333, lambda v: v >= 32, '>= 32')  # long-side cap
    short_sizes: List[int] = checked(default_factory=lambda: list(MULTISCALE_SHORT),
                                     check=lambda v: len(v) > 0 and min(v) >= 32,
                                     rule='non-empty, each >= 32')  # 3x multi-scale short sides
    crop_first: List[int] = checked(default_factory=lambda: [400, 500, 600],
                                    check=lambda v: len(v) > 0 and min(v) >= 32, rule='non-empty, each >= 32')
    crop_range: Tuple[int, int] = (384, 600)  # 3x: random crop side range after the crop_first resize
    final_crop: int = checked(1024, lambda v: v >= 32, '>= 32')  # 3x: final random crop (at most this square)
    hflip: float = checked(0.5, lambda v: 0 <= v <= 1, 'in [0, 1]')

    def validate(self, cfg) -> None:
        # torchvision's keep-ratio resize needs the long-side cap strictly above the short side it resizes to
        if self.min_size >= self.max_size:
            raise ConfigError(f'data.min_size: {self.min_size} must be smaller than data.max_size ({self.max_size}), '
                              f'the long-side cap of the resize')
        if self.recipe == '3x':
            for key in ('short_sizes', 'crop_first'):
                if max(getattr(self, key)) >= self.max_size:
                    raise ConfigError(f'data.{key}: {max(getattr(self, key))} must be smaller than data.max_size '
                                      f'({self.max_size}), the long-side cap of the resize')
        lo, hi = self.crop_range
        if not 0 < lo <= hi:
            raise ConfigError(f'data.crop_range: expected 0 < min <= max, got {[lo, hi]}')
        for key in ('backbone_checkpoint', 'backbone_use_ema', 'min_size', 'max_size'):
            if key in cfg.model.kwargs:
                where = ('model.pretrained (and model.pretrained_use_ema)' if key.startswith('backbone')
                         else f'data.{key}')
                raise ConfigError(f'model.kwargs.{key}: set it as {where}')


@register_task
class DetectionTask(ModelTask):
    """COCO detection; primary metric ``bbox_AP`` (a fraction, COCO's AP@[0.50:0.95])."""
    name = 'detection'
    data_config = DetectionDataConfig
    primary_metric = 'bbox_AP'
    model_names = ('mask_rcnn', 'cascade_mask_rcnn', 'retinanet')
    requires = {'pycocotools': 'dense'}
    higher_is_better = True

    def __init__(self, cfg, dist):
        super().__init__(cfg, dist)
        self.data: DetectionDataConfig = cfg.data
        self.cat_ids: Optional[List[int]] = None
        self.classes: Optional[List[str]] = None

    def _path(self, rel: str) -> Path:
        p = Path(rel).expanduser()
        return p if p.is_absolute() else Path(self.data.root).expanduser() / p

    @classmethod
    def preflight(cls, cfg, splits=('train', 'val')) -> None:
        super().preflight(cfg, splits)  # the model name first
        d = cfg.data
        root = Path(d.root).expanduser()
        if d.root and not root.is_dir():
            raise ConfigError(f'data.root: {root} is not a folder')
        for split in splits:
            for key in (f'{split}_ann', f'{split}_images'):
                p = Path(getattr(d, key)).expanduser()
                p = p if p.is_absolute() else root / p
                if not (p.is_file() if key.endswith('ann') else p.is_dir()):
                    raise ConfigError(f'data.{key}: {p} does not exist (COCO layout: annotations/instances_*.json '
                                      f'and the image folders; set data.root)')

    @property
    def with_masks(self) -> bool:
        return self.cfg.model.name in ('mask_rcnn', 'cascade_mask_rcnn')

    # -- data ------------------------------------------------------------------------------------------------

    def transform(self, split: str):
        d = self.data
        if split != 'train':
            return eval_transform()
        if d.recipe == '1x':
            return train_transform_1x(d.min_size, d.max_size, d.hflip)
        return train_transform_3x(d.max_size, d.short_sizes, d.hflip, d.crop_first, d.crop_range, d.final_crop)

    def build_datasets(self, splits=('train', 'val'), **_: Any) -> Dict[str, Any]:
        out = {}
        for split in splits:
            ds = CocoDetection(self._path(getattr(self.data, f'{split}_ann')),
                               self._path(getattr(self.data, f'{split}_images')), self.transform(split),
                               with_masks=self.with_masks and split == 'train', train=split == 'train',
                               on_error='substitute' if split == 'train' else 'skip')
            if self.cat_ids is None:
                self.cat_ids, self.classes = ds.cat_ids, ds.classes
            elif ds.cat_ids != self.cat_ids:
                raise ConfigError(f'data.{split}_ann: categories differ from the training split\'s')
            out[split] = ds
        return out

    def collate_fn(self, split: str):
        return collate_detection

    # -- model -----------------------------------------------------------------------------------------------

    def model_spec(self) -> Dict[str, Any]:
        kwargs = dict(self.cfg.model.kwargs)
        if self.cat_ids is not None:
            kwargs.setdefault('num_classes', len(self.cat_ids) + 1)
        kwargs.setdefault('min_size', self.data.min_size)
        kwargs.setdefault('max_size', self.data.max_size)
        return {'name': self.cfg.model.name, 'kwargs': kwargs}

    def build_model(self) -> nn.Module:
        spec, m = self.model_spec(), self.cfg.model
        if spec['name'] not in self.model_names:
            raise ConfigError(f'model.name: {spec["name"]} is not a detector ({", ".join(self.model_names)}, with '
                              f'model.kwargs.backbone)')
        if 'num_classes' in spec['kwargs'] and self.cat_ids is not None \
                and spec['kwargs']['num_classes'] != len(self.cat_ids) + 1:
            raise ConfigError(f'model.kwargs.num_classes: {spec["kwargs"]["num_classes"]}, but the data has '
                              f'{len(self.cat_ids)} categories (+1 background = {len(self.cat_ids) + 1})')
        return self.create_model(spec['name'], backbone_checkpoint=m.pretrained,
                                 backbone_use_ema=m.pretrained_use_ema, **spec['kwargs'])

    # -- training ----------------------------------------------------------------------------------------------

    def _to_device(self, batch):
        dev = self.dist.device
        images = [im.to(dev, non_blocking=True) for im in batch['images']]
        targets = [{k: (v.to(dev, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
                   for t in batch['targets']]
        return images, targets

    def train_step(self, model: nn.Module, batch: Dict[str, Any]) -> StepOutput:
        images, targets = self._to_device(batch)
        losses = model(images, [{k: v for k, v in t.items() if k in ('boxes', 'labels', 'masks')}
                                for t in targets])
        loss = sum(losses.values())
        return StepOutput(loss=loss, batch_size=len(images),
                          logs={k: v.detach().float().item() for k, v in losses.items()},
                          counts={'skipped_images': int(batch['skipped'])})

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader) -> Dict[str, float]:
        """COCO AP of the predictions of every process (gathered; rank 0's pycocotools result is shared)."""
        ds = loader.dataset
        ev = CocoEvaluator(ds.ann_file, ds.cat_ids, ('bbox', 'segm') if self.with_masks else ('bbox',))
        skipped = 0
        for batch in loader:
            skipped += batch['skipped']
            if not batch['images']:
                continue
            images, targets = self._to_device(batch)
            for det, t in zip(model(images), targets):
                masks = det['masks'][:, 0] if 'masks' in det else None
                ev.add(t['image_id'], det['boxes'], det['scores'], det['labels'], masks)
        gathered = all_gather_object({'results': ev.results, 'img_ids': ev.img_ids})
        for g in gathered[1:] if self.dist.rank == 0 else []:
            ev.results.extend(g['results'])
            ev.img_ids.extend(g['img_ids'])
        metrics = ev.compute() if self.dist.rank == 0 else None
        metrics = all_gather_object(metrics)[0]
        metrics['images'] = len(set(i for g in gathered for i in g['img_ids']))
        metrics['skipped_images'] = int(all_reduce_sum({'s': float(skipped)}, self.dist.device)['s'])
        return metrics
