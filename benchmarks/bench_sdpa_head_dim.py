"""SDPA at GPViT's head dimensions, as they are and zero-padded to a multiple of 8, per backend.

GPViT-L1's stripe attention has head dimension 18 (216 channels, 12 heads) and its grouping / ungrouping
attention 36 (6 heads); CUDA's flash kernel wants multiples of 8. Padding q, k and v with zeros to the next
multiple (and passing the original ``scale``) leaves the result unchanged: the padded columns add nothing to
``q k^T``, and the output's padded columns are zero and cut off. This script times both, forward and
forward + backward, under each SDPA backend that accepts the shape, so that the choice is measured, not
guessed. The output check (padded against unpadded, float32) runs first.

Usage::

    python benchmarks/bench_sdpa_head_dim.py --device cuda --dtypes bfloat16 float16
    python benchmarks/bench_sdpa_head_dim.py --device cpu --dtypes float32 --batch 2
"""
import argparse
import statistics
import sys
import time
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {'default': None, 'flash': SDPBackend.FLASH_ATTENTION, 'efficient': SDPBackend.EFFICIENT_ATTENTION,
            'cudnn': SDPBackend.CUDNN_ATTENTION, 'math': SDPBackend.MATH}


def shapes(batch: int) -> List[Tuple[str, Tuple[int, int, int, int], int]]:
    """(name, q shape (N, heads, Lq, D), Lk) of GPViT-L1 at 224x224 (a 56x56 token grid)."""
    return [('stripe attention (28 stripes of 2x56 per image, 6 heads per branch)', (batch * 28, 6, 112, 18), 112),
            ('grouping: 64 groups gather 3136 tokens', (batch, 6, 64, 36), 3136),
            ('ungrouping: 3136 tokens read 64 groups', (batch, 6, 3136, 36), 64)]


def padded_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    d = q.shape[-1]
    pad = -d % 8
    out = F.scaled_dot_product_attention(F.pad(q, (0, pad)), F.pad(k, (0, pad)), F.pad(v, (0, pad)),
                                         scale=d ** -0.5)
    return out[..., :d]


def _time(fn: Callable[[], None], sync: Callable[[], None], iters: int) -> float:
    fn()
    sync()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def run(device: str, dtypes: List[str], batch: int, iters: int) -> List[str]:
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == 'cuda' else (lambda: None)
    lines = []
    for name, (n, h, lq, d), lk in shapes(batch):
        q32 = torch.randn(n, h, lq, d, device=dev)
        k32, v32 = torch.randn(n, h, lk, d, device=dev), torch.randn(n, h, lk, d, device=dev)
        err = (padded_sdpa(q32, k32, v32) - F.scaled_dot_product_attention(q32, k32, v32)).abs().max().item()
        lines += ['', f'{name}: q {tuple(q32.shape)}, k/v ({n}, {h}, {lk}, {d}); padded vs plain max |diff| '
                  f'{err:.1e} (float32)', '', '| dtype | backend | head dim | forward | forward + backward |',
                  '|---|---|---|---|---|']
        for dt in dtypes:
            q, k, v = (t.to(getattr(torch, dt)).requires_grad_() for t in (q32, k32, v32))
            g = torch.randn_like(q)
            for label, fn in ((str(d), F.scaled_dot_product_attention), (f'{d} -> {d + (-d % 8)}', padded_sdpa)):
                for backend, kind in BACKENDS.items():
                    ctx = (lambda: sdpa_kernel([kind])) if kind is not None else torch.enable_grad
                    try:
                        with ctx():
                            with torch.no_grad():
                                fwd = _time(lambda: fn(q, k, v), sync, iters)
                            both = _time(lambda: fn(q, k, v).backward(g), sync, iters)
                        lines.append(f'| {dt} | {backend} | {label} | {fwd * 1e3:.3f} ms | {both * 1e3:.3f} ms |')
                    except RuntimeError as e:  # the backend does not take this shape / dtype / device
                        reason = str(e).strip().splitlines()[0][:60] if str(e).strip() else type(e).__name__
                        lines.append(f'| {dt} | {backend} | {label} | not available: {reason} | |')
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--dtypes', nargs='+', default=['bfloat16', 'float16'],
                   choices=('float32', 'bfloat16', 'float16'))
    p.add_argument('--batch', type=int, default=64, help='images (GPViT-L1 at 224x224)')
    p.add_argument('--iters', type=int, default=20)
    args = p.parse_args(argv)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        p.error(f'--device {args.device}: CUDA is not available here (use --device cpu)')
    title = (torch.cuda.get_device_name(args.device) if args.device.startswith('cuda') else 'CPU')
    print(f'SDPA at GPViT-L1 head dimensions, {title}, torch {torch.__version__}, batch {args.batch}, '
          f'median of {args.iters}')
    print('\n'.join(run(args.device, args.dtypes, args.batch, args.iters)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
