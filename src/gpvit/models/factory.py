"""Classifier and backbone models by name, with checkpoints of any supported format.

The two families register their variants in timm (``timm.create_model('gpvit_l1')`` works after ``import gpvit``);
this module adds what timm does not have: loading a checkpoint of any format into the model it fits
(:func:`create_model`), telling which model a checkpoint is (:func:`identify`) and loading into an existing model
(:func:`load_checkpoint`). Each family converts foreign layouts in its own ``checkpoint_filter_fn`` (timm's
convention); :data:`FAMILIES` maps each model class to its family module.
"""
import os
from types import ModuleType
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import timm
import torch.nn as nn
from timm.models import adapt_input_conv

from ..checkpoint import Checkpoint, CheckpointError, StateDict, read_checkpoint_file
from . import gcvit, gpvit

__all__ = ['FAMILIES', 'create_model', 'list_models', 'identify', 'model_args', 'load_checkpoint']

#: Model class -> the module of its family, which defines ``checkpoint_filter_fn(state_dict, model)``,
#: ``to_project_layout(state_dict)`` and ``checkpoint_model_args(project_state_dict)``.
FAMILIES: Dict[type, ModuleType] = {gpvit.GPViT: gpvit, gcvit.GCViT: gcvit}

_PREFIXES = ('gpvit_', 'gc_vit_')


def list_models(pattern: str = '') -> List[str]:
    """Names of this project's registered classifiers (optionally filtered by a wildcard pattern)."""
    return [n for n in timm.list_models(pattern or '*') if n.startswith(_PREFIXES)]


def identify(state_dict: StateDict) -> Tuple[str, Dict[str, Any], StateDict]:
    """Detect the family and layout of a flat state dict.

    Returns:
        ``(model_name, model_kwargs, project_state_dict)``: the registered model that fits the checkpoint
        exactly, and the checkpoint converted to the project's layout.
    """
    for family in FAMILIES.values():
        converted = family.to_project_layout(state_dict)
        if converted is not None:
            name, kwargs = family.checkpoint_model_args(converted[0])
            return name, kwargs, converted[0]
    raise CheckpointError(f'not a checkpoint of any supported model family; first keys: {list(state_dict)[:8]}')


def model_args(checkpoint: Checkpoint) -> Tuple[str, Dict[str, Any]]:
    """``(model_name, kwargs)`` of the classifier a checkpoint holds: the model a training checkpoint of this
    project records (its ``model_spec``), else the registered variant its weights fit (:func:`identify`)."""
    spec = checkpoint.model_spec
    if spec is not None and spec['name'] in list_models():
        return spec['name'], dict(spec['kwargs'])
    name, kwargs, _ = identify(checkpoint.state_dict)
    return name, kwargs


def _family(model: nn.Module) -> ModuleType:
    for cls, family in FAMILIES.items():
        if isinstance(model, cls):
            return family
    raise CheckpointError(f'no checkpoint converter for {type(model).__name__}')


def load_checkpoint(
        model: nn.Module,
        src: Union[str, os.PathLike, Mapping, Checkpoint],
        use_ema: bool = False,
        weights_only: bool = True,
) -> nn.Module:
    """Load any supported checkpoint into ``model`` (a model of this project, or timm's feature wrapper around
    one); the format is detected from the keys, nothing is half-loaded. A 3-channel stem is adapted to a model
    of other ``in_chans`` as timm's ``load_pretrained`` does (``adapt_input_conv``)."""
    target = getattr(model, 'model', model) if not hasattr(model, 'forward_features') else model
    state_dict = read_checkpoint_file(src, use_ema=use_ema, weights_only=weights_only).state_dict
    state_dict = _family(target).checkpoint_filter_fn(state_dict, target)
    own = target.state_dict()
    for key, value in state_dict.items():
        if value.shape != own[key].shape:  # the 3-channel input conv the filter passed through (in_chans != 3)
            state_dict[key] = adapt_input_conv(own[key].shape[1], value)
    target.load_state_dict(state_dict, strict=True)
    return model


def create_model(
        model_name: str,
        checkpoint: Optional[Union[str, os.PathLike, Mapping, Checkpoint]] = None,
        *,
        use_ema: bool = False,
        weights_only: bool = True,
        **kwargs,
) -> nn.Module:
    """A registered classifier or backbone, optionally with a checkpoint of any supported format.

    Args:
        model_name: a registered name, e.g. ``'gpvit_l1'``.
        checkpoint: path, loaded dict or :class:`~gpvit.checkpoint.Checkpoint`: a reference release file, the
            backbone of a reference detector or segmentor checkpoint, an mmpretrain port, a plain state dict, a
            safetensors file or a training checkpoint of this project. The format is detected from the keys.
        use_ema: load the EMA weights of a checkpoint that has them.
        weights_only: refuse pickled objects other than tensors and plain containers.
        **kwargs: passed to ``timm.create_model`` (``pretrained``, ``num_classes``, ``features_only``,
            ``out_indices``, ``drop_path_rate``, ...). Without ``num_classes`` the model takes the checkpoint's
            classifier, or has none (``num_classes=0``) if the checkpoint is a backbone only. A training
            checkpoint of this project of the same model supplies the settings it was trained with
            (``img_size``, ...) as defaults.

    Raises:
        CheckpointError: the checkpoint cannot be read or does not fit the model.
    """
    if checkpoint is None:
        return timm.create_model(model_name, **kwargs)
    ckpt = read_checkpoint_file(checkpoint, use_ema=use_ema, weights_only=weights_only)
    state_dict = ckpt.state_dict
    spec = ckpt.model_spec
    if spec is not None and spec['name'] == model_name:
        # a training checkpoint of this project: the model is built as it was trained (img_size, widths, ...)
        kwargs = {**dict(spec['kwargs']), **kwargs}
    try:
        _, ckpt_args, _ = identify(state_dict)
    except CheckpointError:
        ckpt_args = {}  # the model's own filter raises the precise error
    overlay = dict(kwargs.pop('pretrained_cfg_overlay', None) or {}, state_dict=state_dict)
    if 'num_classes' in kwargs:
        # The checkpoint is already converted to the model by its filter fn; keep timm's load_pretrained from
        # dropping a classifier of a num_classes other than the cfg's (1000).
        overlay.setdefault('num_classes', kwargs['num_classes'])
    if 'num_classes' in ckpt_args:
        # timm keeps the checkpoint's classifier only where the model's class count equals the cfg's.
        overlay['num_classes'] = ckpt_args['num_classes']
        if 'num_classes' not in kwargs and not kwargs.get('features_only') and ckpt_args['num_classes']:
            kwargs['num_classes'] = ckpt_args['num_classes']
    kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
    return timm.create_model(model_name, **kwargs)
