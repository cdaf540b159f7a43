"""Every model of the project by name: classifiers and backbones (:mod:`gpvit.models`, registered in timm) and dense
models (:mod:`gpvit.dense`), each with a checkpoint of any format it supports."""
import os
from typing import List, Mapping, Optional, Union

import torch.nn as nn

from .checkpoint import Checkpoint
from .dense import DENSE_MODELS, create_dense_model
from .models import create_model as create_classifier
from .models import list_models

__all__ = ['create_model', 'list_models', 'list_dense_models']


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
        model_name: a registered classifier (``'gpvit_l1'``, ``'gc_vit_tiny'``; :func:`list_models`) or a dense
            model (``'upernet'``, ``'segformer'``, ``'mask_rcnn'``, ``'retinanet'``, with ``backbone=...``).
        checkpoint: path, loaded dict or :class:`~gpvit.checkpoint.Checkpoint`. Classifiers take every reference
            and project format (see :func:`gpvit.models.create_model`); dense models a checkpoint of this project.
        use_ema: load the EMA weights of a checkpoint that has them.
        weights_only: refuse pickled objects other than tensors and plain containers.
        **kwargs: the model's arguments (``num_classes``, ``drop_path_rate``, ``pretrained``, ...).

    Raises:
        CheckpointError: the checkpoint cannot be read or does not fit the model.
    """
    if model_name in DENSE_MODELS:
        return create_dense_model(model_name, checkpoint, use_ema=use_ema, weights_only=weights_only, **kwargs)
    return create_classifier(model_name, checkpoint, use_ema=use_ema, weights_only=weights_only, **kwargs)
