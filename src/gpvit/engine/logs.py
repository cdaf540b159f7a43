"""Run outputs besides checkpoints: ``train.log``, ``metrics.jsonl``, TensorBoard, ``curves.png``.

Only rank 0 writes. ``metrics.jsonl`` holds one JSON record per epoch (epoch-based runs) or per evaluation
interval (iteration-based runs): ``epoch``, ``step``, ``lr``, ``train_loss``, the task's metrics prefixed
``val_`` (``val_ema_`` for the EMA weights), counts such as ``train_skipped_images``, and times.
"""
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ['setup_logging', 'MetricsLog', 'plot_curves']

_logger = logging.getLogger(__name__)
_FMT = '%(asctime)s %(levelname)s %(message)s'


def setup_logging(output_dir: Optional[Path], is_main: bool) -> logging.Handler:
    """INFO logging of the ``gpvit`` loggers to the console and ``output_dir/train.log`` (rank 0 only);
    other ranks log warnings only. Returns the file handler (to remove at the end), or None."""
    log = logging.getLogger('gpvit')
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    if not any(getattr(h, '_gpvit_console', False) for h in log.handlers) and not logging.getLogger().handlers:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter(_FMT, '%H:%M:%S'))
        console._gpvit_console = True
        log.addHandler(console)
    if output_dir is None or not is_main:
        return None
    handler = logging.FileHandler(Path(output_dir) / 'train.log')
    handler.setFormatter(logging.Formatter(_FMT))
    log.addHandler(handler)
    return handler


class MetricsLog:
    """Appends records to ``metrics.jsonl`` and mirrors the numbers to TensorBoard if enabled."""

    def __init__(self, output_dir: Path, tensorboard: bool = False, enabled: bool = True):
        self.path = Path(output_dir) / 'metrics.jsonl'
        self.enabled = enabled
        self.tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(Path(output_dir) / 'tensorboard'))

    def write(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, 'a') as f:
            f.write(json.dumps(record) + '\n')
        if self.tb is not None:
            step = record['step']
            for k, v in record.items():
                if k not in ('step', 'epoch') and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k.replace('_', '/', 1), v, step)
            self.tb.flush()

    def scalar(self, name: str, value: float, step: int) -> None:
        if self.tb is not None:
            self.tb.add_scalar(name, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    def records(self) -> List[Dict[str, Any]]:
        return read_jsonl(self.path)


def read_jsonl(path: Path) -> List[Dict[str, Any]]:
    out = []
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def plot_curves(records: List[Dict[str, Any]], path: Path, primary: str = 'top1') -> Optional[Path]:
    """Loss, primary metric and lr against the epoch (or update) in one PNG; None if nothing to plot."""
    if not records:
        return None
    import matplotlib
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt
    x_key = 'epoch' if all('epoch' in r for r in records) and records[-1].get('epoch_based', True) else 'step'
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))

    def series(key):
        pts = [(r[x_key], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        return zip(*pts) if pts else ((), ())

    for key, label in (('train_loss', 'train'), ('val_loss', 'val'), ('val_ema_loss', 'val (EMA)')):
        xs, ys = series(key)
        if xs:
            axes[0].plot(xs, ys, marker='.', label=label)
    axes[0].set_title('loss')
    for key, label in ((f'val_{primary}', 'val'), (f'val_ema_{primary}', 'val (EMA)')):
        xs, ys = series(key)
        if xs:
            axes[1].plot(xs, ys, marker='.', label=label)
    axes[1].set_title(primary)
    xs, ys = series('lr')
    if xs:
        axes[2].plot(xs, ys, marker='.')
    axes[2].set_title('learning rate (end of period)')
    axes[2].ticklabel_format(axis='y', style='sci', scilimits=(0, 0))
    for ax in axes:
        ax.set_xlabel(x_key)
        ax.grid(alpha=.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name('.' + path.name + '.tmp.png')
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
