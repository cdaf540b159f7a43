"""Quickstart: train a small GPViT on scikit-learn's bundled handwritten digits, then evaluate it.

1. Writes the digits once as an ImageFolder cache (``.cache/digits/{train,val}/<digit>/*.png``, 32x32 PNGs,
   a fixed 80 / 20 split: 1,438 training and 359 held-out images).
2. Trains ``gpvit_mini`` with ``configs/classification/quickstart_digits.yaml`` through the normal pipeline (the
   same engine as ``gpvit train``), saving checkpoints, ``metrics.jsonl`` and ``curves.png`` in
   ``outputs/quickstart_digits``.
3. Evaluates the final checkpoint on the held-out split (as ``gpvit eval`` does).

Run it with ``make demo`` or ``python examples/quickstart.py [KEY=VALUE ...]`` (config overrides).
"""
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / 'configs' / 'classification' / 'quickstart_digits.yaml'
CACHE = ROOT / '.cache' / 'digits'


def write_digits_cache(root: Path = CACHE, size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write sklearn's digits as ``root/{train,val}/<digit>/<index>.png`` once (a complete cache is reused)."""
    done = root / '.complete'
    if done.exists():
        return root
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = (digits.images / 16. * 255.).round().astype(np.uint8)  # 0..16 -> 0..255
    perm = np.random.RandomState(seed).permutation(len(images))
    n_val = int(round(len(images) * val_fraction))
    split_of = {int(i): ('val' if k < n_val else 'train') for k, i in enumerate(perm)}
    tmp = root.with_name(root.name + '.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    for i, (img, label) in enumerate(zip(images, digits.target)):
        d = tmp / split_of[i] / str(label)
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode='L').resize((size, size), Image.BICUBIC).save(d / f'{i:04d}.png')
    (tmp / '.complete').write_text(f'{len(images)} images, {n_val} held out, seed {seed}\n')
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    t0 = time.perf_counter()
    import torch

    from gpvit.tasks import evaluate_checkpoint, load_config, train

    cache = write_digits_cache()
    overrides = [f'data.root={cache}', f'output_dir={ROOT / "outputs" / "quickstart_digits"}'] + list(argv)
    cfg = load_config(CONFIG, overrides)
    print(f'digits cache: {cache}; training {cfg.model.name} for {cfg.train.epochs} epochs '
          f'({cfg.train.threads or torch.get_num_threads()} compute thread(s))', flush=True)
    result = train(cfg, resume='auto')
    t_train = time.perf_counter() - t0

    ckpt = Path(cfg.output_dir) / 'last.pth'
    metrics = evaluate_checkpoint(cfg, ckpt)
    total = time.perf_counter() - t0
    print(f'held-out top-1 {metrics["top1"]:.2f} % (top-5 {metrics["top5"]:.2f} %) on {metrics["count"]} images')
    print(f'checkpoint {ckpt}, curves {Path(cfg.output_dir) / "curves.png"}, log {Path(cfg.output_dir) / "metrics.jsonl"}')
    print(f'wall time {total:.1f} s (training {t_train:.1f} s)')
    logged = result.history[-1].get('val_top1') if result.history else None
    if logged is not None and abs(logged - metrics['top1']) > 1e-6:
        print(f'warning: evaluation ({metrics["top1"]:.2f}) differs from the training log ({logged:.2f})')
    return 0 if metrics['top1'] >= 95.0 else 1


if __name__ == '__main__':
    sys.exit(main())
