"""Grouping maps of GPViT (the paper's Figure 6): which group claims each image token.

In every GP block, the group tokens gather the image tokens with a softmax over the image tokens
(``GPBlock.group_attention``: weights ``(B, heads, groups, H, W)``). For each token the tool takes the group
with the largest weight (of the weights averaged over the heads, or of each head), colours the token by that
group, upsamples the token map to the image (nearest: one token covers ``stride x stride`` pixels) and blends it
over the image. The block inputs are captured with forward pre-hooks during one forward pass, so the maps are
those of the model's own forward pass.
"""
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..data.folder import to_rgb
from .export import native_input_size

_logger = logging.getLogger(__name__)

__all__ = ['GroupingMap', 'Visualization', 'grouping_maps', 'load_image', 'group_colors', 'overlay',
           'visualize', 'figure_size', 'PANEL_PX', 'TITLE_PX']

PANEL_PX = 256  #: default panel side in pixels
TITLE_PX = 24  #: height of the title strip above each panel row, in pixels
_DPI = 100


@dataclass
class GroupingMap:
    """Grouping weights of one GP block.

    Attributes:
        name: module name of the block (e.g. ``'blocks.1'``).
        weights: ``(heads, groups, h, w)`` for one image.
    """
    name: str
    weights: torch.Tensor

    @property
    def num_groups(self) -> int:
        return self.weights.shape[1]

    def labels(self, per_head: bool = False) -> np.ndarray:
        """Index of the group claiming each token most: ``(h, w)`` (heads averaged) or ``(heads, h, w)``."""
        w = self.weights if per_head else self.weights.mean(0)
        return w.argmax(-3).cpu().numpy()


@dataclass
class Visualization:
    """Result of :func:`visualize`: the PNG written and the maps drawn in it."""
    path: Path
    size: Tuple[int, int]
    model: str
    maps: List[GroupingMap] = field(default_factory=list)
    image_size: Tuple[int, int] = (0, 0)


def _gp_blocks(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    from ..models.gpvit import GPBlock
    return [(n, m) for n, m in model.named_modules() if isinstance(m, GPBlock)]


def grouping_maps(model: nn.Module, images: torch.Tensor) -> List[List[GroupingMap]]:
    """Grouping weights of every GP block of ``model`` for a batch of images (one forward pass).

    Args:
        model: a GPViT (any module containing ``GPBlock`` s).
        images: ``(B, C, H, W)`` normalised images.

    Returns:
        Per image, one :class:`GroupingMap` per GP block in forward order.

    Raises:
        ValueError: the model has no GP blocks.
    """
    blocks = _gp_blocks(model)
    if not blocks:
        name = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__
        raise ValueError(f'{name} has no GP blocks (grouping attention); the grouping maps exist only for GPViT '
                         f'models')
    inputs = {}
    hooks = [blk.register_forward_pre_hook(lambda mod, args, name=name: inputs.__setitem__(name, args[0]))
             for name, blk in blocks]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(images)
            weights = {name: blk.group_attention(inputs[name]) for name, blk in blocks if name in inputs}
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    missing = [name for name, _ in blocks if name not in weights]
    if missing:
        raise RuntimeError(f'GP blocks {missing} did not run in the forward pass')
    return [[GroupingMap(name, weights[name][b]) for name, _ in blocks] for b in range(images.shape[0])]


def load_image(path: Union[str, Path], size: int, multiple: int = 16, grayscale: bool = False) -> np.ndarray:
    """Read an image and resize it: shorter side ``size``, aspect ratio kept, both sides multiples of ``multiple``.

    Returns:
        ``(H, W, 3)`` (or ``(H, W, 1)`` if ``grayscale``) uint8 array.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not an image PIL can read, or ``size`` is too small.
    """
    from PIL import Image, UnidentifiedImageError
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'image not found: {path}')
    if size < 2 * multiple:
        raise ValueError(f'image size must be at least {2 * multiple}, got {size}')
    try:
        with Image.open(path) as im:
            im = to_rgb(im)  # 16-bit images scaled, not clipped
            im = im.convert('L') if grayscale else im
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f'{path}: not a readable image ({e})') from e
    w, h = im.size
    scale = size / min(w, h)
    new_w = max(multiple, round(w * scale / multiple) * multiple)
    new_h = max(multiple, round(h * scale / multiple) * multiple)
    arr = np.asarray(im.resize((new_w, new_h), Image.BICUBIC))
    return arr[..., None] if arr.ndim == 2 else arr


