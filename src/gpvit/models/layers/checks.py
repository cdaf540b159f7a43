"""Checks of the input image batch, with errors that say what was expected."""
from typing import Optional

import torch
from timm.layers import register_notrace_function

__all__ = ['check_image_input']


def _shape(x: torch.Tensor) -> str:
    return '(' + ', '.join([str(s) for s in x.shape]) + ')'


@register_notrace_function  # FX records the call and runs it on the real input
def check_image_input(x: torch.Tensor, in_chans: int, min_size: int, model_name: str,
                      weight: Optional[torch.Tensor] = None) -> None:
    """Validate an image batch ``(B, in_chans, H, W)``: ``B >= 1``, ``H, W >= min_size``, floating point, and of
    the dtype of ``weight`` (the model's first conv) unless autocast runs on the input's device.

    Raises a one-line ``ValueError`` naming what was expected and the fix, instead of the error some op deep
    inside the model would raise (a division by zero for an empty batch, a raw dtype mismatch in the stem).
    TorchScript-compatible (the dtype checks run in eager mode only).
    """
    if not torch.jit.is_scripting():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'{model_name} expects a torch.Tensor image batch, got {type(x).__name__}')
    if x.dim() != 4:
        raise ValueError(
            f'{model_name} expects a 4-D image batch (B, {in_chans}, H, W), got a {x.dim()}-D tensor of shape '
            f'{_shape(x)}')
    if x.shape[1] != in_chans:
        hint = ' (channels-last input? use x.permute(0, 3, 1, 2))' if x.shape[-1] == in_chans else ''
        raise ValueError(
            f'{model_name} expects {in_chans} input channels (B, {in_chans}, H, W), got shape {_shape(x)}{hint}')
    if x.shape[0] == 0:
        raise ValueError(f'{model_name} got an empty batch, shape {_shape(x)}: pass at least one image')
    H, W = x.shape[-2], x.shape[-1]
    if H < min_size or W < min_size:
        raise ValueError(f'{model_name} needs images of at least {min_size}x{min_size} pixels, got {H}x{W}')
    if not torch.jit.is_scripting():
        if not x.is_floating_point():
            raise ValueError(
                f'{model_name} expects floating-point images, got {x.dtype}: convert them (x.float() / 255) and '
                "normalise with the model's pretrained_cfg mean and std")
        if weight is not None and x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(
                f'{model_name} has {weight.dtype} weights, got {x.dtype} images: cast the images '
                f'(x.to({weight.dtype})) or the model (model.to({x.dtype})), or run it under torch.autocast')
