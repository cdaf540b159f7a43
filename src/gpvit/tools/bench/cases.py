"""Benchmark cases: what is measured (model, input size, batch, dtype, device), the GPViT appendix suite, and
the models by name, plain-ViT baselines included."""
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

APPENDIX_SIZES: Tuple[Tuple[int, int], ...] = ((224, 224), (512, 512), (800, 1280))
#: Token-grid sides of the Figure 5 sweep: 28x28 (224x224 at stride 8) to 256x256 tokens.
FIGURE5_SIDES: Tuple[int, ...] = (28, 32, 48, 64, 96, 128, 160, 192, 224, 256)
DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}
MODES = ('infer', 'train')
#: Heads of the plain-ViT baselines: GPViT's widths (216, 348, 432, 624) have no common head size of 64, so the
#: baselines use 6 heads, GPViT's own number of global (grouping/ungrouping) heads. FLOPs do not depend on it.
PLAIN_VIT_HEADS = 6
_PLAIN_VIT = re.compile(r'^vit_plain_p(\d+)_c(\d+)(?:_d(\d+))?(?:_h(\d+))?$')


@dataclass
class BenchCase:
    """One benchmark case.

    Attributes:
        model: a registered model of this project, any timm model name, or a plain ViT baseline
            ``vit_plain_p{patch}_c{width}[_d{depth}][_h{heads}]`` (depth 12, 6 heads by default).
        input_size: ``(H, W)``.
        batch_size: images per forward pass.
        dtype: ``'float32'``, ``'bfloat16'`` or ``'float16'``. Inference: weights and input are cast to it.
            Training: mixed precision as the engine trains (float32 weights, autocast to the dtype, a GradScaler
            for float16).
        device: ``'cpu'`` or ``'cuda'`` (``'cuda:N'``).
        mode: ``'infer'`` (a forward pass in eval mode) or ``'train'`` (a training step: train mode, forward,
            cross-entropy on random labels, backward, the engine's default optimiser step, fused AdamW).
    """
    model: str
    input_size: Tuple[int, int]
    batch_size: int = 1
    dtype: str = 'float32'
    device: str = 'cpu'
    mode: str = 'infer'


@dataclass
class BenchResult:
    """Measurements of one case; see the module docstring for the methods.

    ``status`` is ``'ok'``, ``'OOM'``, ``'timeout'`` or ``'error'``; ``note`` says why for the others.
    ``flops`` is the forward pass's, per image (batch 1; a training step is about 3x); ``latency_ms`` per batch
    (a forward pass or a training step, median); ``throughput`` in images/s; ``peak_mem_mb`` in MiB.
    """
    model: str
    input_size: str
    batch_size: int
    dtype: str
    device: str
    mode: str = 'infer'
    params: Optional[int] = None
    flops: Optional[int] = None
    latency_ms: Optional[float] = None
    throughput: Optional[float] = None
    peak_mem_mb: Optional[float] = None
    mem_method: str = ''
    iters: int = 0
    status: str = 'ok'
    note: str = ''

    @classmethod
    def for_case(cls, case: 'BenchCase', **kwargs) -> 'BenchResult':
        """A result naming ``case`` (its model, size, batch, dtype, device and mode), measurements to come."""
        return cls(case.model, size_str(case.input_size), case.batch_size, case.dtype, case.device, case.mode,
                   **kwargs)


def parse_size(text: str) -> Tuple[int, int]:
    """``'224'`` -> ``(224, 224)``; ``'800x1280'`` -> ``(800, 1280)`` (height x width)."""
    m = re.fullmatch(r'\s*(\d+)\s*(?:[x,]\s*(\d+)\s*)?', str(text))
    if not m or int(m[1]) <= 0 or (m[2] is not None and int(m[2]) <= 0):
        raise ValueError(f'input size must be N or HxW with positive integers, got {text!r}')
    return int(m[1]), int(m[2] or m[1])


