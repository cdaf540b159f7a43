"""ADE20K-format semantic-segmentation data and the reference (mmseg) transforms.

Layout (``ADEChallengeData2016``)::

    ROOT/images/training/*.jpg        ROOT/annotations/training/*.png
    ROOT/images/validation/*.jpg      ROOT/annotations/validation/*.png

An image and its label map share the file stem. Labels are single-channel PNGs; with ``reduce_zero_label``
(ADE20K) 0 ("other") becomes 255 (ignored) and 1..150 become 0..149. Label values outside
``[0, num_classes)`` other than 255 are set to 255 and counted (``clipped_labels``); unreadable images or label
maps, and label maps whose size differs from the image, are skipped and counted (``skipped_images``).

Training transforms (the reference pipeline): random rescale to ``scale x U(ratio_range)`` keeping the aspect
ratio, random crop with ``cat_max_ratio``, horizontal flip, photometric distortion, normalisation, padding to
the crop size (labels padded with 255). Evaluation: rescale keeping the aspect ratio to ``scale``, each side
rounded up to a multiple of ``size_divisor``; the label map stays at its original size and predictions are
resized back to it.
"""
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from .folder import IMG_EXTENSIONS, DataError, UnreadableImage, decode_image

__all__ = ['ADE20KDataset', 'SegTrainTransform', 'SegEvalTransform', 'photometric_distortion', 'collate_seg',
           'ADE_MEAN', 'ADE_STD']

_logger = logging.getLogger(__name__)

IGNORE_INDEX = 255
ADE_MEAN = (123.675, 116.28, 103.53)  # RGB, 0-255 scale
ADE_STD = (58.395, 57.12, 57.375)
MAX_CONSECUTIVE_ERRORS = 64


