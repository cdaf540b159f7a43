"""COCO-format detection / instance-segmentation data (instances JSON + image folder), transforms.v2 recipes,
and COCO evaluation (bbox and segm AP with pycocotools, exactly as COCO reports it).

Broken annotations never stop a run: annotations with a missing, non-finite or degenerate box (no area left
after clipping to the image), an unknown category, or (with masks) no usable polygon (fewer than 3 points) or
RLE are skipped; training images left without annotations are skipped (as the reference's
``filter_empty_gt``); images whose file is missing or unreadable are skipped. Each kind is counted and logged
when the dataset is built (or, for unreadable files, when they are met).

Labels: the categories sorted by id become labels ``1..K``; 0 is the background of torchvision's detectors.
"""
import contextlib
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .folder import DataError, UnreadableImage, decode_image

__all__ = ['CocoDetection', 'CocoEvaluator', 'train_transform_1x', 'train_transform_3x', 'eval_transform',
           'RandomCropAbsoluteRange', 'collate_detection', 'polygons_to_mask']

_logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_ERRORS = 64
MULTISCALE_SHORT = tuple(range(480, 801, 32))  # 480, 512, ..., 800 (DETR-style multi-scale)


def _valid_polygons(segm: Any) -> Optional[Any]:
    """The usable part of a COCO ``segmentation``: polygons with >= 3 points, or an RLE dict; None if nothing."""
    if isinstance(segm, dict):
        return segm if 'counts' in segm and 'size' in segm else None
    if isinstance(segm, list):
        polys = [p for p in segm if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
                 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in p)]
        return polys or None
    return None


def polygons_to_mask(segm: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons or RLE) as a ``(height, width)`` uint8 mask."""
    from pycocotools import mask as mask_utils
    if isinstance(segm, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm['counts'], list):
        rle = mask_utils.frPyObjects(segm, height, width)
    else:
        rle = segm
    return mask_utils.decode(rle).astype(np.uint8)


def _clean_box(bbox: Any, width: int, height: int) -> Optional[List[float]]:
    """COCO xywh -> xyxy clipped to the image; None if malformed or empty after clipping."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    x1, y1 = min(max(x, 0.), width), min(max(y, 0.), height)
    x2, y2 = min(max(x + w, 0.), width), min(max(y + h, 0.), height)
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None
    return [x1, y1, x2, y2]


