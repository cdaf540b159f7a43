"""Multi-level feature extractors of the two families for dense heads.

:class:`DenseBackbone` turns a registered classification model into a multi-level feature extractor (each level
through a LayerNorm of its own: GPViT's four stride-8 maps after blocks 2, 5, 8, 11 as the reference ``GPViTSeg``;
GC ViT's four stage maps at strides 4..32) and initialises it from a classification checkpoint of any supported
format. :func:`build_dense_body` gives the detectors theirs: GPViT through the ViT-Adapter (strides 4..32 from
the stride-8 model), GC ViT's stage maps.
"""
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..models import create_model
from .adapter import GPViTAdapter

__all__ = ['DenseBackbone', 'default_out_indices', 'build_dense_body']


def default_out_indices(model: nn.Module) -> Tuple[int, ...]:
    """GC ViT: every stage. GPViT: the last block of each quarter (2, 5, 8, 11 for the 12-block variants)."""
    if hasattr(model, 'stages'):
        return tuple(range(len(model.stages)))
    depth = len(model.blocks)
    return tuple(sorted({max(0, round(depth * (k + 1) / 4) - 1) for k in range(4)}))


class DenseBackbone(nn.Module):
    """Multi-level features of a GPViT or GC ViT for dense heads.

    Attributes:
        body: the (pruned) backbone model; its ``forward_intermediates`` gives the maps.
        out_indices: the blocks (GPViT) or stages (GC ViT) returned.
        out_channels: channels of each returned map.
        strides: stride of each returned map.
    """

    def __init__(self, name: str, out_indices: Optional[Sequence[int]] = None,
                 checkpoint: Optional[Union[str, Mapping]] = None, use_ema: bool = False, **kwargs: Any):
        """
        Args:
            name: a registered GPViT or GC ViT model, e.g. ``'gpvit_l1'`` or ``'gc_vit_tiny'``.
            out_indices: blocks (GPViT) or stages (GC ViT) to return; default :func:`default_out_indices`.
            checkpoint: initial backbone weights, a classification checkpoint of any supported format (its
                classifier is dropped; the per-level norms start as identity LayerNorms, as in the reference).
            use_ema: take the EMA weights of ``checkpoint``.
            **kwargs: model arguments (``drop_path_rate``, GC ViT's ``window_size``, ...).
        """
        super().__init__()
        for key in ('num_classes', 'global_pool', 'features_only', 'out_norm_indices'):
            if key in kwargs:
                raise ValueError(f'DenseBackbone sets {key} itself; got {key}={kwargs[key]!r}')
        with torch.device('meta'):  # the architecture only (depth, feature_info): no memory, no init cost
            probe = create_model(name, num_classes=0, global_pool='', **kwargs)
        if not hasattr(probe, 'forward_intermediates') or not hasattr(probe, 'out_norms'):
            raise ValueError(f'{name!r} is not a GPViT or GC ViT model')
        n = len(probe.stages) if hasattr(probe, 'stages') else len(probe.blocks)
        out_indices = tuple(out_indices) if out_indices is not None else default_out_indices(probe)
        if not out_indices or any(not -n <= i < n for i in out_indices):
            raise ValueError(f'out_indices {out_indices} must index the {n} '
                             f'{"stages" if hasattr(probe, "stages") else "blocks"} of {name}')
        self.out_indices = tuple(sorted({i % n for i in out_indices}))
        # Each returned level gets a LayerNorm of its own (GPViT's last block keeps the final norm, the
        # reference's ln1); a classification checkpoint has none, so they start fresh, as in the reference.
        body = create_model(name, checkpoint=checkpoint, use_ema=use_ema, num_classes=0, global_pool='',
                       out_norm_indices=self.out_indices, **kwargs)
        body.prune_intermediate_layers(list(self.out_indices), prune_head=True)
        self.body = body
        self.out_channels = [body.feature_info[i]['num_chs'] for i in self.out_indices]
        self.strides = [body.feature_info[i]['reduction'] for i in self.out_indices]

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.body.forward_intermediates(x, indices=list(self.out_indices), norm=True, stop_early=True,
                                               intermediates_only=True)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {f'body.{n}' for n in self.body.no_weight_decay()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.body.set_grad_checkpointing(enable)


def build_dense_body(backbone: str, with_s4: bool, backbone_checkpoint: Optional[str] = None,
                     backbone_use_ema: bool = False, adapter_kwargs: Optional[Dict[str, Any]] = None,
                     **kwargs) -> nn.Module:
    """GPViT + ViT-Adapter (``gpvit_*``) or GC ViT stage maps (``gc_vit_*``); ``out_channels`` lists the levels."""
    if backbone.startswith('gc_vit'):
        if adapter_kwargs:
            raise ValueError('adapter_kwargs apply to GPViT backbones only')
        return DenseBackbone(backbone, (0, 1, 2, 3) if with_s4 else (1, 2, 3), backbone_checkpoint,
                             backbone_use_ema, **kwargs)
    args = dict(num_classes=0, global_pool='', **kwargs)
    if backbone_checkpoint is not None:
        body = create_model(backbone, checkpoint=backbone_checkpoint, use_ema=backbone_use_ema, **args)
    else:
        body = create_model(backbone, **args)
    # The extractors' ConvFFNs get the backbone's drop path rate, as in the reference, unless set apart.
    adapter_kwargs = {'drop_path_rate': kwargs.get('drop_path_rate', 0.), **(adapter_kwargs or {})}
    return GPViTAdapter(body, with_s4=with_s4, **adapter_kwargs)
