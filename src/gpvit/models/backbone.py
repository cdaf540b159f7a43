"""The timm backbone and classifier API shared by GPViT and GC ViT.

Both families are a stem, a sequence of *levels* and a classifier: GPViT's levels are its blocks (all at stride
8 and one width), GC ViT's its four stages (strides 4, 8, 16, 32, doubling the width). Token maps are
channels-last ``(B, h, w, C)`` between levels. After the last level come a final LayerNorm (``norm``), optional
LayerNorms of their own for some levels' intermediate outputs (``out_norms``, keyed by level index, for dense
tasks), the pooling, dropout (``head_drop``) and a Linear classifier (``head``).

:class:`Backbone` implements timm's API on that structure once: ``forward_features``, ``forward_head``,
``forward``, ``forward_intermediates``, ``prune_intermediate_layers``, ``reset_classifier``, ``get_classifier``
and ``set_grad_checkpointing``. A model supplies what differs:

* ``level_attr``: the name of its ``nn.Sequential`` of levels (``'blocks'`` or ``'stages'``, the state-dict prefix);
* ``family``: its name in error messages (``'GPViT'``);
* ``global_pools``: the pooling modes it accepts, and :meth:`Backbone._pool` /
  :meth:`Backbone._set_global_pool` if it has one besides ``'avg'`` and ``''``;
* :meth:`Backbone._embed`: its stem, from the checked image batch to the first level's input;
* :meth:`Backbone._forward_levels`: all levels in order (gradient checkpointing included), as
  ``forward_features`` runs them;
* :meth:`Backbone._run_level` if it runs a single level other than as ``level(x)`` (gradient checkpointing);
* ``final_norm_on_all_levels``: where the final norm applies (see there).

and sets in its ``__init__``: ``in_chans``, ``num_classes``, ``global_pool``, ``num_features``,
``head_hidden_size``, ``feature_info`` (list of dicts), ``norm``, ``out_norms`` (``nn.ModuleDict``), ``head_drop``
and ``head``. (They are not declared as class annotations: TorchScript would read those as attribute types.)

In eval mode on CPU float32 the model swaps in the fused inference variants of its blocks
(:mod:`gpvit.models.fused`); see :meth:`Backbone.train`.
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg
from timm.models._features import feature_take_indices

from ..hub import WeightsUnavailable, load_weights
from .layers import check_image_input

__all__ = ['Backbone', 'MIN_INPUT_SIZE', 'UnsupportedPoolError', 'add_block_selector', 'build_backbone',
           'device_dtype', 'init_linear_and_layernorm']

MIN_INPUT_SIZE = 32

#: Called with the model after ``train()`` / ``eval()`` and after ``.to()``: they may swap blocks for variants with
#: the same parameters (:mod:`gpvit.models.fused` adds its selection on import; this module knows nothing of it).
_BLOCK_SELECTORS: List[Callable[[nn.Module], None]] = []


def add_block_selector(select: Callable[[nn.Module], None]) -> None:
    """Run ``select(model)`` whenever a model's mode, device or dtype changes (see :data:`_BLOCK_SELECTORS`)."""
    if select not in _BLOCK_SELECTORS:
        _BLOCK_SELECTORS.append(select)


class UnsupportedPoolError(ValueError, AssertionError):
    """A ``global_pool`` the model does not have. A ``ValueError``, as the project raises for bad arguments, and
    an ``AssertionError``, which is how timm's models reject a pooling they lack (timm's callers catch that)."""


def device_dtype(module: nn.Module) -> Dict:
    """``{'device': ..., 'dtype': ...}`` of the module's first parameter (both None without parameters): the
    factory kwargs for a part built later (a new head), so that it lands where the model is."""
    p = next(module.parameters(), None)
    return {'device': None if p is None else p.device, 'dtype': None if p is None else p.dtype}