def group_colors(n: int) -> np.ndarray:
    """``(n, 3)`` distinct RGB colours in [0, 1]: matplotlib's tab20, tab20b and tab20c, then golden-ratio hues."""
    import matplotlib
    base = np.concatenate([np.asarray(matplotlib.colormaps[c].colors)[:, :3] for c in ('tab20', 'tab20b', 'tab20c')])
    if n <= len(base):
        return base[:n]
    hues = (np.arange(n) * 0.6180339887) % 1.0
    hsv = np.stack([hues, np.full(n, 0.75), np.full(n, 0.95)], axis=1)
    return matplotlib.colors.hsv_to_rgb(hsv)


def overlay(image: np.ndarray, labels: np.ndarray, colors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the colour of each token's group over the image.

    Args:
        image: ``(H, W, 3)`` uint8 (a single channel is repeated).
        labels: ``(h, w)`` group index per token; the image is covered by ``(H / h) x (W / w)`` pixel cells.
        colors: ``(groups, 3)`` in [0, 1].
        alpha: weight of the colour.

    Returns:
        ``(H, W, 3)`` float array in [0, 1].
    """
    img = image.astype(np.float32) / 255.
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    H, W = img.shape[:2]
    h, w = labels.shape
    if H % h or W % w:
        raise ValueError(f'image {H}x{W} is not a whole number of token cells of a {h}x{w} map')
    color = colors[labels]  # (h, w, 3)
    color = np.repeat(np.repeat(color, H // h, axis=0), W // w, axis=1)
    return (1 - alpha) * img + alpha * color


def figure_size(rows: int, cols: int, image_hw: Tuple[int, int], panel_px: int = PANEL_PX) -> Tuple[int, int]:
    """``(width, height)`` in pixels of the PNG with ``rows x cols`` panels of an image of ``image_hw``.

    Each panel is ``panel_px`` wide and as high as the image's aspect ratio makes it, under a title strip of
    :data:`TITLE_PX`.
    """
    return cols * panel_px, rows * (_panel_height(image_hw, panel_px) + TITLE_PX)


def _panel_height(image_hw: Tuple[int, int], panel_px: int) -> int:
    return max(1, round(panel_px * image_hw[0] / image_hw[1]))


def _model_from_args(checkpoint, model_name: Optional[str], use_ema: bool, weights_only: bool):
    from ..checkpoint import CheckpointError, read_checkpoint_file
    from ..factory import create_model, list_models
    from ..models import model_args
    if checkpoint is None:
        if model_name is None:
            raise ValueError('give a checkpoint, a model name, or both')
        if model_name not in list_models():
            raise ValueError(f'unknown model {model_name!r}; registered models: {", ".join(list_models())}')
        _logger.warning('no checkpoint: %s with freshly initialised weights', model_name)
        return create_model(model_name), model_name
    ckpt = read_checkpoint_file(checkpoint, use_ema=use_ema, weights_only=weights_only)
    kwargs = {}
    if model_name is None:
        try:
            model_name, kwargs = model_args(ckpt)
        except CheckpointError as e:
            raise CheckpointError(f'{checkpoint}: cannot tell which model this checkpoint is for ({e}); name it '
                                  f'with --model') from e
    elif model_name not in list_models():
        raise ValueError(f'unknown model {model_name!r}; registered models: {", ".join(list_models())}')
    return create_model(model_name, checkpoint=ckpt, **kwargs), model_name


def visualize(
        image_path: Union[str, Path],
        out_path: Union[str, Path],
        checkpoint: Optional[Union[str, Path]] = None,
        model: Optional[Union[str, nn.Module]] = None,
        size: Optional[int] = None,
        per_head: bool = False,
        alpha: float = 0.5,
        panel_px: int = PANEL_PX,
        use_ema: bool = False,
        weights_only: bool = True,
) -> Visualization:
    """Draw the grouping maps of a GPViT for one image into a PNG.

    Default layout: one row, the resized image and then one panel per GP block (weights averaged over the
    heads). With ``per_head``: one row per GP block, the head average followed by one panel per head.

    Args:
        image_path: any image PIL reads.
        out_path: the PNG to write.
        checkpoint: a checkpoint of any supported format; the model is detected from it unless ``model`` is
            given.
        model: a registered model name (fresh weights unless ``checkpoint``) or a model instance.
        size: shorter image side before the forward pass (rounded to a multiple of 16); default: the model's
            pretrained-config input size.
        per_head: a panel per head instead of the head average.
        alpha: opacity of the group colours.
        panel_px: side of each square panel in pixels.
        use_ema: load the EMA weights of the checkpoint.
        weights_only: refuse pickled Python objects in the checkpoint.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from timm.data import resolve_data_config

    if not 0. <= alpha <= 1.:
        raise ValueError(f'alpha must be in [0, 1], got {alpha}')
    if not Path(image_path).is_file():  # before building a model for nothing
        raise FileNotFoundError(f'image not found: {image_path}')
    if isinstance(model, nn.Module):
        net, name = model, (getattr(model, 'pretrained_cfg', None) or {}).get('architecture', type(model).__name__)
    else:
        net, name = _model_from_args(checkpoint, model, use_ema, weights_only)
    if not _gp_blocks(net):
        raise ValueError(f'{name} has no GP blocks (grouping attention); visualize works for GPViT models')
    cfg = resolve_data_config(model=net)
    size = size or min(native_input_size(net))
    in_chans = cfg['input_size'][0]
    image = load_image(image_path, size, grayscale=in_chans == 1)
    x = torch.from_numpy(image.copy()).permute(2, 0, 1).float().div(255.)
    mean = torch.tensor(cfg['mean'][:in_chans]).view(-1, 1, 1)
    std = torch.tensor(cfg['std'][:in_chans]).view(-1, 1, 1)
    x = ((x - mean) / std).unsqueeze(0)
    device = next(net.parameters()).device
    maps = grouping_maps(net, x.to(device))[0]

    heads = maps[0].weights.shape[0]
    panels: List[List[Tuple[str, Optional[np.ndarray], int]]] = []
    if per_head:
        for m in maps:
            row = [(f'{m.name}: {m.num_groups} groups, mean', m.labels(), m.num_groups)]
            row += [(f'head {h}', lab, m.num_groups) for h, lab in enumerate(m.labels(per_head=True))]
            panels.append(row)
    else:
        panels.append([(f'input {image.shape[0]}x{image.shape[1]}', None, 0)]
                      + [(f'{m.name}: {m.num_groups} groups', m.labels(), m.num_groups) for m in maps])
    rows, cols = len(panels), max(len(r) for r in panels)
    width, height = figure_size(rows, cols, image.shape[:2], panel_px)
    panel_h = _panel_height(image.shape[:2], panel_px)
    fig = plt.figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    rgb = image.repeat(3, -1) if image.shape[-1] == 1 else image
    for r, row in enumerate(panels):
        for c, (title, labels, n) in enumerate(row):
            left, bottom = c * panel_px, height - (r + 1) * (panel_h + TITLE_PX)  # pixels from bottom-left
            ax = fig.add_axes(((left + 2) / width, (bottom + 2) / height, (panel_px - 4) / width,
                               (panel_h - 4) / height))
            ax.imshow(rgb if labels is None else overlay(image, labels, group_colors(n), alpha),
                      interpolation='nearest', aspect='auto')
            ax.set_axis_off()
            fig.text((left + panel_px / 2) / width, (bottom + panel_h + TITLE_PX / 2) / height, title,
                     ha='center', va='center', fontsize=8)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=_DPI)
    plt.close(fig)
    _logger.info('%s: %d GP blocks, %d heads, image %s', name, len(maps), heads, image.shape[:2])
    return Visualization(out_path, (width, height), name, maps, tuple(image.shape[:2]))
