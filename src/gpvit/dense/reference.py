"""Whole-model checkpoints of the reference code (mmseg segmentors, mmdet detectors) in this project's dense layout.

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
``convs``).

The detectors (:func:`convert_reference_detector`, mmdet ``MaskRCNN`` / ``RetinaNet`` on ``GPViTAdapter``),
reference -> this project (torchvision):

* ``backbone.layers.*``, ``patch_embed``, ``pos_embed`` -> ``backbone.body.backbone.*`` (the GPViT converter);
* ``backbone.spm`` / ``level_embed`` / ``up`` -> ``backbone.body.spm`` / ``level_embed`` / ``up``;
* ``backbone.interactions.<i>.injector`` / ``.extractor`` -> ``backbone.body.injectors.<i>`` / ``extractors.<i>``;
  ``backbone.interactions.3.extra_extractors.<j>`` -> ``backbone.body.extractors.<4 + j>``;
* ``backbone.ad_norm1..4`` (RetinaNet: ``ad_norm2..4``) -> ``backbone.body.out_norms.0..``;
* ``neck.lateral_convs.<i>`` / ``neck.fpn_convs.<i>`` -> ``backbone.fpn.inner_blocks.<i>`` / ``layer_blocks.<i>``;
  RetinaNet's ``neck.fpn_convs.3`` / ``.4`` -> ``backbone.fpn.extra_blocks.p6`` / ``p7``;
* ``rpn_head.rpn_conv`` / ``rpn_cls`` / ``rpn_reg`` -> ``rpn.head.conv.0.0`` / ``cls_logits`` / ``bbox_pred``;
* ``roi_head.bbox_head.shared_convs.<i>`` / ``shared_fcs.0`` / ``fc_cls`` / ``fc_reg`` ->
  ``roi_heads.box_head.<i>`` / ``box_head.5`` / ``box_predictor.cls_score`` / ``box_predictor.bbox_pred``;
* ``roi_head.mask_head.convs.<i>`` / ``upsample`` / ``conv_logits`` -> ``roi_heads.mask_head.<i>`` /
  ``mask_predictor.conv5_mask`` / ``mask_predictor.mask_fcn_logits``;
* ``bbox_head.cls_convs`` / ``reg_convs`` / ``retina_cls`` / ``retina_reg`` -> ``head.classification_head.conv`` /
  ``head.regression_head.conv`` / ``head.classification_head.cls_logits`` / ``head.regression_head.bbox_reg``;

with the class order converted (see :func:`convert_reference_detector`). The converted dict must then fit the
model exactly; :func:`check_fits` names what does not.
"""
import re
from typing import Dict, List, Mapping, Optional

import torch
import torch.nn as nn

from ..checkpoint import CheckpointError
from ..models.factory import FAMILIES, identify
from .heads import FCNHead, SegFormerHead, UperNetHead

__all__ = ['reference_format', 'reference_recipe', 'convert_reference_segmentor', 'convert_reference_detector',
           'check_fits', 'BACKGROUND_LOGIT']

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
    """``'mmseg'`` / ``'mmdet'`` for a reference segmentor / detector state dict, else None (this project's layout
    or anything else)."""
    if 'decode_head.conv_seg.weight' in state_dict or 'auxiliary_head.conv_seg.weight' in state_dict:
        return 'mmseg'
    if 'rpn_head.rpn_conv.weight' in state_dict or 'bbox_head.retina_cls.weight' in state_dict:
        return 'mmdet'
    return None


