"""Whole-model checkpoints of the reference code (mmseg segmentors) in this project's dense layout.

The reference publishes its segmentors as mmcv release files ``{'meta': ..., 'state_dict': sd}`` with the keys
``backbone.*`` (the GPViT layers and the per-level norms), ``decode_head.*`` (mmseg ``UPerHead`` or
``SegformerHead``) and ``auxiliary_head.*`` (mmseg ``FCNHead``). :func:`reference_format` tells such a state
dict from one of this project; :func:`convert_reference_segmentor` renames it for a :class:`Segmentor`:

===============================================  ===============================================
reference (mmseg)                                this project
===============================================  ===============================================
``backbone.<mmcls GPViT key>``                   ``backbone.body.<GPViT key>`` (the family's converter)
``decode_head.conv_seg.*``                       ``decode_head.classifier.*``
``*.<module>.conv.*`` / ``*.<module>.bn.*``      ``*.<module>.0.*`` / ``*.<module>.1.*`` (ConvModule)
UperNet ``psp_modules.<i>.1``                    ``ppm.stages.<i>.1``
UperNet ``bottleneck``                           ``ppm_bottleneck``
SegFormer ``convs.<i>`` / ``fusion_conv``        ``proj.<i>`` / ``fuse``
===============================================  ===============================================

Every other module keeps its name (``lateral_convs``, ``fpn_convs``, ``fpn_bottleneck``, the FCN head's
``convs``). The converted dict must then fit the model exactly; :func:`check_fits` names what does not.
"""
import re
from typing import Dict, List, Mapping, Optional

import torch
import torch.nn as nn

from ..checkpoint import CheckpointError
from ..models.factory import FAMILIES
from .heads import FCNHead, SegFormerHead, UperNetHead

__all__ = ['reference_format', 'convert_reference_segmentor', 'check_fits']

StateDict = Dict[str, torch.Tensor]

_CONV_MODULE = re.compile(r'^(?P<module>.+)\.(?P<part>conv|bn)\.(?P<leaf>[^.]+)$')

# Per head class: the reference's ConvModule path (inside the head) -> the project's module path.
_MODULE_RULES = {
    UperNetHead: [(re.compile(r'^psp_modules\.(\d+)\.1$'), r'ppm.stages.\1.1'),
                  (re.compile(r'^bottleneck$'), 'ppm_bottleneck'),
                  (re.compile(r'^((?:lateral_convs|fpn_convs)\.\d+|fpn_bottleneck)$'), r'\1')],
    SegFormerHead: [(re.compile(r'^convs\.(\d+)$'), r'proj.\1'),
                    (re.compile(r'^fusion_conv$'), 'fuse')],
    FCNHead: [(re.compile(r'^convs\.(\d+)$'), r'convs.\1')],
}
# The mmseg class of each head.
_REFERENCE_HEADS = {UperNetHead: 'UPerHead', SegFormerHead: 'SegformerHead', FCNHead: 'FCNHead'}
_RECIPE_OF_HEAD = {'UPerHead': 'upernet', 'SegformerHead': 'segformer'}


def reference_format(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """``'mmseg'`` for a reference segmentor state dict, else None (this project's layout or anything else)."""
    if 'decode_head.conv_seg.weight' in state_dict or 'auxiliary_head.conv_seg.weight' in state_dict:
        return 'mmseg'
    return None


def _reference_head_name(state_dict: Mapping[str, torch.Tensor], prefix: str) -> Optional[str]:
    """The mmseg head class a checkpoint holds under ``prefix``, or None if it has none there."""
    keys = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
    if not keys:
        return None
    if prefix == 'auxiliary_head.':
        return 'FCNHead'
    if any(k.startswith('psp_modules.') for k in keys):
        return 'UPerHead'
    return 'SegformerHead' if any(k.startswith('fusion_conv.') for k in keys) else 'an unknown head'


def _convert_head(state_dict: Mapping[str, torch.Tensor], prefix: str, head: nn.Module) -> StateDict:
    rules = _MODULE_RULES[type(head)]
    out = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        new = None
        if rest.startswith('conv_seg.'):
            new = 'classifier.' + rest[len('conv_seg.'):]
        else:
            m = _CONV_MODULE.match(rest)
            if m:
                for pattern, repl in rules:
                    if pattern.match(m['module']):
                        new = f'{pattern.sub(repl, m["module"])}.{"01"[m["part"] == "bn"]}.{m["leaf"]}'
                        break
        out[prefix + (new if new is not None else rest)] = value  # an unknown key stays: check_fits names it
    return out


def _convert_backbone(state_dict: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    part = {k: v for k, v in state_dict.items() if k.startswith('backbone.')}
    for family in FAMILIES.values():
        converted = family.to_project_layout(part)
        if converted is not None:
            out, set_aside = converted
            if set_aside:
                raise CheckpointError(f'reference checkpoint: {len(set_aside)} backbone keys this project has no '
                                      f'place for (first {set_aside[:8]}); is it a detector checkpoint?')
            return {prefix + k: v for k, v in out.items()}
    raise CheckpointError(f'reference checkpoint: its backbone is not a GPViT or GC ViT in a known layout '
                          f'(first keys {list(part)[:8]})')


def convert_reference_segmentor(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
    """A reference mmseg segmentor state dict in the layout of ``model`` (a :class:`Segmentor`).

    Raises:
        CheckpointError: ``model`` is not a segmentor, or its heads are not the checkpoint's (the message names
            the recipe to build).
    """
    decode = getattr(model, 'decode_head', None)
    if type(decode) not in _MODULE_RULES or not hasattr(model, 'auxiliary_head'):
        raise CheckpointError(f'a reference mmseg segmentor checkpoint cannot load into a {type(model).__name__}; '
                              f"build a segmentor ('gpvit_l1_upernet', 'gpvit_l1_segformer', ...)")
    for prefix, head in (('decode_head.', decode), ('auxiliary_head.', model.auxiliary_head)):
        theirs = _reference_head_name(state_dict, prefix)
        ours = _REFERENCE_HEADS[type(head)] if head is not None else None
        if theirs != ours:
            fix = (f"build '{_RECIPE_OF_HEAD[theirs]}' (e.g. gpvit_l1_{_RECIPE_OF_HEAD[theirs]})"
                   if prefix == 'decode_head.' and theirs in _RECIPE_OF_HEAD else
                   'build the model with aux_weight=0' if theirs is None else
                   'build the model with its auxiliary FCN head (aux_weight > 0)')
            raise CheckpointError(f'reference checkpoint: its {prefix[:-1]} is {theirs or "absent"}, the model\'s '
                                  f'is {ours or "absent"}; {fix}')
    out = _convert_backbone(state_dict, 'backbone.body.')
    out.update(_convert_head(state_dict, 'decode_head.', decode))
    if model.auxiliary_head is not None:
        out.update(_convert_head(state_dict, 'auxiliary_head.', model.auxiliary_head))
    others = [k for k in state_dict if not k.startswith(('backbone.', 'decode_head.', 'auxiliary_head.'))]
    out.update({k: state_dict[k] for k in others})  # named by check_fits as unexpected
    return out


def check_fits(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = 'checkpoint') -> None:
    """Raise a :class:`CheckpointError` naming the first missing, unexpected and mis-shaped keys, if any."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state_dict if k not in own]
    shapes: List[str] = [f'{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}'
                         for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f'{what} does not fit this {type(model).__name__}: {len(missing)} missing keys (first '
            f'{missing[:8]}), {len(unexpected)} unexpected (first {unexpected[:8]}), {len(shapes)} of another '
            f'shape (first {shapes[:8]}); build the model with the settings it was trained with')
