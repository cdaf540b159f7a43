"""Benchmark results as Markdown, CSV and plots."""
import os
from dataclasses import fields
from pathlib import Path
from typing import Dict, List, Sequence


from ..zoo import format_csv, format_markdown
from .cases import BenchResult

def _failed(r: BenchResult) -> str:
    return 'OOM' if r.status == 'OOM' else ('timeout' if r.status == 'timeout' else 'error')


def results_markdown(results: Sequence[BenchResult]) -> str:
    """Markdown table; the measured columns of a failed case name the failure, and notes follow the table."""
    header = ['model', 'input', 'batch', 'dtype', 'device', 'mode', 'params', 'GFLOPs/img', 'latency (ms)',
              'throughput (img/s)', 'peak mem (MiB)', 'status']
    rows, notes = [], []
    for r in results:
        ok = r.status == 'ok'
        f = _failed(r)
        rows.append([
            f'`{r.model}`', r.input_size, r.batch_size, r.dtype, r.device, r.mode,
            '–' if r.params is None else f'{r.params / 1e6:.2f}M',
            '–' if r.flops is None else f'{r.flops / 1e9:.2f}',
            f'{r.latency_ms:.1f}' if ok else f,
            f'{r.throughput:.2f}' if ok else f,
            f'{r.peak_mem_mb:.0f}' if ok and r.peak_mem_mb is not None else ('–' if ok else f),
            r.status,
        ])
        if not ok and r.note:
            notes.append(f'- `{r.model}` {r.input_size} batch {r.batch_size} {r.dtype} {r.device} {r.mode}: '
                         f'{r.status}: {r.note}')
    text = format_markdown(header, rows, 'llllllrrrrrl')
    if notes:
        text += '\n' + '\n'.join(notes) + '\n'
    return text


def results_csv(results: Sequence[BenchResult]) -> str:
    keys = [f.name for f in fields(BenchResult)]
    return format_csv(keys, [['' if getattr(r, k) is None else getattr(r, k) for k in keys] for r in results])


def _series_label(r: BenchResult, vary: Sequence[str]) -> str:
    extra = [str(getattr(r, k)) if k != 'batch_size' else f'b{r.batch_size}' for k in vary]
    return ' '.join([r.model] + extra)


def plot_results(results: Sequence[BenchResult], path: os.PathLike, title: str = '', group_size: int = 1) -> Path:
    """One panel per metric (GFLOPs per image, latency, peak memory), input sizes on the x axis, one line per
    model (and batch/dtype/device where those vary). Failed cases are marked at the top of a panel.

    Consecutive groups of ``group_size`` lines share a colour (the appendix: a GPViT variant and its two
    baselines); plain-ViT baselines are dashed (patch 16) or dotted (patch 8).
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    sizes = list(dict.fromkeys(r.input_size for r in results))
    vary = [k for k in ('batch_size', 'dtype', 'device', 'mode') if len({getattr(r, k) for r in results}) > 1]
    series: Dict[str, List[BenchResult]] = {}
    for r in results:
        series.setdefault(_series_label(r, vary), []).append(r)
    metrics = [('flops', 'GFLOPs per image', 1e-9), ('latency_ms', 'latency per batch (ms)', 1.),
               ('peak_mem_mb', 'peak memory (MiB)', 1.)]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.5), dpi=100)
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for ax, (key, ylabel, scale) in zip(axes, metrics):
        failed = []
        for i, (label, rs) in enumerate(series.items()):
            color = colors[(i // group_size) % len(colors)]
            style = ':' if '_p8_' in label else ('--' if '_p16_' in label else '-')
            xs, ys = [], []
            for r in rs:
                v = getattr(r, key)
                if v is not None and (key == 'flops' or r.status == 'ok'):
                    xs.append(sizes.index(r.input_size))
                    ys.append(v * scale)
                elif key != 'flops':
                    failed.append((sizes.index(r.input_size), _failed(r), color))
            ax.plot(xs, ys, style, marker='o', ms=4, color=color, label=label)
        ax.set_yscale('log')
        ax.set_xticks(range(len(sizes)), sizes)
        ax.set_xlim(-0.3, len(sizes) - 0.7)
        ax.set_xlabel('input size')
        ax.set_ylabel(ylabel)
        ax.grid(True, which='both', alpha=.3)
        for j, (x, what, color) in enumerate(failed):
            ax.annotate(what, (x, 1.0), xycoords=('data', 'axes fraction'), xytext=(0, -12 - 10 * (j % 4)),
                        textcoords='offset points', ha='center', fontsize=7, color=color)
    axes[0].legend(fontsize=7, loc='upper left')
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