def _rescale_size(w: int, h: int, scale: Tuple[int, int]) -> Tuple[int, int]:
    """mmcv ``rescale_size`` with keep_ratio: the largest size fitting ``max(scale)`` on the long side and
    ``min(scale)`` on the short side."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(w * factor + 0.5), int(h * factor + 0.5)


def _resize(img: Image.Image, label: Optional[np.ndarray], size: Tuple[int, int]):
    img = img.resize(size, Image.BILINEAR)
    if label is not None:
        label = np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))
    return img, label


def photometric_distortion(img: np.ndarray, brightness_delta: int = 32, contrast: Tuple[float, float] = (0.5, 1.5),
                           saturation: Tuple[float, float] = (0.5, 1.5), hue_delta: int = 18) -> np.ndarray:
    """mmseg's PhotoMetricDistortion on a uint8 RGB array: brightness, then contrast either before or after
    saturation and hue, each applied with probability 0.5 (Python's ``random``). Saturation and hue act in HSV
    (PIL's, hue on a 0-255 circle; ``hue_delta`` is in OpenCV's 0-180 units as in the reference)."""
    out = img.astype(np.float32)

    def _contrast(x):
        if random.randint(0, 1):
            x = np.clip(x * random.uniform(*contrast), 0, 255)
        return x

    if random.randint(0, 1):
        out = np.clip(out + random.uniform(-brightness_delta, brightness_delta), 0, 255)
    contrast_first = random.randint(0, 1) == 1
    if contrast_first:
        out = _contrast(out)
    do_sat, do_hue = random.randint(0, 1), random.randint(0, 1)
    if do_sat or do_hue:
        hsv = np.asarray(Image.fromarray(out.astype(np.uint8)).convert('HSV')).astype(np.float32)
        if do_sat:
            hsv[..., 1] = np.clip(hsv[..., 1] * random.uniform(*saturation), 0, 255)
        if do_hue:
            hsv[..., 0] = (hsv[..., 0] + random.randint(-hue_delta, hue_delta) * 256 / 180) % 256
        out = np.asarray(Image.fromarray(hsv.astype(np.uint8), 'HSV').convert('RGB')).astype(np.float32)
    if not contrast_first:
        out = _contrast(out)
    return out.astype(np.uint8)


def _to_tensor(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    x = torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


@dataclass
class SegTrainTransform:
    """The reference training pipeline on a PIL image and a label array (already label-mapped)."""
    scale: Tuple[int, int] = (2048, 512)
    ratio_range: Tuple[float, float] = (0.5, 2.0)
    crop_size: Tuple[int, int] = (512, 512)  # (h, w)
    cat_max_ratio: float = 0.75
    hflip: float = 0.5
    photometric: bool = True
    mean: Tuple[float, float, float] = ADE_MEAN
    std: Tuple[float, float, float] = ADE_STD

    def _crop_box(self, label: np.ndarray) -> Tuple[int, int, int, int]:
        ch, cw = self.crop_size
        h, w = label.shape
        for _ in range(10):
            y = random.randint(0, max(h - ch, 0))
            x = random.randint(0, max(w - cw, 0))
            box = (y, min(y + ch, h), x, min(x + cw, w))
            if self.cat_max_ratio >= 1:
                return box
            crop = label[box[0]:box[1], box[2]:box[3]]
            _, counts = np.unique(crop[crop != IGNORE_INDEX], return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                return box
        return box

    def __call__(self, img: Image.Image, label: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        r = random.uniform(*self.ratio_range)
        size = _rescale_size(img.width, img.height, (int(self.scale[0] * r), int(self.scale[1] * r)))
        img, label = _resize(img, label, size)
        y1, y2, x1, x2 = self._crop_box(label)
        img, label = img.crop((x1, y1, x2, y2)), label[y1:y2, x1:x2]
        if random.random() < self.hflip:
            img, label = img.transpose(Image.FLIP_LEFT_RIGHT), label[:, ::-1]
        if self.photometric:
            img = Image.fromarray(photometric_distortion(np.asarray(img)))
        x = _to_tensor(img, self.mean, self.std)
        y = torch.from_numpy(np.array(label, dtype=np.int64))
        ch, cw = self.crop_size
        pad = (0, max(cw - x.shape[2], 0), 0, max(ch - x.shape[1], 0))
        if any(pad):
            x = F.pad(x, pad, value=0.)
            y = F.pad(y, pad, value=IGNORE_INDEX)
        return x, y


@dataclass
class SegEvalTransform:
    """Rescale keeping the ratio to ``scale`` (sides rounded up to ``size_divisor``); the label is untouched."""
    scale: Tuple[int, int] = (2048, 512)
    size_divisor: int = 32
    mean: Tuple[float, float, float] = ADE_MEAN
    std: Tuple[float, float, float] = ADE_STD

    def __call__(self, img: Image.Image, label: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        w, h = _rescale_size(img.width, img.height, self.scale)
        d = self.size_divisor
        if d > 1:
            w, h = int(math.ceil(w / d)) * d, int(math.ceil(h / d)) * d
        img = img.resize((w, h), Image.BILINEAR)
        return _to_tensor(img, self.mean, self.std), torch.from_numpy(np.array(label, dtype=np.int64))


def _scan(root: Path, img_dir: str, ann_dir: str) -> Tuple[List[Tuple[Path, Path]], int]:
    """Pairs (image, label) matched by stem; images without a label map are counted and left out."""
    images = root / img_dir
    anns = root / ann_dir
    for d, what in ((images, 'images'), (anns, 'annotations')):
        if not d.is_dir():
            raise DataError(f'{d}: no such folder (expected ROOT/images/<split>/*.jpg and '
                            f'ROOT/annotations/<split>/*.png, the ADEChallengeData2016 layout)')
    labels = {p.stem: p for p in anns.iterdir() if p.suffix.lower() == '.png'}
    pairs, missing = [], 0
    for p in sorted(images.iterdir()):
        if p.suffix.lower() not in IMG_EXTENSIONS:
            continue
        if p.stem in labels:
            pairs.append((p, labels[p.stem]))
        else:
            missing += 1
    if missing:
        _logger.warning('%s: %d image(s) without a label map in %s are left out', images, missing, anns)
    if not pairs:
        raise DataError(f'{images}: no image with a label map of the same name in {anns}')
    return pairs, missing


class ADE20KDataset(Dataset):
    """One split of an ADE20K-format dataset; samples ``{'image', 'label', 'skipped', 'clipped', 'name'}``.

    ``on_error='substitute'`` (training) replaces an unusable sample by the next usable one (batches stay full);
    ``'skip'`` (evaluation) returns a sample with ``image=None`` that :func:`collate_seg` drops; both count it.
    """

    def __init__(self, root, split: str = 'training', num_classes: int = 150, reduce_zero_label: bool = True,
                 transform=None, on_error: str = 'substitute', img_dir: Optional[str] = None,
                 ann_dir: Optional[str] = None):
        if on_error not in ('substitute', 'skip'):
            raise ValueError(f"on_error must be 'substitute' or 'skip', got {on_error!r}")
        self.root = Path(root)
        self.split = split
        self.num_classes = num_classes
        self.reduce_zero_label = reduce_zero_label
        self.transform = transform
        self.on_error = on_error
        self.samples, self.missing_labels = _scan(self.root, img_dir or f'images/{split}',
                                                  ann_dir or f'annotations/{split}')
        self._reported: set = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f'ADE20KDataset({str(self.root)!r}, {self.split!r}, {len(self)} images)'

    def map_labels(self, label: np.ndarray) -> Tuple[np.ndarray, int]:
        """Apply ``reduce_zero_label`` and set out-of-range values to 255; returns the count of those."""
        label = label.astype(np.int64)
        if self.reduce_zero_label:
            label = np.where(label == 0, IGNORE_INDEX, label - 1)
            label[label == IGNORE_INDEX - 1] = IGNORE_INDEX  # 255 stays ignored
        bad = (label != IGNORE_INDEX) & ((label < 0) | (label >= self.num_classes))
        n_bad = int(bad.sum())
        if n_bad:
            label[bad] = IGNORE_INDEX
        return label.astype(np.uint8), n_bad

    def load(self, index: int) -> Tuple[Image.Image, np.ndarray, int]:
        img_path, ann_path = self.samples[index]
        img = decode_image(img_path, str(img_path))
        try:
            with Image.open(ann_path) as a:
                if a.mode not in ('L', 'P', 'I', 'I;16'):
                    raise UnreadableImage(f'{ann_path}: a label map must be single-channel, got mode {a.mode}')
                label = np.array(a)
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise UnreadableImage(f'{ann_path}: {type(e).__name__}: {e}') from None
        if label.shape != (img.height, img.width):
            raise UnreadableImage(f'{ann_path}: label map {label.shape[::-1]} differs from the image size '
                                  f'{img.size}')
        label, clipped = self.map_labels(label)
        if clipped and index not in self._reported:
            self._reported.add(index)
            _logger.warning('%s: %d label value(s) outside [0, %d) set to ignore (255)', ann_path, clipped,
                            self.num_classes)
        return img, label, clipped

    def __getitem__(self, index: int) -> Dict[str, Any]:
        skipped, n = 0, len(self)
        for attempt in range(min(MAX_CONSECUTIVE_ERRORS, n)):
            i = (index + attempt) % n
            try:
                img, label, clipped = self.load(i)
            except UnreadableImage as e:
                if i not in self._reported:
                    self._reported.add(i)
                    _logger.warning('skipping sample: %s', e)
                skipped += 1
                if self.on_error == 'skip':
                    return {'image': None, 'label': None, 'skipped': skipped, 'clipped': 0, 'name': ''}
                continue
            x, y = self.transform(img, label) if self.transform is not None else (img, label)
            return {'image': x, 'label': y, 'skipped': skipped, 'clipped': clipped, 'name': self.samples[i][0].name}
        raise DataError(f'{min(MAX_CONSECUTIVE_ERRORS, n)} consecutive unusable samples starting at {index} of '
                        f'{self!r}: the data looks corrupt (see the warnings above)')


def collate_seg(batch: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Stack same-size training samples; evaluation samples of any size stay lists. Drops skipped samples."""
    kept = [s for s in batch if s['image'] is not None]
    out: Dict[str, Any] = {'skipped': sum(s['skipped'] for s in batch), 'clipped': sum(s['clipped'] for s in batch),
                           'names': [s['name'] for s in kept]}
    if not kept:
        out.update(images=None, labels=None)
    elif all(s['image'].shape == kept[0]['image'].shape and s['label'].shape == kept[0]['label'].shape
             for s in kept):
        out.update(images=torch.stack([s['image'] for s in kept]), labels=torch.stack([s['label'] for s in kept]))
    else:
        out.update(images=[s['image'] for s in kept], labels=[s['label'] for s in kept])
    return out
