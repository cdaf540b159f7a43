"""Model creation with checkpoint loading."""
import os
from typing import List, Mapping, Optional, Union

import timm
import torch.nn as nn

from . import models  # noqa: F401  (registers the models)
from .checkpoint import CheckpointError, identify, read_checkpoint

__all__ = ['create_model', 'list_models']

_FAMILY_PREFIXES = ('gpvit_', 'gc_vit_')


def list_models(pattern: str = '') -> List[str]:
    """Names of this project's registered models (optionally filtered by a wildcard pattern)."""
    names = timm.list_models(pattern or '*')
    return [n for n in names if n.startswith(_FAMILY_PREFIXES)]


def create_model(
        model_name: str,
        checkpoint: Optional[Union[str, os.PathLike, Mapping]] = None,
        *,
        use_ema: bool = False,
        weights_only: bool = True,
        **kwargs,
) -> nn.Module:
    """Create a registered model, optionally loading a checkpoint of any supported format.

    Args:
        model_name: a registered name, e.g. ``'gpvit_l1'``.
        checkpoint: path or loaded dict: a reference release file, the backbone of a reference detector or
            segmentor checkpoint, an mmpretrain port, a plain state dict, a safetensors file or a training
            checkpoint of this project. The format is detected from the keys.
        use_ema: load the EMA weights of a checkpoint that has them.
        weights_only: refuse pickled objects other than tensors and plain containers.
        **kwargs: passed to ``timm.create_model`` (``num_classes``, ``features_only``, ``out_indices``,
            ``drop_path_rate``, ...). Without ``num_classes`` the model takes the checkpoint's classifier,
            or has none (``num_classes=0``) if the checkpoint is a backbone only.

    Raises:
        CheckpointError: the checkpoint cannot be read or does not fit the model.
    """
    if checkpoint is not None:
        state_dict = read_checkpoint(checkpoint, use_ema=use_ema, weights_only=weights_only)
        try:
            _, ckpt_args, _ = identify(state_dict)
        except CheckpointError:
            ckpt_args = {}  # the model's own filter raises the precise error
        overlay = dict(kwargs.pop('pretrained_cfg_overlay', None) or {}, state_dict=state_dict)
        if 'num_classes' in kwargs:
            # The checkpoint is already converted to the model by its filter fn; keep timm's load_pretrained
            # from dropping a classifier of a num_classes other than the cfg's (1000).
            overlay.setdefault('num_classes', kwargs['num_classes'])
        if 'num_classes' in ckpt_args:
            # timm keeps the checkpoint's classifier only where the model's class count equals the cfg's.
            overlay['num_classes'] = ckpt_args['num_classes']
            if 'num_classes' not in kwargs and not kwargs.get('features_only') and ckpt_args['num_classes']:
                kwargs['num_classes'] = ckpt_args['num_classes']
        kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
    return timm.create_model(model_name, **kwargs)