@torch.no_grad()
def init_linear_and_layernorm(module: nn.Module) -> None:
    """The reference initialisation both families share: every Linear in ``module`` truncated normal (std 0.02,
    cut at +-2) with zero bias, every LayerNorm weight 1 and bias 0; other modules are left as they are."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _with_published_weights(variant: str, kwargs: Dict) -> Dict:
    """``kwargs`` with the weights of ``pretrained=True`` read into the pretrained cfg (``state_dict``).

    A cfg that names no state dict or file but a ``url`` is downloaded through :mod:`gpvit.hub` (cache, hash,
    errors that name the URL and the cache path), so timm's loader then runs the family's filter fn, its
    first-conv adaptation for ``in_chans != 3`` and its classifier handling on it, as on a local file.
    """
    from timm.models._builder import resolve_pretrained_cfg
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), dict(overlay))
    if cfg.state_dict is not None or cfg.file or cfg.source not in (None, '', 'timm'):
        return kwargs  # a given state dict or file, or another source timm handles
    if not cfg.url:
        raise WeightsUnavailable(f'{cfg.architecture or variant}: no published weights to download; load a local '
                                 f'file with checkpoint=PATH (gpvit.create_model) instead of pretrained=True')
    return dict(kwargs, pretrained_cfg_overlay=dict(overlay, state_dict=load_weights(cfg.url)))


def build_backbone(
        cls: type,
        variant: str,
        pretrained: bool,
        filter_fn: Callable[[Dict[str, torch.Tensor], nn.Module], Dict[str, torch.Tensor]],
        num_levels: int,
        default_out_indices: Sequence[int],
        /,
        **kwargs,
) -> 'Backbone':
    """timm's ``build_model_with_cfg`` for a :class:`Backbone` family, with ``filter_fn`` as the pretrained
    filter and ``default_out_indices`` as the levels ``features_only`` models return unless ``out_indices`` says.

    A ``features_only`` model (dense tasks) passes each requested level output through a LayerNorm of its own
    (``out_norm_indices``, unless given) and is built without a head or pooling (timm's feature wrapper prunes
    the head anyway). ``num_levels`` is the number of levels the model will have, to resolve ``out_indices``.
    """
    if pretrained:
        kwargs = _with_published_weights(variant, kwargs)
    feature_cfg = dict(feature_cls='getter', out_indices=tuple(default_out_indices), norm=True)
    if kwargs.get('features_only'):
        take, _ = feature_take_indices(num_levels, kwargs.get('out_indices', feature_cfg['out_indices']))
        kwargs.setdefault('out_norm_indices', tuple(take))
        kwargs.update(num_classes=0, global_pool='')
    return build_model_with_cfg(cls, variant, pretrained, pretrained_filter_fn=filter_fn, feature_cfg=feature_cfg,
                                **kwargs)


class Backbone(nn.Module):
    """Stem, levels, final norm, pooling and classifier, with timm's backbone API (see the module docstring)."""

    #: Name of the model's ``nn.Sequential`` of levels.
    level_attr = ''
    __constants__ = ['family', 'min_input_size']  # TorchScript constants, for the input check
    #: The model's name in error messages.
    family = 'Backbone'
    #: The smallest image side the model accepts.
    min_input_size = MIN_INPUT_SIZE
    #: The accepted values of ``global_pool``: ``'avg'`` (mean over the map) and ``''`` (no pooling) at least.
    global_pools = ('avg', '')
    #: True where every level's output has the final norm's width (GPViT): in ``forward_intermediates(norm=True)``
    #: a level without an out norm of its own goes through the final norm, and pruning keeps the final norm and
    #: the head unless asked. False where the widths differ (GC ViT): only the last level falls back to the final
    #: norm, others are returned as they are; pruning drops the final norm when the last level goes or has an out
    #: norm of its own, and the head (which no longer fits) when the last level goes.
    final_norm_on_all_levels = False

    # -- what a model supplies ------------------------------------------------------------------------------

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """The stem: ``(B, in_chans, H, W)`` images, already checked -> the first level's input ``(B, h, w, C)``."""
        raise NotImplementedError

    def _input_weight(self) -> torch.Tensor:
        """The weight of the first conv: the input's dtype is checked against it."""
        raise NotImplementedError

    def _forward_levels(self, x: torch.Tensor) -> torch.Tensor:
        """All levels: the first level's input ``(B, h, w, C)`` -> the last level's output ``(B, h', w', C')``."""
        raise NotImplementedError

    def _run_level(self, level: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One level: ``(B, h, w, C)`` -> ``(B, h', w', C')``."""
        return level(x)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> ``(B, C)`` with ``global_pool='avg'``; the map as it is with ``''``."""
        return x.mean(dim=(2, 3)) if self.global_pool == 'avg' else x

    def _set_global_pool(self, global_pool: str) -> None:
        """Switch to the (already checked) pooling mode ``global_pool``."""
        self.global_pool = global_pool

    def _init_reference(self) -> None:
        """The model's reference initialisation of freshly constructed modules (see :meth:`init_weights`)."""
        raise NotImplementedError

    # -- construction helpers -------------------------------------------------------------------------------

    def _check_global_pool(self, global_pool: str) -> None:
        if global_pool not in self.global_pools:
            *others, last = (repr(p) for p in self.global_pools)
            raise UnsupportedPoolError(f"global_pool must be {', '.join(others)} or {last}, got {global_pool!r}")

    def _apply_weight_init(self, weight_init: str) -> None:
        """``'reference'``: the reference initialisation; ``'skip'``: leave PyTorch's. Nothing to initialise on the
        meta device (``init_weights()`` after ``to_empty``)."""
        if weight_init not in ('reference', 'skip'):
            raise ValueError(f"weight_init must be 'reference' or 'skip', got {weight_init!r}")
        if weight_init == 'reference' and not any(p.is_meta for p in self.parameters()):
            self.init_weights(needs_reset=False)

    @torch.no_grad()
    def init_weights(self, needs_reset: bool = True) -> None:
        """Initialise every parameter and buffer: the model's reference initialisation.

        With ``needs_reset`` (the default) every submodule that has a ``reset_parameters`` first runs it
        (convolutions, norms and their running statistics, layer scales, relative-position tables and their
        index buffers, group tokens), so that a model built on the meta device and materialised with
        ``to_empty`` is fully initialised; the constructor passes False, as its modules were just initialised.
        """
        if needs_reset:
            for m in self.modules():
                if m is not self and hasattr(m, 'reset_parameters'):
                    m.reset_parameters()
        self._init_reference()

    def _levels(self) -> nn.Sequential:
        return getattr(self, self.level_attr)

    def _no_place_for(self, key: str) -> bool:
        """Whether this model has no place for the project-layout checkpoint key ``key`` by construction: a
        level it was pruned of, an out norm it lacks, a pruned final norm, a head when it has no classifier
        (the ``unused`` keys of :func:`~gpvit.checkpoint.reconcile`)."""
        head = key.split('.')[0]
        if head == self.level_attr:
            return int(key.split('.')[1]) >= len(self._levels())
        if head == 'out_norms':
            return key.split('.')[1] not in self.out_norms
        if head == 'norm':
            return isinstance(self.norm, nn.Identity)
        if head == 'head':
            return self.num_classes == 0
        return False

    # -- inference path -------------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> 'Backbone':
        """As ``nn.Module.train``; then the block selection hooks run (:func:`add_block_selector`:
        :mod:`gpvit.models.fused` swaps its CPU inference variants in for eval mode and out for training). Same
        parameters, buffers and state-dict keys either way."""
        super().train(mode)
        for select in _BLOCK_SELECTORS:
            select(self)
        return self

    def _apply(self, fn, *args, **kwargs):
        """As ``nn.Module._apply`` (``to``, ``float``, ``to_empty``, ...), then the block selection hooks run again
        for the new device and dtype."""
        out = super()._apply(fn, *args, **kwargs)
        for select in _BLOCK_SELECTORS:
            select(self)
        return out

    # -- timm API -------------------------------------------------------------------------------------------

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (non-reentrant, so it works under DDP)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier by a Linear with ``num_classes`` outputs (none for 0); ``global_pool``, if
        given, one of the model's ``global_pools`` (``''``: no pooling, forward returns the map). New parts are
        built on the model's device and dtype and in its train / eval mode."""
        if global_pool is not None:
            self._check_global_pool(global_pool)
            self._set_global_pool(global_pool)
        self.num_classes = num_classes
        # An nn.Linear named head, not timm's ClassifierHead: the checkpoint layout is 'head.weight', and the
        # pooling ('group' in GPViT) is the model's own.
        self.head = nn.Linear(self.num_features, num_classes, **device_dtype(self)) if num_classes > 0 \
            else nn.Identity()
        self.head.train(self.training)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        """Check the image batch (a ``ValueError`` saying what was expected) and run the stem:
        ``(B, in_chans, H, W)`` -> ``(B, h, w, C)``."""
        check_image_input(x, self.in_chans, self.min_input_size, self.family, self._input_weight())
        return self._embed(x)

    def _out_norm(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Level ``index``'s output ``(B, h, w, C)`` through its out norm, else as ``final_norm_on_all_levels``
        says."""
        if str(index) in self.out_norms:
            return self.out_norms[str(index)](x)
        if self.final_norm_on_all_levels or index == len(self._levels()) - 1:
            return self.norm(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` -> ``(B, num_features, h, w)``: the last level's map after the final norm
        (GPViT: ``h = ceil(H/8)``; GC ViT: ``H/32``, rounded up at each stride)."""
        x = self._forward_levels(self._stem(x))
        return self.norm(x).permute(0, 3, 1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, C, h, w)`` -> logits ``(B, num_classes)``, pooled features ``(B, C)`` if ``pre_logits``; no
        pooling with ``global_pool=''``."""
        x = self.head_drop(self._pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Level outputs: GPViT's block outputs, all at stride 8; GC ViT's stage outputs at strides 4, 8, 16, 32.

        Args:
            x: ``(B, in_chans, H, W)`` images, any size >= 32.
            indices: last n levels if int, all if None, else the given level indices.
            norm: pass each intermediate through its LayerNorm: ``out_norms[i]`` where the model has one for level
                i (the reference segmentation backbone's ``norm{i}`` in GPViT, the detection backbone's
                ``norm0..norm3`` in GC ViT), else the final norm; in GC ViT only the last stage falls back to the
                final norm, other stages are returned as they are.
            stop_early: stop after the last requested level (only with ``intermediates_only``).
            output_fmt: ``'NCHW'`` (``(B, C, h, w)`` maps) or ``'NHWC'`` (``(B, h, w, C)``).
            intermediates_only: return only the list of intermediates.

        Returns:
            The list of intermediates, or ``(final features, intermediates)`` where the final features
            ``(B, num_features, h, w)`` equal :meth:`forward_features`.
        """
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self._levels()), indices)
        x = self._stem(x)
        levels = self._levels()[:max_index + 1] if intermediates_only and stop_early else self._levels()
        intermediates = []
        for i, level in enumerate(levels):
            x = self._run_level(level, x)
            if i in take_indices:
                y = self._out_norm(i, x) if norm else x
                intermediates.append(y.permute(0, 3, 1, 2) if output_fmt == 'NCHW' else y)
        if intermediates_only:
            return intermediates
        return self.norm(x).permute(0, 3, 1, 2), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the levels after the last of ``indices`` and the out norms of levels not in ``indices``, the
        final norm if ``prune_norm`` and the head if ``prune_head``. Where the levels differ in width (GC ViT,
        ``final_norm_on_all_levels`` False), also the final norm if no kept intermediate uses it (the last level
        was dropped or has its own out norm), and the head when the last level was dropped (``num_features``
        becomes the new last level's width).

        Returns:
            The kept level indices.
        """
        take_indices, max_index = feature_take_indices(len(self._levels()), indices)
        last_dropped = max_index < len(self._levels()) - 1
        setattr(self, self.level_attr, self._levels()[:max_index + 1])
        for key in [k for k in self.out_norms if int(k) not in take_indices]:
            del self.out_norms[key]
        if not self.final_norm_on_all_levels:
            prune_norm = prune_norm or last_dropped or str(max_index) in self.out_norms
            if last_dropped:
                self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
                prune_head = True
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices
