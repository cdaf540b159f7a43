"""Model families. Importing this package registers every model in timm's registry."""
from .gcvit import GCViT
from .gpvit import GPViT
from . import fused  # noqa: E402,F401  (the CPU inference variants of the blocks)
from .layers import attention, merge_heads, split_heads, window_partition, window_reverse
from . import detectors, segmentor  # noqa: E402,F401  (register upernet, segformer, mask_rcnn, retinanet)

__all__ = ['GCViT', 'GPViT', 'attention', 'merge_heads', 'split_heads', 'window_partition', 'window_reverse']
