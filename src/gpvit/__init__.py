"""gpvit: high-resolution vision transformers (GPViT, GC ViT) on PyTorch and timm.

``import gpvit`` registers the models in timm, so ``timm.create_model('gpvit_l1')`` works as well as
:func:`gpvit.create_model`, which also loads checkpoints of every supported format and builds the dense models.
The layers of the package, bottom to top, and what each may import: docs/architecture.md.
"""
from .checkpoint import Checkpoint, read_checkpoint, read_checkpoint_file
from .errors import CheckpointError, ConfigError, DataError
from .factory import create_model, list_dense_models, list_models
from .models import GCViT, GPViT, identify, load_checkpoint
from .version import __version__

__all__ = ['GCViT', 'GPViT', 'Checkpoint', 'CheckpointError', 'ConfigError', 'DataError', 'create_model', 'identify',
           'list_models', 'list_dense_models', 'load_checkpoint', 'read_checkpoint', 'read_checkpoint_file',
           '__version__']
