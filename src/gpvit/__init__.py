"""gpvit: high-resolution vision transformers (GPViT, GC ViT) on PyTorch and timm.

``import gpvit`` registers the models in timm, so ``timm.create_model('gpvit_l1')`` works as well as
:func:`gpvit.create_model`, which also loads checkpoints of every supported format.
"""
from .checkpoint import CheckpointError, identify, load_checkpoint, read_checkpoint
from .factory import create_model, list_models
from .models import GCViT, GPViT
from .version import __version__

__all__ = ['GCViT', 'GPViT', 'CheckpointError', 'create_model', 'identify', 'list_models', 'load_checkpoint',
           'read_checkpoint', '__version__']
