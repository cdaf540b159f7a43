"""Checkpoints of every format a user has: read, detect, convert, check, load, save.

Reading (:func:`read_checkpoint`) unwraps the containers in circulation — mmcv/mmcls ``{'meta', 'state_dict'}``,
timm ``CheckpointSaver`` dicts (``state_dict`` / ``state_dict_ema``), this project's training checkpoints
(``model`` / ``model_ema``), DDP ``module.`` prefixes, safetensors files — into a flat state dict. Each model
family then converts its foreign key layouts to the project's layout in its ``checkpoint_filter_fn``, and
:func:`reconcile` checks the result against the model: anything that does not fit raises a
:class:`CheckpointError` naming the variant the checkpoint looks like and the first mismatching keys, so
nothing is half-loaded silently.
"""
import argparse
import json
import logging
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from .errors import CheckpointError

_logger = logging.getLogger(__name__)

__all__ = ['CheckpointError', 'Checkpoint', 'read_checkpoint', 'read_checkpoint_file', 'unwrap_state_dict',
           'convert_family_checkpoint', 'reconcile', 'atomic_save', 'save_safetensors']

StateDict = Dict[str, torch.Tensor]
_MAX_LISTED = 8


def _torch_load(path: Path, weights_only: bool) -> Any:
    if path.stat().st_size == 0:
        raise CheckpointError(f'{path}: the file is empty (0 bytes): a copy or a write that did not finish')
    try:
        if weights_only:
            # timm CheckpointSaver files keep the training arguments as an argparse.Namespace.
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location='cpu', weights_only=True)
        return torch.load(path, map_location='cpu', weights_only=False)
    except pickle.UnpicklingError as e:
        with open(path, 'rb') as f:
            looks_like_torch = zipfile.is_zipfile(path) or f.read(1) == b'\x80'  # zip or pickle protocol >= 2
        if not looks_like_torch:
            raise CheckpointError(f'{path}: not a readable PyTorch checkpoint (neither a zip archive nor a pickle)') from e
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f'{path}: holds Python objects that are not loaded without trusting the file ({reason}). If you trust '
            f'it, load it with weights_only=False (on the command line: --unsafe-pickle)') from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f'{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {reason}') from e