def reference_recipe(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The packaged recipe whose model a reference dense state dict fits (``'gpvit_l2_upernet'``,
    ``'gpvit_l1_maskrcnn_1x'``: detectors get the 1x recipe, whose model is the 3x one's), else None."""
    fmt = reference_format(state_dict)
    if fmt is None:
        return None
    backbone, _, _ = identify({k: v for k, v in state_dict.items() if k.startswith('backbone.')})
    if fmt == 'mmseg':
        kind = 'upernet' if any(k.startswith('decode_head.psp_modules.') for k in state_dict) else 'segformer'
    else:
        kind = 'maskrcnn_1x' if 'rpn_head.rpn_conv.weight' in state_dict else 'retinanet_1x'
    return f'{backbone}_{kind}'


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


# ---------------------------------------------------------------------------------------------------------------
# mmdet detectors (Mask R-CNN, RetinaNet) -> torchvision's
# ---------------------------------------------------------------------------------------------------------------

def _adapter_rules(n_interactions: int, with_s4: bool):
    first_norm = 1 if with_s4 else 2  # ad_norm1..4 (s4..s32); the single-stage adapter has ad_norm2..4
    return [
        (re.compile(r'^level_embed$'), 'level_embed'),
        (re.compile(r'^(spm|up)\.'), r'\1.'),
        (re.compile(r'^interactions\.(\d+)\.injector\.'), r'injectors.\1.'),
        (re.compile(r'^interactions\.(\d+)\.extractor\.'), r'extractors.\1.'),
        (re.compile(r'^interactions\.\d+\.extra_extractors\.(\d+)\.'),
         lambda m: f'extractors.{n_interactions + int(m[1])}.'),
        (re.compile(r'^ad_norm(\d)\.'), lambda m: f'out_norms.{int(m[1]) - first_norm}.'),
    ]


def _convert_adapter_backbone(state_dict: Mapping[str, torch.Tensor], body: nn.Module) -> StateDict:
    """``backbone.*`` of a reference ``GPViTAdapter`` -> ``backbone.body.*`` of a :class:`GPViTAdapter`."""
    rules = _adapter_rules(len(body.interaction_indexes), body.with_s4)
    out, vit = {}, {}
    for key, value in state_dict.items():
        if not key.startswith('backbone.'):
            continue
        rest = key[len('backbone.'):]
        for pattern, repl in rules:
            if pattern.match(rest):
                new = pattern.sub(repl, rest, count=1).replace('.ffn.dwconv.dwconv.', '.ffn.dwconv.')
                out['backbone.body.' + new] = value
                break
        else:
            vit[key] = value
    out.update(_convert_backbone(vit, 'backbone.body.backbone.'))
    return out


def _fpn_rules(n_inputs: int):
    def fpn_conv(m):
        i = int(m[1])
        return f'backbone.fpn.layer_blocks.{i}.' if i < n_inputs else f'backbone.fpn.extra_blocks.p{6 + i - n_inputs}.'
    return [(re.compile(r'^neck\.lateral_convs\.(\d+)$'), r'backbone.fpn.inner_blocks.\1.'),
            (re.compile(r'^neck\.fpn_convs\.(\d+)$'), fpn_conv)]


def _conv_module_key(key: str, rules) -> Optional[str]:
    """``<module>.conv.<leaf>`` / ``<module>.bn.<leaf>`` -> ``<new module>0.<leaf>`` / ``<new module>1.<leaf>``."""
    m = _CONV_MODULE.match(key)
    if m is None:
        return None
    for pattern, repl in rules:
        if pattern.match(m['module']):
            return f'{pattern.sub(repl, m["module"])}{"01"[m["part"] == "bn"]}.{m["leaf"]}'
    return None


def _background_first(t: torch.Tensor) -> torch.Tensor:
    """mmdet's class scores ``[0..K-1, background]`` -> torchvision's ``[background, 0..K-1]``."""
    return torch.cat([t[-1:], t[:-1]])


def _with_background_slot(t: torch.Tensor, per: int, groups: int = 1, fill: float = 0.) -> torch.Tensor:
    """Prepend a background slot of ``per`` rows (filled with ``fill``) to each of ``groups`` groups of rows."""
    g = t.reshape(groups, -1, *t.shape[1:])
    pad = g.new_full((groups, per, *t.shape[1:]), fill)
    return torch.cat([pad, g], dim=1).reshape(-1, *t.shape[1:])


#: The background logit of a converted RetinaNet: never above the score threshold (sigmoid(-1e4) = 0).
BACKGROUND_LOGIT = -1e4


def convert_reference_detector(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
    """A reference mmdet Mask R-CNN or RetinaNet state dict in the layout of ``model`` (this project's torchvision
    detector on the GPViT adapter).

    Class order: mmdet's box classifier is ``[80 classes, background]`` and its box regressor and mask logits
    have no background slot; torchvision's has the background first (label 0), so class ``k`` of mmdet is label
    ``k + 1`` here. The background slots of the box regressor and mask logits are zeros (never used at test
    time); RetinaNet's sigmoid classifier gets a background logit of :data:`BACKGROUND_LOGIT` per anchor (it
    never passes the score threshold). Anchors: both orders are ratio-major, scale-minor per location, and both
    raw outputs are ``(anchor, value)`` along channels, so the RPN / RetinaNet convs convert without a
    permutation.
    """
    body = getattr(getattr(model, 'backbone', None), 'body', None)
    if not hasattr(body, 'interaction_indexes'):
        raise CheckpointError(f'a reference mmdet GPViT detector checkpoint cannot load into a '
                              f'{type(model).__name__}; build a GPViT detector (gpvit_l1_maskrcnn_1x, '
                              f'gpvit_l1_retinanet_1x, ...)')
    two_stage = hasattr(model, 'roi_heads')
    theirs = 'Mask R-CNN' if 'rpn_head.rpn_conv.weight' in state_dict else 'RetinaNet'
    if (theirs == 'Mask R-CNN') != two_stage:
        raise CheckpointError(f'reference checkpoint: it is a {theirs}, the model a {type(model).__name__}; build '
                              f"'{'gpvit_l1_maskrcnn_1x' if theirs == 'Mask R-CNN' else 'gpvit_l1_retinanet_1x'}' "
                              f'(or the L2-L4 / 3x recipe it was trained with)')
    out = _convert_adapter_backbone(state_dict, body)
    n_fpn_inputs = len(model.backbone.fpn.inner_blocks)
    fpn_rules = _fpn_rules(n_fpn_inputs)
    box_fc = next(i for i, m in enumerate(model.roi_heads.box_head) if isinstance(m, nn.Linear)) if two_stage else 0
    conv_rules = [
        (re.compile(r'^roi_head\.bbox_head\.shared_convs\.(\d+)$'), r'roi_heads.box_head.\1.'),
        (re.compile(r'^roi_head\.mask_head\.convs\.(\d+)$'), r'roi_heads.mask_head.\1.'),
        (re.compile(r'^bbox_head\.cls_convs\.(\d+)$'), r'head.classification_head.conv.\1.'),
        (re.compile(r'^bbox_head\.reg_convs\.(\d+)$'), r'head.regression_head.conv.\1.'),
    ]
    plain = {
        'rpn_head.rpn_conv.': 'rpn.head.conv.0.0.',
        'rpn_head.rpn_cls.': 'rpn.head.cls_logits.',
        'rpn_head.rpn_reg.': 'rpn.head.bbox_pred.',
        'roi_head.bbox_head.shared_fcs.0.': f'roi_heads.box_head.{box_fc}.',
        'roi_head.mask_head.upsample.': 'roi_heads.mask_predictor.conv5_mask.',
        'bbox_head.retina_reg.': 'head.regression_head.bbox_reg.',
    }
    num_anchors = model.head.classification_head.num_anchors if not two_stage else 0
    for key, value in state_dict.items():
        if key.startswith('backbone.'):
            continue
        new = _conv_module_key(key, fpn_rules + conv_rules)
        if new is None:
            prefix = next((p for p in plain if key.startswith(p)), None)
            if prefix is not None:
                new = plain[prefix] + key[len(prefix):]
            elif key.startswith('roi_head.bbox_head.fc_cls.'):
                new, value = 'roi_heads.box_predictor.cls_score.' + key.rsplit('.', 1)[1], _background_first(value)
            elif key.startswith('roi_head.bbox_head.fc_reg.'):
                new = 'roi_heads.box_predictor.bbox_pred.' + key.rsplit('.', 1)[1]
                value = _with_background_slot(value, 4)
            elif key.startswith('roi_head.mask_head.conv_logits.'):
                new = 'roi_heads.mask_predictor.mask_fcn_logits.' + key.rsplit('.', 1)[1]
                value = _with_background_slot(value, 1)
            elif key.startswith('bbox_head.retina_cls.'):
                leaf = key.rsplit('.', 1)[1]
                new = 'head.classification_head.cls_logits.' + leaf
                value = _with_background_slot(value, 1, num_anchors, BACKGROUND_LOGIT if leaf == 'bias' else 0.)
            else:
                new = key  # named by check_fits as unexpected
        out[new] = value
    return out
