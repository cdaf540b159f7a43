"""Dense models: the ViT-Adapter, deformable attention, segmentation heads, segmentors and detectors.

Built by plain builder functions (:data:`DENSE_MODELS`), not timm registry names: a dense model is a backbone of
:mod:`gpvit.models` plus heads, and the backbone is an argument (``backbone='gpvit_l1'``).
:func:`create_dense_model` builds one and loads a whole-model checkpoint of this project into it;
``gpvit.create_model`` reaches it by the same names.

Layer: above :mod:`gpvit.models`; knows nothing of tasks, the engine or tools.
"""
import os
from typing import Callable, Dict, Mapping, Optional, Union

import torch.nn as nn

from ..checkpoint import Checkpoint, CheckpointError, read_checkpoint_file
from .backbone import DenseBackbone, build_dense_body, default_out_indices
from .detectors import CascadeMaskRCNN, GPViTMaskRCNN, GPViTRetinaNet, cascade_mask_rcnn, mask_rcnn, retinanet
from .reference import check_fits, convert_reference_detector, convert_reference_segmentor, reference_format
from .segmentor import Segmentor, segformer, upernet

__all__ = ['DENSE_MODELS', 'PUBLISHED_WEIGHTS', 'create_dense_model', 'load_dense_checkpoint', 'DenseBackbone',
           'Segmentor',
           'GPViTMaskRCNN', 'GPViTRetinaNet', 'CascadeMaskRCNN', 'build_dense_body', 'default_out_indices']

#: Dense model name -> builder.
DENSE_MODELS: Dict[str, Callable[..., nn.Module]] = {
    'upernet': upernet,
    'segformer': segformer,
    'mask_rcnn': mask_rcnn,
    'cascade_mask_rcnn': cascade_mask_rcnn,
    'retinanet': retinanet,
}

_RELEASE = 'https://github.com/ChenhongyiYang/GPViT/releases/download/v0.0.1/'
#: Packaged dense recipe name -> URL of the reference's published whole-model weights (GitHub release v0.0.1 of
#: the official GPViT code; mmseg / mmdet layouts, converted on load). ``gpvit.create_model(name, pretrained=True)``.
PUBLISHED_WEIGHTS: Dict[str, str] = {
    f'gpvit_l{level}_{kind}': f'{_RELEASE}gpvit_l{level}_{kind}.pth'
    for level in (1, 2, 3, 4)
    for kind in ('upernet', 'segformer', 'maskrcnn_1x', 'maskrcnn_3x', 'retinanet_1x', 'retinanet_3x')
}


def load_dense_checkpoint(model: nn.Module, checkpoint: Union[str, os.PathLike, Mapping, Checkpoint],
                          use_ema: bool = False, weights_only: bool = True) -> nn.Module:
    """Load a whole-model checkpoint into a dense ``model``: one of this project (training checkpoint,
    ``best.pth``, plain or safetensors state dict) or a reference release file (mmseg segmentors,
    :mod:`gpvit.dense.reference`); the format is detected from the keys. Anything that does not fit raises a
    :class:`CheckpointError` naming the first missing and unexpected keys, and nothing is loaded."""
    state_dict = read_checkpoint_file(checkpoint, use_ema=use_ema, weights_only=weights_only).state_dict
    what = 'checkpoint'
    if reference_format(state_dict) == 'mmseg':
        state_dict, what = convert_reference_segmentor(state_dict, model), 'reference mmseg checkpoint'
    elif reference_format(state_dict) == 'mmdet':
        state_dict, what = convert_reference_detector(state_dict, model), 'reference mmdet checkpoint'
    check_fits(model, state_dict, what)
    model.load_state_dict(state_dict, strict=False)
    return model


def create_dense_model(name: str, checkpoint: Optional[Union[str, os.PathLike, Mapping, Checkpoint]] = None, *,
                       use_ema: bool = False, weights_only: bool = True, pretrained: bool = False,
                       **kwargs) -> nn.Module:
    """Build the dense model ``name`` (:data:`DENSE_MODELS`) with ``kwargs``, optionally loading ``checkpoint``.

    Raises:
        ValueError: an unknown name.
        CheckpointError: the checkpoint does not fit; ``pretrained=True`` (whole-model weights are published per
            recipe: ``gpvit.create_model('gpvit_l1_upernet', pretrained=True)``, :data:`PUBLISHED_WEIGHTS`).
    """
    if name not in DENSE_MODELS:
        raise ValueError(f'unknown dense model {name!r}; known: {", ".join(DENSE_MODELS)}')
    if pretrained:
        raise CheckpointError(f"{name}: pretrained=True needs a recipe's name, whose published weights it loads "
                              f"(gpvit.create_model('gpvit_l1_upernet', pretrained=True); `gpvit configs` lists "
                              f"the recipes), or pass checkpoint=PATH")
    ckpt = None
    if checkpoint is not None:
        ckpt = read_checkpoint_file(checkpoint, use_ema=use_ema, weights_only=weights_only)
        spec = ckpt.model_spec
        if spec is not None and spec['name'] == name:  # built as it was trained, unless kwargs say otherwise
            kwargs = {**dict(spec['kwargs']), **kwargs}
    model = DENSE_MODELS[name](**kwargs)
    if ckpt is not None:
        load_dense_checkpoint(model, ckpt)
    return model