def unwrap_state_dict(obj: Mapping, use_ema: bool = False) -> StateDict:
    """Find the state dict inside a checkpoint container and strip DDP's ``module.`` prefix.

    Args:
        obj: a loaded checkpoint.
        use_ema: take the EMA weights (``state_dict_ema`` / ``model_ema``); an error if there are none.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f'a checkpoint must be a dict of tensors or a dict holding one, got {type(obj).__name__}')
    if use_ema:
        for key in ('state_dict_ema', 'model_ema', 'ema'):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        else:
            raise CheckpointError(f'use_ema=True, but the checkpoint holds no EMA weights (top-level keys: '
                                  f'{sorted(obj)[:_MAX_LISTED]})')
    else:
        for key in ('state_dict', 'model', 'module'):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f'no tensors found in the checkpoint (top-level keys: {sorted(obj)[:_MAX_LISTED]})')
    if all(k.startswith('module.') for k in tensors):
        tensors = {k[len('module.'):]: v for k, v in tensors.items()}
    return tensors


#: Top-level keys of this project's training checkpoints that describe the run (kept by :func:`read_checkpoint_file`).
_META_KEYS = ('format', 'model_spec', 'task', 'classes', 'config', 'epoch', 'step', 'best', 'metrics')


@dataclass
class Checkpoint:
    """A checkpoint read once: its weights and what it says about itself.

    Attributes:
        state_dict: the flat state dict (the EMA weights with ``use_ema``).
        meta: the descriptive entries of a training checkpoint of this project (``model_spec``, ``task``,
            ``classes``, ``config``, ...; see :mod:`gpvit.engine.state`), or of a safetensors file's metadata;
            an mmcv release file's class names as ``classes``; empty otherwise.
        path: the file, or None for an in-memory checkpoint.
    """
    state_dict: StateDict
    meta: Dict[str, Any]
    path: Optional[Path] = None

    @property
    def model_spec(self) -> Optional[Dict[str, Any]]:
        """``{'name', 'kwargs'}`` of the model a training checkpoint was made with, else None."""
        spec = self.meta.get('model_spec')
        return spec if isinstance(spec, dict) and 'name' in spec else None


def _meta(obj: Mapping) -> Dict[str, Any]:
    """The descriptive entries of a loaded checkpoint; the class names of an mmcv release file
    (``meta['CLASSES']``, as the reference's detectors and segmentors save them) as ``classes``."""
    meta = {k: obj[k] for k in _META_KEYS if k in obj}
    mmcv = obj.get('meta')
    if 'classes' not in meta and isinstance(mmcv, Mapping) and isinstance(mmcv.get('CLASSES'), (list, tuple)):
        meta['classes'] = [str(c) for c in mmcv['CLASSES']]
    return meta


def read_checkpoint_file(
        src: Union[str, os.PathLike, Mapping, 'Checkpoint'],
        use_ema: bool = False,
        weights_only: bool = True,
) -> Checkpoint:
    """Read a checkpoint file (``.pth``, ``.pth.tar``, ``.pt``, ``.safetensors``) or dict once: its flat state
    dict and its metadata. A :class:`Checkpoint` is returned as it is."""
    if isinstance(src, Checkpoint):
        return src
    if isinstance(src, Mapping):
        return Checkpoint(unwrap_state_dict(src, use_ema), _meta(src))
    path = Path(src)
    if path.is_dir():
        raise CheckpointError(f'{path}: is a directory; give the checkpoint file inside it (e.g. {path}/last.pth)')
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint not found: {path}')
    if path.suffix == '.safetensors':
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file
        try:
            with safe_open(str(path), 'pt') as f:
                meta: Dict[str, Any] = dict(f.metadata() or {})
            if isinstance(meta.get('model_spec'), str):  # written by gpvit convert as JSON
                try:
                    meta['model_spec'] = json.loads(meta['model_spec'])
                except ValueError:
                    del meta['model_spec']
            return Checkpoint(unwrap_state_dict(load_file(str(path)), use_ema), meta, path)
        except SafetensorError as e:
            raise CheckpointError(f'{path}: not a readable safetensors file: {e}') from e
    obj = _torch_load(path, weights_only)
    return Checkpoint(unwrap_state_dict(obj, use_ema), _meta(obj) if isinstance(obj, Mapping) else {}, path)


def read_checkpoint(
        src: Union[str, os.PathLike, Mapping, Checkpoint],
        use_ema: bool = False,
        weights_only: bool = True,
) -> StateDict:
    """Read a checkpoint file (``.pth``, ``.pth.tar``, ``.pt``, ``.safetensors``) or dict into a flat state dict."""
    return read_checkpoint_file(src, use_ema, weights_only).state_dict


def convert_family_checkpoint(
        state_dict: Mapping,
        to_project_layout: Callable[[StateDict], Optional[Tuple[StateDict, List[str]]]],
        dense_prefixes: Tuple[str, ...],
        *,
        family: str,
        layouts: str,
        unexpected_in: str,
        logger: logging.Logger,
) -> Tuple[StateDict, bool]:
    """The first steps of a family's ``checkpoint_filter_fn``: unwrap the container, convert to the project's layout.

    The keys ``to_project_layout`` sets aside are accepted only from a detector or segmentor checkpoint (one of
    them starts with one of ``dense_prefixes``, its heads' names); they are left out, with an info message.

    Args:
        state_dict: a loaded checkpoint of any supported layout.
        to_project_layout: the family's converter, ``state_dict -> (state_dict, set_aside_keys)`` or None.
        dense_prefixes: top-level prefixes of the family's detector / segmentor checkpoints that are not backbone.
        family: the family's name in messages (``'GPViT'``).
        layouts: the supported layouts, listed in the error for a checkpoint of none of them.
        unexpected_in: what the error for other keys set aside calls the checkpoint (``'GPViT classifier'``).
        logger: where the info message goes (the family module's logger).

    Returns:
        ``(state_dict, dense)``: the state dict in the project's layout, and whether it came from a detector or
        segmentor checkpoint.

    Raises:
        CheckpointError: not a checkpoint of this family, or keys set aside that are not a dense model's parts.
    """
    state_dict = unwrap_state_dict(state_dict)
    converted = to_project_layout(state_dict)
    if converted is None:
        raise CheckpointError(f'not a {family} checkpoint in any supported layout ({layouts}); '
                              f'first keys: {list(state_dict)[:_MAX_LISTED]}')
    state_dict, set_aside = converted
    dense = any(k.startswith(dense_prefixes) for k in set_aside)
    if set_aside and not dense:
        raise CheckpointError(f'unexpected keys in a {unexpected_in} checkpoint: {set_aside[:_MAX_LISTED]}')
    if set_aside:
        logger.info('loading the %s backbone of a detection/segmentation checkpoint; %d keys of its other parts '
                    'set aside', family, len(set_aside))
    return state_dict, dense


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return cfg.get('architecture') or type(model).__name__


def reconcile(
        state_dict: StateDict,
        model: nn.Module,
        looks_like: Optional[str],
        optional: Callable[[str], bool] = lambda k: False,
        unused: Callable[[str], bool] = lambda k: False,
        input_conv: Optional[str] = None,
) -> StateDict:
    """Check a converted state dict against ``model`` and complete it.

    Args:
        state_dict: in the project's layout.
        model: the target model.
        looks_like: the variant the checkpoint appears to be, for error messages.
        optional: keys the checkpoint may lack or hold with another shape (classifier heads of
            backbone-only or other-task checkpoints); the model keeps its own values, with a warning.
        unused: keys of the checkpoint this model has no place for by construction (a pruned or head-less
            model); they are dropped.
        input_conv: the weight key of the model's first conv. A 3-channel weight there, for a model built with
            other ``in_chans``, is passed through as it is: timm's ``load_pretrained`` adapts it to the model
            after the filter (``adapt_input_conv``), and so does :func:`gpvit.models.load_checkpoint`.

    Returns:
        A state dict with exactly the model's keys (and shapes, but for such an input conv).

    Raises:
        CheckpointError: any other missing, unexpected or mis-shaped key.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state_dict if k not in own and not unused(k)]
    mismatched = [k for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if input_conv in mismatched and _rgb_conv_for(state_dict[input_conv], own[input_conv]):
        mismatched.remove(input_conv)
    fatal_missing = [k for k in missing if not optional(k)]
    fatal_shape = [k for k in mismatched if not optional(k)]
    if fatal_missing or unexpected or fatal_shape:
        name = _model_name(model)
        lines = [f'checkpoint does not fit {name}'
                 + (f': it looks like {looks_like}' if looks_like and looks_like != name else '')
                 + (' (same variant, other configuration)' if looks_like == name else '') + '.']
        if fatal_shape:
            lines.append(f'{len(fatal_shape)} shape mismatches, first: ' + ', '.join(
                f'{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}' for k in fatal_shape[:_MAX_LISTED]))
        if fatal_missing:
            lines.append(f'{len(fatal_missing)} missing keys, first: {fatal_missing[:_MAX_LISTED]}')
        if unexpected:
            lines.append(f'{len(unexpected)} unexpected keys, first: {unexpected[:_MAX_LISTED]}')
        raise CheckpointError('\n'.join(lines))
    kept = [k for k in missing + mismatched if not k.endswith('num_batches_tracked')]
    if kept:
        _logger.warning('checkpoint has no usable weights for %d key(s) of %s, left as initialised: %s',
                        len(kept), _model_name(model), kept[:_MAX_LISTED])
    return {k: (state_dict[k] if k in state_dict and k not in mismatched else v) for k, v in own.items()}


def _rgb_conv_for(weight: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether ``weight`` is a 3-input-channel conv weight that differs from ``target`` in its input channels only."""
    return (weight.ndim == target.ndim == 4 and weight.shape[1] == 3 and weight.shape[0] == target.shape[0]
            and weight.shape[2:] == target.shape[2:])


def atomic_save(obj: Any, path: Union[str, os.PathLike], save_fn: Callable[[Any, str], None] = None) -> None:
    """Write ``obj`` to ``path`` through a temporary file in the same folder and an atomic rename.

    A crash mid-write leaves the previous file intact, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    try:
        (save_fn or torch.save)(obj, tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_safetensors(state_dict: StateDict, path: Union[str, os.PathLike], metadata: Optional[Dict[str, str]] = None):
    """Save a state dict as safetensors (contiguous copies, atomically)."""
    from safetensors.torch import save_file
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    atomic_save(tensors, path, lambda obj, p: save_file(obj, p, metadata=metadata))
