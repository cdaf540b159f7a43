"""Training-loader throughput (images/s) of the classification pipeline on this machine.

Writes a synthetic ImageNet-like folder once (JPEGs of ImageNet's typical size, 500x375, quality 90) and its
LMDB copy, then times full training epochs of the real loader: ImageFolderDataset / LMDBDataset -> per-sample
seeded augmentation (the GPViT recipe: RandomResizedCrop 224 bicubic, flip, RandAugment rand-m9-mstd0.5-inc1,
RandomErasing 0.25) -> batches of 64, for several worker counts. Also the quickstart's 32x32 digits pipeline.

    python benchmarks/bench_data.py [--images 512] [--workers 0 1 2] [--root .cache/bench_data]
"""
import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gpvit.data import ImageFolderDataset, LMDBDataset, collate_skipping, train_transform, write_lmdb
from gpvit.engine.data import ResumableSampler, build_train_loader


def make_folder(root: Path, n: int, classes: int = 8) -> Path:
    done = root / f'.complete-{n}'
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.RandomState(0)
    for i in range(n):
        d = root / 'train' / f'c{i % classes}'
        d.mkdir(parents=True, exist_ok=True)
        # smooth random content (compresses like a photo, unlike white noise)
        small = rng.randint(0, 255, (24, 32, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
        img.save(d / f'{i:05d}.JPEG', quality=90)
    done.write_text('ok\n')
    return root


def time_loader(ds, batch_size: int, workers: int, epochs: int = 2) -> float:
    sampler = ResumableSampler(ds, seed=0)
    loader = build_train_loader(ds, batch_size, sampler, workers, pin_memory=False, persistent_workers=workers > 0,
                                collate_fn=collate_skipping)
    best = 0.
    for epoch in range(epochs):  # the first epoch includes worker start-up; report the best epoch
        sampler.set_epoch(epoch)
        t = time.perf_counter()
        n = sum(len(b['targets']) for b in loader)
        best = max(best, n / (time.perf_counter() - t))
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--images', type=int, default=512)
    p.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--root', default=str(Path(__file__).resolve().parent.parent / '.cache' / 'bench_data'))
    args = p.parse_args()
    torch.set_num_threads(1)  # the loader's own work; workers are separate processes
    root = make_folder(Path(args.root), args.images)
    lmdb_path = root / f'train-{args.images}.lmdb'
    if not lmdb_path.exists():
        write_lmdb(root / 'train', lmdb_path, progress=False)
    tf = train_transform(224, auto_augment='rand-m9-mstd0.5-inc1', re_prob=0.25, interpolation='bicubic')
    print(f'{args.images} JPEGs of 500x375, GPViT training transform at 224, batch 64, torch {torch.__version__}')
    print(f'{"source":<22}{"workers":>8}{"images/s":>12}')
    for name, ds in (('ImageFolder', ImageFolderDataset(root / 'train', tf)), ('LMDB', LMDBDataset(lmdb_path, tf))):
        for w in args.workers:
            print(f'{name:<22}{w:>8}{time_loader(ds, 64, w):>12.1f}', flush=True)
    digits = Path(__file__).resolve().parent.parent / '.cache' / 'digits' / 'train'
    if digits.is_dir():
        tf32 = train_transform(32, scale=(0.75, 1.0), ratio=(0.9, 1 / 0.9), hflip=0., mean=(.5,) * 3, std=(.5,) * 3)
        ds = ImageFolderDataset(digits, tf32)
        print(f'{"digits 32x32 (demo)":<22}{0:>8}{time_loader(ds, 64, 0):>12.1f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
