"""The two model families (classifiers and backbones). Importing this package registers their variants in timm.

Layer: above :mod:`gpvit.checkpoint` / :mod:`gpvit.hub`; knows nothing of dense heads, tasks, the engine or tools.
"""
from .factory import FAMILIES, create_model, identify, list_models, load_checkpoint, model_args
from .gcvit import GCViT
from .gpvit import GPViT
from . import fused  # noqa: F401  (the CPU inference variants of the blocks)

__all__ = ['FAMILIES', 'GCViT', 'GPViT', 'create_model', 'identify', 'list_models', 'load_checkpoint', 'model_args']