class CocoDetection(Dataset):
    """Images and instance annotations of a COCO instances JSON.

    Samples: ``{'image': (3, H, W) float in [0, 1], 'target': {'boxes' (N, 4) xyxy, 'labels' (N,), 'masks'
    (N, H, W) uint8 (with masks), 'image_id', 'orig_size'}, 'skipped': int}``.
    """

    def __init__(self, ann_file, img_dir, transforms: Optional[Callable] = None, with_masks: bool = True,
                 train: bool = True, on_error: str = 'substitute', skip_crowd: bool = True):
        """
        Args:
            ann_file: the instances JSON.
            img_dir: the folder of the images (``file_name`` is relative to it).
            transforms: a transforms.v2 callable on ``(tv_tensors.Image, target dict)``.
            with_masks: decode instance masks (Mask R-CNN).
            train: drop images without usable annotations.
            on_error: ``'substitute'`` (training: the next readable image takes the place of an unreadable one)
                or ``'skip'`` (evaluation: the sample has ``image=None`` and is counted).
            skip_crowd: leave out ``iscrowd`` annotations (the reference ignores them in training).
        """
        if on_error not in ('substitute', 'skip'):
            raise ValueError(f"on_error must be 'substitute' or 'skip', got {on_error!r}")
        self.ann_file, self.img_dir = Path(ann_file), Path(img_dir)
        if not self.ann_file.is_file():
            raise DataError(f'{self.ann_file}: no such annotation file')
        if not self.img_dir.is_dir():
            raise DataError(f'{self.img_dir}: no such image folder')
        try:
            data = json.loads(self.ann_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f'{self.ann_file}: not a JSON file: {e}') from None
        if not isinstance(data, dict) or not isinstance(data.get('images'), list) \
                or not isinstance(data.get('categories'), list):
            raise DataError(f'{self.ann_file}: not a COCO instances file (needs "images", "annotations", '
                            f'"categories")')
        self.transforms, self.with_masks, self.train, self.on_error = transforms, with_masks, train, on_error
        bad = [i for i, c in enumerate(data['categories'])
               if not isinstance(c, dict) or not isinstance(c.get('id'), int) or isinstance(c.get('id'), bool)]
        if bad:
            raise DataError(f'{self.ann_file}: category {bad[0]} ({data["categories"][bad[0]]!r}) has no integer '
                            f'"id"; every entry of "categories" needs one ({len(bad)} without)')
        ids = [c['id'] for c in data['categories']]
        if len(set(ids)) != len(ids):
            raise DataError(f'{self.ann_file}: category ids repeat ({sorted(i for i in set(ids) if ids.count(i) > 1)})')
        cats = sorted(data['categories'], key=lambda c: c['id'])
        self.cat_ids = [c['id'] for c in cats]
        self.classes = [c.get('name', str(c['id'])) for c in cats]
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        counts = {'annotations': 0, 'bad_box': 0, 'bad_category': 0, 'bad_segmentation': 0, 'crowd': 0,
                  'unknown_image_id': 0, 'bad_image_records': 0, 'images_without_annotations': 0,
                  'missing_files': 0}
        images = {}
        for im in data['images']:
            try:
                images[im['id']] = {'id': im['id'], 'file_name': im['file_name'], 'width': int(im['width']),
                                    'height': int(im['height']), 'anns': []}
            except (KeyError, TypeError, ValueError):
                counts['bad_image_records'] += 1  # no id, file_name, width or height
        for ann in data.get('annotations') or []:
            counts['annotations'] += 1
            im = images.get(ann.get('image_id')) if isinstance(ann, dict) else None
            if im is None:
                counts['unknown_image_id'] += 1  # not a dict, or of an image that is not listed
                continue
            if ann.get('category_id') not in self.label_of:
                counts['bad_category'] += 1
                continue
            if ann.get('iscrowd', 0) and skip_crowd:
                counts['crowd'] += 1
                continue
            box = _clean_box(ann.get('bbox'), im['width'], im['height'])
            if box is None:
                counts['bad_box'] += 1
                continue
            segm = None
            if with_masks:
                segm = _valid_polygons(ann.get('segmentation'))
                if segm is None:
                    counts['bad_segmentation'] += 1
                    continue
            im['anns'].append((box, self.label_of[ann['category_id']], segm))
        self.images = []
        for im in images.values():
            if not (self.img_dir / im['file_name']).is_file():
                counts['missing_files'] += 1
                continue
            if train and not im['anns']:
                counts['images_without_annotations'] += 1
                continue
            self.images.append(im)
        self.counts = counts
        skipped = {k: v for k, v in counts.items() if k != 'annotations' and v}
        if skipped:
            _logger.warning('%s: %d images kept; skipped: %s', self.ann_file.name, len(self.images),
                            ', '.join(f'{v} {k.replace("_", " ")}' for k, v in skipped.items()))
        if not self.images:
            raise DataError(f'{self.ann_file}: no usable image (counts: {counts})')
        self._reported: set = set()

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return f'CocoDetection({str(self.ann_file)!r}, {len(self)} images, {len(self.cat_ids)} categories)'

    def load(self, index: int) -> Tuple[tv_tensors.Image, Dict[str, Any]]:
        im = self.images[index]
        img = decode_image(self.img_dir / im['file_name'], im['file_name'])
        W, H = img.size
        if (W, H) != (im['width'], im['height']):
            raise UnreadableImage(f'{im["file_name"]}: {W}x{H} pixels, the annotation file says '
                                  f'{im["width"]}x{im["height"]}')
        image = tv_tensors.Image(torch.from_numpy(np.array(img)).permute(2, 0, 1))
        anns = im['anns']
        boxes = torch.tensor([a[0] for a in anns], dtype=torch.float32).reshape(-1, 4)
        target = {'boxes': tv_tensors.BoundingBoxes(boxes, format='XYXY', canvas_size=(H, W)),
                  'labels': torch.tensor([a[1] for a in anns], dtype=torch.int64),
                  'image_id': im['id'], 'orig_size': (H, W)}
        if self.with_masks:
            masks = np.stack([polygons_to_mask(a[2], H, W) for a in anns]) if anns else np.zeros((0, H, W), np.uint8)
            target['masks'] = tv_tensors.Mask(torch.from_numpy(masks))
        return image, target

    def __getitem__(self, index: int) -> Dict[str, Any]:
        skipped, n = 0, len(self)
        for attempt in range(min(MAX_CONSECUTIVE_ERRORS, n)):
            i = (index + attempt) % n
            try:
                image, target = self.load(i)
            except UnreadableImage as e:
                if i not in self._reported:
                    self._reported.add(i)
                    _logger.warning('skipping unreadable image %s', e)
                skipped += 1
                if self.on_error == 'skip':
                    return {'image': None, 'target': None, 'skipped': skipped}
                continue
            if self.transforms is not None:
                image, target = self.transforms(image, target)
            out = {'boxes': target['boxes'].as_subclass(torch.Tensor), 'labels': target['labels'],
                   'image_id': target['image_id'], 'orig_size': target['orig_size']}
            if 'masks' in target:
                out['masks'] = target['masks'].as_subclass(torch.Tensor)
            return {'image': image.as_subclass(torch.Tensor), 'target': out, 'skipped': skipped}
        raise DataError(f'{min(MAX_CONSECUTIVE_ERRORS, n)} consecutive unreadable images starting at sample '
                        f'{index} of {self!r}: the data looks corrupt (see the warnings above)')


