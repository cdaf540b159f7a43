"""Every model of the project by name: classifiers and backbones (:mod:`gpvit.models`, registered in timm) and dense
models (:mod:`gpvit.dense`), each with a checkpoint of any format it supports."""
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch.nn as nn
import yaml

from .checkpoint import Checkpoint, CheckpointError
from .dense import DENSE_MODELS, PUBLISHED_WEIGHTS, create_dense_model
from .hub import load_weights
from .models import create_model as create_classifier
from .models import list_models

__all__ = ['create_model', 'list_models', 'list_dense_models', 'recipe_model']


#: The packaged recipes (``configs/<task>/<name>.yaml``); a dense recipe's name builds its model.
_RECIPES = Path(__file__).resolve().parent / 'configs'
_DENSE_TASKS = ('segmentation', 'detection')


def recipe_model(name: str) -> Optional[Tuple[str, Dict[str, Any]]]:
    """``(dense model name, kwargs)`` of the packaged segmentation or detection recipe ``name``
    (``'gpvit_l1_upernet'`` -> ``('upernet', {'backbone': 'gpvit_l1', 'num_classes': 150, ...})``), else None."""
    for task in _DENSE_TASKS:
        path = _RECIPES / task / f'{name}.yaml'
        if path.is_file():
            model = (yaml.safe_load(path.read_text()) or {}).get('model') or {}
            if model.get('name') in DENSE_MODELS:
                return model['name'], dict(model.get('kwargs') or {})
    return None


def _published(recipe: str) -> str:
    if recipe not in PUBLISHED_WEIGHTS:
        raise CheckpointError(f'{recipe}: the reference published no weights for this recipe (only for the GPViT '
                              f'L1-L4 UperNet, SegFormer, Mask R-CNN and RetinaNet recipes, '
                              f'gpvit.dense.PUBLISHED_WEIGHTS); pass checkpoint=PATH')
    return PUBLISHED_WEIGHTS[recipe]


def list_dense_models() -> List[str]:
    """Names of the dense models (their backbone is an argument)."""
    return list(DENSE_MODELS)


def create_model(
        model_name: str,
        checkpoint: Optional[Union[str, os.PathLike, Mapping, Checkpoint]] = None,
        *,
        use_ema: bool = False,
        weights_only: bool = True,
        **kwargs,
) -> nn.Module:
    """A model by name, optionally with a checkpoint of any supported format.

    Args:
        model_name: a registered classifier (``'gpvit_l1'``, ``'gc_vit_tiny'``; :func:`list_models`), a dense
            model (``'upernet'``, ``'segformer'``, ``'mask_rcnn'``, ``'retinanet'``, with ``backbone=...``) or a
            packaged dense recipe (``'gpvit_l1_upernet'``: that recipe's model, ``kwargs`` override its own).
        checkpoint: path, loaded dict or :class:`~gpvit.checkpoint.Checkpoint`. Classifiers take every reference
            and project format (see :func:`gpvit.models.create_model`); dense models a checkpoint of this project
            or a reference release file (mmseg segmentors; :mod:`gpvit.dense.reference`).
        use_ema: load the EMA weights of a checkpoint that has them.
        weights_only: refuse pickled objects other than tensors and plain containers.
        **kwargs: the model's arguments (``num_classes``, ``drop_path_rate``, ...). ``pretrained=True``: a
            classifier's published ImageNet weights, or a dense recipe's published whole-model weights
            (:data:`gpvit.dense.PUBLISHED_WEIGHTS`, the reference's release files), downloaded once into the
            torch hub cache.

    Raises:
        CheckpointError: the checkpoint cannot be read or does not fit the model.
    """
    recipe = recipe_model(model_name) if model_name not in DENSE_MODELS else None
    if recipe is not None:
        if kwargs.pop('pretrained', False):
            if checkpoint is not None:
                raise ValueError(f'{model_name}: pass pretrained=True or checkpoint=, not both')
            checkpoint = load_weights(_published(model_name))
        model_name, kwargs = recipe[0], {**recipe[1], **kwargs}
    if model_name in DENSE_MODELS:
        return create_dense_model(model_name, checkpoint, use_ema=use_ema, weights_only=weights_only, **kwargs)
    return create_classifier(model_name, checkpoint, use_ema=use_ema, weights_only=weights_only, **kwargs)
