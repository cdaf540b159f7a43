"""The model table of ``gpvit models``: every registered model with its size, cost and reference accuracy.

Parameters and FLOPs are measured on this project's code: FLOPs with ``torch.utils.flop_counter`` at 2 FLOPs
per multiply-accumulate (GMACs = GFLOPs / 2), for one image at the model's default input size, counted on fake
tensors (:func:`~gpvit.tools.flops.count_flops_symbolic`), so the large models cost no compute. The top-1 values
are the published ImageNet-1k accuracies of the reference weights, copied from the specifications; they are
not measured here.
"""
import csv
import io
import logging
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from ..factory import create_model, list_models
from .flops import count_flops, count_flops_symbolic

_logger = logging.getLogger(__name__)

__all__ = ['PUBLISHED_TOP1', 'ModelInfo', 'model_info', 'zoo_table', 'zoo_markdown', 'zoo_csv', 'format_markdown',
           'format_csv']

_GPVIT_SRC = 'GPViT README'
_GCVIT_SRC = 'GC ViT README (2023 weights)'

#: Published ImageNet-1k top-1 (%) of the reference weights and where it is published. GPViT: the official
#: README (github.com/ChenhongyiYang/GPViT). GC ViT: the official README's table for the weights released in
#: 2023 (the 21k models are pre-trained on ImageNet-21k and fine-tuned on 1k). Models without reference
#: weights (``gpvit_mini``) have none.
PUBLISHED_TOP1: Dict[str, Tuple[float, str]] = {
    'gpvit_l1': (80.5, _GPVIT_SRC),
    'gpvit_l2': (83.4, _GPVIT_SRC),
    'gpvit_l3': (84.1, _GPVIT_SRC),
    'gpvit_l4': (84.3, _GPVIT_SRC),
    'gc_vit_xxtiny': (79.9, _GCVIT_SRC),
    'gc_vit_xtiny': (82.0, _GCVIT_SRC),
    'gc_vit_tiny': (83.5, _GCVIT_SRC),
    'gc_vit_tiny2': (83.7, _GCVIT_SRC),
    'gc_vit_small': (84.3, _GCVIT_SRC),
    'gc_vit_small2': (84.8, _GCVIT_SRC),
    'gc_vit_base': (85.0, _GCVIT_SRC),
    'gc_vit_large': (85.7, _GCVIT_SRC),
    'gc_vit_large_224_21k': (86.6, _GCVIT_SRC),
    'gc_vit_large_384_21k': (87.4, _GCVIT_SRC),
    'gc_vit_large_512_21k': (87.6, _GCVIT_SRC),
}


@dataclass
class ModelInfo:
    """One row of the model table.

    Attributes:
        name: registered model name.
        params: parameters of the default model (classifier included).
        input_size: default input ``(C, H, W)`` of the model's pretrained config.
        flops: FLOPs (2 per MAC) of one forward pass at ``input_size``, batch 1; None if not counted.
        top1: published ImageNet-1k top-1 (%) of the reference weights, None if there are none.
        top1_source: where ``top1`` is published.
    """
    name: str
    params: int
    input_size: Tuple[int, int, int]
    flops: Optional[int] = None
    top1: Optional[float] = None
    top1_source: str = ''


def model_info(name: str, flops: bool = True) -> ModelInfo:
    """Build ``name`` (random weights, CPU) and measure its row of the table.

    Raises:
        ValueError: ``name`` is not a registered model of this project.
    """
    if name not in list_models():
        raise ValueError(f'unknown model {name!r}; registered models: {", ".join(list_models())}')
    model = create_model(name).eval()
    input_size = tuple(model.pretrained_cfg['input_size'])
    info = ModelInfo(name, sum(p.numel() for p in model.parameters()), input_size)
    if flops:
        shape = (1, *input_size)
        try:
            info.flops = count_flops_symbolic(model, shape)
        except Exception as e:  # a forward pass that needs real values: count on real tensors instead
            _logger.info('%s: counting on fake tensors failed (%s); counting on real tensors', name, e)
            info.flops = count_flops(model, shape)
    if name in PUBLISHED_TOP1:
        info.top1, info.top1_source = PUBLISHED_TOP1[name]
    return info


def zoo_table(
        pattern: str = '',
        flops: bool = True,
        progress: Optional[Callable[[str], None]] = None,
) -> List[ModelInfo]:
    """:func:`model_info` of every registered model matching the wildcard ``pattern`` (all if empty)."""
    names = list_models(pattern)
    if not names:
        raise ValueError(f'no registered model matches {pattern!r}; registered models: {", ".join(list_models())}')
    rows = []
    for name in names:
        if progress is not None:
            progress(name)
        rows.append(model_info(name, flops=flops))
    return rows


def format_markdown(header: Iterable[str], rows: Iterable[Iterable], align: Optional[str] = None) -> str:
    """A Markdown table; ``align`` is one character per column, ``'l'`` or ``'r'`` (default: all left)."""
    header = [str(h) for h in header]
    rows = [[str(c) for c in r] for r in rows]
    align = align or 'l' * len(header)
    rule = ['---:' if a == 'r' else '---' for a in align]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(rule) + '|']
    lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
    return '\n'.join(lines) + '\n'


def format_csv(header: Iterable[str], rows: Iterable[Iterable]) -> str:
    """CSV text with a header line."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow(list(header))
    writer.writerows(rows)
    return buf.getvalue()


def _size(input_size: Tuple[int, int, int]) -> str:
    return f'{input_size[1]}x{input_size[2]}'


def zoo_markdown(infos: List[ModelInfo]) -> str:
    """The model table as Markdown: params (M), GFLOPs (2/MAC) at the default input size, top-1."""
    rows = []
    for i in infos:
        rows.append([
            f'`{i.name}`',
            f'{i.params / 1e6:.2f}M',
            '–' if i.flops is None else f'{i.flops / 1e9:.2f}',
            _size(i.input_size),
            '–' if i.top1 is None else f'{i.top1:.1f}',
        ])
    return format_markdown(['model', 'params', 'GFLOPs (2/MAC)', 'input', 'published top-1'], rows, 'lrrrr')


def zoo_csv(infos: List[ModelInfo]) -> str:
    """The model table as CSV with exact integers."""
    fields = ['name', 'params', 'flops', 'input_size', 'top1', 'top1_source']
    rows = []
    for i in infos:
        d = asdict(i)
        d['input_size'] = _size(i.input_size)
        rows.append(['' if d[f] is None else d[f] for f in fields])
    return format_csv(fields, rows)
