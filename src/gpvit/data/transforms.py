"""Training and test transforms through timm's ``create_transform``.

Reference pipelines and how they map onto timm (differences documented in docs/training.md):

* GPViT (mmcls): RandomResizedCrop(224, bicubic) -> flip 0.5 -> RandAugment ``rand-m9-mstd0.5-inc1`` (the
  "rand-inc" policy set; fill = ImageNet mean, i.e. the reference's BGR ``pad_val`` [104, 116, 124]) ->
  RandomErasing 0.25 (per-pixel normal fill) -> Normalize. Test: resize the short side to 256 (bicubic),
  centre crop 224 = timm eval with ``crop_pct = 224 / 256``.
* GC ViT (timm train.py fork): the same with ``train_interpolation='random'``, color jitter 0.4 (disabled by
  timm whenever RandAugment is on, as in the reference) and test ``crop_pct`` per variant.
"""
from typing import Callable, Optional, Sequence, Tuple

from timm.data import create_transform

__all__ = ['train_transform', 'eval_transform']


def train_transform(img_size: int, scale: Tuple[float, float] = (0.08, 1.0),
                    ratio: Tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5, vflip: float = 0.,
                    auto_augment: Optional[str] = None, color_jitter: Optional[float] = None,
                    interpolation: str = 'bicubic', re_prob: float = 0., re_mode: str = 'pixel',
                    re_count: int = 1, mean: Sequence[float] = (0.485, 0.456, 0.406),
                    std: Sequence[float] = (0.229, 0.224, 0.225)) -> Callable:
    """RandomResizedCrop -> flips -> RandAugment / color jitter -> ToTensor + Normalize -> RandomErasing."""
    return create_transform(
        img_size, is_training=True, scale=tuple(scale), ratio=tuple(ratio), hflip=hflip, vflip=vflip,
        auto_augment=auto_augment, color_jitter=color_jitter, interpolation=interpolation, re_prob=re_prob,
        re_mode=re_mode, re_count=re_count, mean=tuple(mean), std=tuple(std))


def eval_transform(img_size: int, crop_pct: float = 0.875, crop_mode: str = 'center',
                   interpolation: str = 'bicubic', mean: Sequence[float] = (0.485, 0.456, 0.406),
                   std: Sequence[float] = (0.229, 0.224, 0.225)) -> Callable:
    """Resize to ``floor(img_size / crop_pct)`` (short side), centre crop ``img_size``; or ``'squash'``."""
    return create_transform(img_size, is_training=False, crop_pct=crop_pct, crop_mode=crop_mode,
                            interpolation=interpolation, mean=tuple(mean), std=tuple(std))