def plain_vit(patch_size: int, width: int, depth: int = 12, num_heads: int = PLAIN_VIT_HEADS,
              img_size: int = 224, num_classes: int = 1000) -> nn.Module:
    """A plain ViT baseline: timm ``VisionTransformer`` with global self-attention in every block.

    No class token, average pooling, MLP ratio 4, qkv bias, built at ``img_size`` with ``dynamic_img_size`` so
    it runs at any multiple of the patch size (its position embedding is resized on the fly, as GPViT's is).
    """
    from timm.models.vision_transformer import VisionTransformer
    if width % num_heads:
        raise ValueError(f'plain ViT width {width} is not divisible by {num_heads} heads')
    return VisionTransformer(
        img_size=img_size, patch_size=patch_size, embed_dim=width, depth=depth, num_heads=num_heads, mlp_ratio=4.,
        qkv_bias=True, class_token=False, global_pool='avg', dynamic_img_size=True, num_classes=num_classes)


def build_model(name: str) -> nn.Module:
    """Build a benchmark model by name (random weights, CPU, eval mode); see :class:`BenchCase`."""
    import timm

    from ...factory import create_model, list_models
    m = _PLAIN_VIT.match(name)
    if m:
        patch, width = int(m[1]), int(m[2])
        depth = int(m[3]) if m[3] else 12
        heads = int(m[4]) if m[4] else PLAIN_VIT_HEADS
        return plain_vit(patch, width, depth, heads).eval()
    if name in list_models():
        return create_model(name).eval()
    if timm.is_model(name):
        return timm.create_model(name, pretrained=False).eval()
    raise ValueError(f'unknown model {name!r}: not a registered model ({", ".join(list_models())}), not a timm '
                     f'model, and not a plain ViT baseline vit_plain_p<patch>_c<width>[_d<depth>][_h<heads>]')


def appendix_models(variant: str) -> List[str]:
    """``[variant, plain ViT /16, plain ViT /8]`` with the variant's width and depth."""
    model = build_model(variant)
    width, depth = getattr(model, 'embed_dim', None), len(getattr(model, 'blocks', ()))
    if width is None or not depth:
        raise ValueError(f'{variant} is not a plain (single-width) transformer; the appendix comparison is for '
                         f'GPViT models')
    suffix = f'_c{width}' + ('' if depth == 12 else f'_d{depth}')
    return [variant, f'vit_plain_p16{suffix}', f'vit_plain_p8{suffix}']


def appendix_cases(
        variants: Sequence[str] = ('gpvit_l1', 'gpvit_l2', 'gpvit_l3', 'gpvit_l4'),
        sizes: Sequence[Tuple[int, int]] = APPENDIX_SIZES,
        batch_sizes: Sequence[int] = (1,),
        dtypes: Sequence[str] = ('float32',),
        devices: Sequence[str] = ('cpu',),
        modes: Sequence[str] = ('infer',),
) -> List[BenchCase]:
    """The appendix comparison: each variant and its two plain-ViT baselines at each size."""
    models = [m for v in variants for m in appendix_models(v)]
    return grid_cases(models, sizes, batch_sizes, dtypes, devices, modes)


def grid_cases(models: Sequence[str], sizes: Sequence[Tuple[int, int]], batch_sizes: Sequence[int] = (1,),
               dtypes: Sequence[str] = ('float32',), devices: Sequence[str] = ('cpu',),
               modes: Sequence[str] = ('infer',)) -> List[BenchCase]:
    """Every combination, models outermost."""
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f'unsupported mode {mode!r}; choose from {", ".join(MODES)}')
    for d in dtypes:
        if d not in DTYPES:
            raise ValueError(f'unsupported dtype {d!r}; choose from {", ".join(DTYPES)}')
    for dev in devices:
        if dev.startswith('cuda') and not torch.cuda.is_available():
            raise ValueError(f'device {dev!r} requested, but CUDA is not available here')
        if not (dev == 'cpu' or re.fullmatch(r'cuda(:\d+)?', dev)):
            raise ValueError(f"unsupported device {dev!r}; use 'cpu' or 'cuda[:N]'")
    for b in batch_sizes:
        if b < 1:
            raise ValueError(f'batch size must be >= 1, got {b}')
    return [BenchCase(m, tuple(s), b, d, dev, mode) for m in models for s in sizes for b in batch_sizes
            for d in dtypes for dev in devices for mode in modes]


def size_str(size: Tuple[int, int]) -> str:
    return f'{size[0]}x{size[1]}'


def first_line(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip().splitlines()
    text = text[0] if text else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + '...'
