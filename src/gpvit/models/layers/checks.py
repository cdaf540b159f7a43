"""Checks of the input image batch, with errors that say what was expected."""
import torch
from timm.layers import register_notrace_function

__all__ = ['check_image_input']


def _shape(x: torch.Tensor) -> str:
    return '(' + ', '.join([str(s) for s in x.shape]) + ')'


@register_notrace_function  # FX records the call and runs it on the real input
def check_image_input(x: torch.Tensor, in_chans: int, min_size: int, model_name: str) -> None:
    """Validate an image batch ``(B, in_chans, H, W)`` with ``H, W >= min_size``.

    Raises a one-line ``ValueError`` naming what was expected, instead of the shape error some reshape deep
    inside the model would raise. TorchScript-compatible.
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
    H, W = x.shape[-2], x.shape[-1]
    if H < min_size or W < min_size:
        raise ValueError(f'{model_name} needs images of at least {min_size}x{min_size} pixels, got {H}x{W}')
