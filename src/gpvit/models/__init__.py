"""Model families. Importing this package registers every model in timm's registry."""
from .gpvit import GPViT
from .layers import attention, merge_heads, split_heads, window_partition, window_reverse

__all__ = ['GPViT', 'attention', 'merge_heads', 'split_heads', 'window_partition', 'window_reverse']