def collate_detection(batch: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Lists of images and targets (sizes differ); skipped samples dropped and counted."""
    kept = [s for s in batch if s['image'] is not None]
    return {'images': [s['image'] for s in kept], 'targets': [s['target'] for s in kept],
            'skipped': sum(s['skipped'] for s in batch)}


# ---------------------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------------------

class RandomCropAbsoluteRange:
    """Crop a random ``h x w`` window with ``h, w`` uniform in ``[min(side, lo), min(side, hi)]`` (mmdet's
    ``RandomCrop(crop_type='absolute_range')``); boxes are shifted and clipped, masks cropped. A crop may hold
    no object (``allow_negative_crop``); :class:`~torchvision.transforms.v2.SanitizeBoundingBoxes` then drops
    the boxes left empty."""

    def __init__(self, lo: int, hi: int):
        if not 0 < lo <= hi:
            raise ValueError(f'crop range must satisfy 0 < lo <= hi, got ({lo}, {hi})')
        self.lo, self.hi = lo, hi

    def __call__(self, image, target):
        H, W = image.shape[-2:]
        ch = int(torch.randint(min(H, self.lo), min(H, self.hi) + 1, ()))
        cw = int(torch.randint(min(W, self.lo), min(W, self.hi) + 1, ()))
        top = int(torch.randint(0, H - ch + 1, ()))
        left = int(torch.randint(0, W - cw + 1, ()))
        image = TF.crop(image, top, left, ch, cw)
        target = dict(target)
        for key in ('boxes', 'masks'):
            if key in target:
                target[key] = TF.crop(target[key], top, left, ch, cw)
        return image, target


def _finish() -> List[Callable]:
    return [v2.ToDtype({tv_tensors.Image: torch.float32, 'others': None}, scale=True),
            v2.SanitizeBoundingBoxes(min_size=1)]


def train_transform_1x(min_size: int = 800, max_size: int = 1333, hflip: float = 0.5) -> Callable:
    """Single scale: keep-ratio resize (short side ``min_size``, long side at most ``max_size``), flip."""
    return v2.Compose([v2.Resize(min_size, max_size=max_size), v2.RandomHorizontalFlip(hflip), *_finish()])


def train_transform_3x(max_size: int = 1333, short_sizes: Sequence[int] = MULTISCALE_SHORT, hflip: float = 0.5,
                       crop_first: Sequence[int] = (400, 500, 600), crop_range: Tuple[int, int] = (384, 600),
                       final_crop: int = 1024) -> Callable:
    """The 3x multi-scale recipe: flip; one of (a) a random short side in ``short_sizes`` or (b) a resize to one
    of ``crop_first``, a random crop in ``crop_range`` and a random short side in ``short_sizes`` (DETR-style
    AutoAugment); then a random crop of at most ``final_crop`` x ``final_crop``."""
    multiscale = v2.RandomChoice([v2.Resize(s, max_size=max_size) for s in short_sizes])
    return v2.Compose([
        v2.RandomHorizontalFlip(hflip),
        v2.RandomChoice([
            multiscale,
            v2.Compose([v2.RandomChoice([v2.Resize(s, max_size=max_size) for s in crop_first]),
                        RandomCropAbsoluteRange(*crop_range), v2.SanitizeBoundingBoxes(min_size=1), multiscale]),
        ]),
        RandomCropAbsoluteRange(final_crop, final_crop),
        *_finish(),
    ])


def eval_transform() -> Callable:
    """No resizing here: the detector resizes for inference and maps predictions back to the image."""
    return v2.Compose(_finish())


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------

class CocoEvaluator:
    """COCO bbox / segm AP of predictions with pycocotools' ``COCOeval`` (standard parameters).

    The ground truth is the annotation file itself, with only the annotations pycocotools cannot read removed
    (a missing or malformed box or, for segm, segmentation; an unknown image or category): degenerate but
    well-formed ground truth stays, as COCO counts it. Only the images that were evaluated are scored.
    """
    STAT_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')

    def __init__(self, ann_file, cat_ids: Sequence[int], iou_types: Sequence[str] = ('bbox',)):
        for t in iou_types:
            if t not in ('bbox', 'segm'):
                raise ValueError(f"iou_types must be 'bbox' and/or 'segm', got {t!r}")
        self.ann_file = Path(ann_file)
        self.cat_ids = list(cat_ids)
        self.iou_types = tuple(iou_types)
        self.results: List[Dict[str, Any]] = []
        self.img_ids: List[int] = []

    def add(self, image_id: int, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
            masks: Optional[torch.Tensor] = None) -> None:
        """Predictions of one image in its original coordinates: ``boxes`` (N, 4) xyxy, ``labels`` 1..K,
        ``masks`` (N, H, W) binary (or probabilities, thresholded at 0.5)."""
        self.img_ids.append(int(image_id))
        if boxes.numel() == 0:
            return
        boxes = boxes.detach().float().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
        scores, labels = scores.detach().float().cpu().tolist(), labels.detach().cpu().tolist()
        rles = None
        if masks is not None and 'segm' in self.iou_types:
            from pycocotools import mask as mask_utils
            m = masks.detach()
            m = (m > 0.5) if m.is_floating_point() else m.bool()
            m = np.asfortranarray(m.cpu().numpy().astype(np.uint8).transpose(1, 2, 0))
            rles = mask_utils.encode(m)
            for r in rles:
                r['counts'] = r['counts'].decode('ascii')
        for i, (box, score, label) in enumerate(zip(xywh, scores, labels)):
            res = {'image_id': int(image_id), 'category_id': self.cat_ids[int(label) - 1], 'bbox': box,
                   'score': float(score)}
            if rles is not None:
                res['segmentation'] = rles[i]
            self.results.append(res)

    def merge(self, others: Sequence['CocoEvaluator']) -> None:
        """Take the predictions gathered on other processes."""
        for o in others:
            if o is not self:
                self.results.extend(o.results)
                self.img_ids.extend(o.img_ids)

    def _ground_truth(self, iou_type: str):
        from pycocotools.coco import COCO
        data = json.loads(self.ann_file.read_text())
        image_ids = {im['id'] for im in data['images']}
        cats = set(self.cat_ids)
        anns = []
        for a in data.get('annotations') or []:
            box = a.get('bbox')
            if a.get('image_id') not in image_ids or a.get('category_id') not in cats or not (
                    isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and math.isfinite(v)
                                                                    for v in box)):
                continue
            if iou_type == 'segm' and _valid_polygons(a.get('segmentation')) is None:
                continue
            a = dict(a)
            if iou_type == 'segm':
                a['segmentation'] = _valid_polygons(a['segmentation'])
            a.setdefault('area', float(box[2] * box[3]))
            a.setdefault('iscrowd', 0)
            anns.append(a)
        data['annotations'] = anns
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    def compute(self) -> Dict[str, float]:
        """``{'<type>_AP', '<type>_AP50', ...}`` for each IoU type (AP over IoU 0.50:0.95, as a fraction);
        0 where there is nothing to score. The COCO summary tables are logged."""
        from pycocotools.cocoeval import COCOeval
        out: Dict[str, float] = {}
        img_ids = sorted(set(self.img_ids))
        for t in self.iou_types:
            if not self.results or not img_ids:
                out.update({f'{t}_{k}': 0. for k in self.STAT_NAMES})
                continue
            gt = self._ground_truth(t)
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                # Each type scores its own geometry (the areas of the size ranges come from it, as in COCO's
                # own result files): boxes for bbox, masks for segm.
                drop = 'segmentation' if t == 'bbox' else 'bbox'
                dt = gt.loadRes([{k: v for k, v in r.items() if k != drop} for r in self.results])
                ev = COCOeval(gt, dt, t)
                ev.params.imgIds = img_ids
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
            _logger.info('COCO %s evaluation on %d images:\n%s', t, len(img_ids), buf.getvalue().rstrip())
            out.update({f'{t}_{k}': float(v) for k, v in zip(self.STAT_NAMES, ev.stats[:6])})
        return out
