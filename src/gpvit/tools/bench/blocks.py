"""Figure 5 of the GPViT paper: FLOPs of one GP block, one global self-attention block and one local-attention
block of the same width as the number of tokens grows."""
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence


from ..flops import count_flops_symbolic
from ..zoo import format_csv, format_markdown
from .cases import FIGURE5_SIDES

def block_flops(
        width: int = 216,
        sides: Sequence[int] = FIGURE5_SIDES,
        groups: Sequence[int] = (16, 32, 64),
        heads: int = 6,
        local_heads: int = 12,
        stripe_width: int = 2,
) -> List[Dict]:
    """FLOPs of single blocks of width ``width`` on ``side x side`` token maps, batch 1.

    Blocks: GPViT's :class:`~gpvit.models.gpvit.GPBlock` with each number of groups (``heads`` grouping and
    ungrouping heads); a global self-attention block (timm ``vision_transformer.Block``, ``heads`` heads, MLP
    ratio 4, qkv bias); and GPViT's local block :class:`~gpvit.models.gpvit.LePEBlock` (stripe attention of
    width ``stripe_width`` with ``local_heads`` heads). Every block includes its MLP; counted on fake tensors.

    Returns:
        One dict per side: ``side``, ``tokens`` and one FLOP count per block, keyed by the block's label.
    """
    from timm.models.vision_transformer import Block

    from ...models.gpvit import GPBlock, LePEBlock
    blocks = {f'GP block ({n} groups)': (GPBlock(width, n, num_heads=heads), 'map') for n in groups}
    blocks['global attention'] = (Block(width, heads, mlp_ratio=4., qkv_bias=True), 'tokens')
    blocks[f'local attention (LePE, stripe {stripe_width})'] = (
        LePEBlock(width, local_heads, stripe_width), 'map')
    rows = []
    for s in sides:
        row = {'side': s, 'tokens': s * s}
        for label, (blk, layout) in blocks.items():
            shape = (1, s, s, width) if layout == 'map' else (1, s * s, width)
            row[label] = count_flops_symbolic(blk, shape)
        rows.append(row)
    return rows


def blocks_markdown(rows: List[Dict]) -> str:
    labels = [k for k in rows[0] if k not in ('side', 'tokens')]
    body = [[f'{r["side"]}x{r["side"]}', f'{r["tokens"]:,}'] + [f'{r[k] / 1e9:.3f}' for k in labels] for r in rows]
    return format_markdown(['token grid', 'tokens'] + [f'{k} GFLOPs' for k in labels], body,
                           'l' + 'r' * (len(labels) + 1))


def blocks_csv(rows: List[Dict]) -> str:
    keys = list(rows[0])
    return format_csv(keys, [[r[k] for k in keys] for r in rows])


def plot_blocks(rows: List[Dict], path: os.PathLike, width: Optional[int] = None) -> Path:
    """Figure 5: block FLOPs against the number of tokens, log-log."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    labels = [k for k in rows[0] if k not in ('side', 'tokens')]
    tokens = [r['tokens'] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    for k in labels:
        style = '-' if k.startswith('GP') else ('--' if k.startswith('global') else ':')
        ax.plot(tokens, [r[k] / 1e9 for r in rows], style, marker='o', ms=3, label=k)
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('number of tokens')
    ax.set_ylabel('GFLOPs (2 per MAC)')
    ax.set_title('FLOPs of one block' + (f', width {width}' if width else ''))
    ax.grid(True, which='both', alpha=.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
