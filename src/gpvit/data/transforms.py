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

from PIL import Image
from timm.data import create_transform

__all__ = ['train_transform', 'eval_transform', 'zero_bit_safe_posterize']


def _wrap_posterize(fn: Callable) -> Callable:
    def posterize(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
        if bits_to_keep < 1:  # keep 0 bits: a black image (mmcv's posterize; Pillow < 11 did the same)
            return Image.new(img.mode, img.size)
        return fn(img, bits_to_keep, **kwargs)
    posterize._gpvit_safe = True
    return posterize


def zero_bit_safe_posterize(transform: Callable) -> Callable:
    """Make the posterize ops of timm's RandAugment / AutoAugment inside ``transform`` accept 0 bits.

    The "increasing" policies map magnitude 10 to 0 bits, which ``rand-m9-mstd0.5-inc1`` reaches through its
    magnitude noise; Pillow >= 11 rejects ``ImageOps.posterize(img, 0)`` and would stop training at random.
    """
    for t in getattr(transform, 'transforms', [transform]):
        ops = list(getattr(t, 'ops', []))
        for sub in getattr(t, 'policy', []):
            ops.extend(sub)
        for op in ops:
            if getattr(op, 'name', '').startswith('Posterize') and not getattr(op.aug_fn, '_gpvit_safe', False):
                op.aug_fn = _wrap_posterize(op.aug_fn)
    return transform


def train_transform(img_size: int, scale: Tuple[float, float] = (0.08, 1.0),
                    ratio: Tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5, vflip: float = 0.,
                    auto_augment: Optional[str] = None, color_jitter: Optional[float] = None,
                    interpolation: str = 'bicubic', re_prob: float = 0., re_mode: str = 'pixel',
                    re_count: int = 1, mean: Sequence[float] = (0.485, 0.456, 0.406),
                    std: Sequence[float] = (0.229, 0.224, 0.225)) -> Callable:
    """RandomResizedCrop -> flips -> RandAugment / color jitter -> ToTensor + Normalize -> RandomErasing."""
    return zero_bit_safe_posterize(create_transform(
        img_size, is_training=True, scale=tuple(scale), ratio=tuple(ratio), hflip=hflip, vflip=vflip,
        auto_augment=auto_augment, color_jitter=color_jitter, interpolation=interpolation, re_prob=re_prob,
        re_mode=re_mode, re_count=re_count, mean=tuple(mean), std=tuple(std)))


def eval_transform(img_size: int, crop_pct: float = 0.875, crop_mode: str = 'center',
                   interpolation: str = 'bicubic', mean: Sequence[float] = (0.485, 0.456, 0.406),
                   std: Sequence[float] = (0.229, 0.224, 0.225)) -> Callable:
    """Resize to ``floor(img_size / crop_pct)`` (short side), centre crop ``img_size``; or ``'squash'``."""
    return create_transform(img_size, is_training=False, crop_pct=crop_pct, crop_mode=crop_mode,
                            interpolation=interpolation, mean=tuple(mean), std=tuple(std))
