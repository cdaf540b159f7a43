"""Backbone inference benchmark: images/s, achieved GFLOP/s and its ratio to this machine's matmul rate.

For each model and input size, in a fresh subprocess (so peak memory is the case's own):
  * images/s of ``model(x)`` in eval mode under ``torch.inference_mode`` (median of timed runs after warm-up);
  * achieved GFLOP/s = FLOPs of one forward (``torch.utils.flop_counter``, 2 per multiply-accumulate) / time;
  * that figure divided by the GFLOP/s of a 2048x2048 float32 matmul measured in the same process, right
    before the model runs: how close the model gets to the machine's dense-matmul peak;
  * peak resident memory (ru_maxrss) of the process, and its growth during the forward passes.

GC ViT variants run side by side with timm's implementation of the same network (``--timm``), given the same
weights, in the same subprocess, alternating timed runs.

Usage::

    python benchmarks/bench_backbone.py                                # GPViT L1-L4 at the default sizes
    python benchmarks/bench_backbone.py --models gpvit_l1 --sizes 224x224x8
    python benchmarks/bench_backbone.py --models gc_vit_xxtiny gc_vit_tiny --sizes 224x224x8 --timm

Prints a Markdown table; ``--csv FILE`` also writes the rows.
"""
import argparse
import csv
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

DEFAULT_MODELS = ['gpvit_l1', 'gpvit_l2', 'gpvit_l3', 'gpvit_l4']
DEFAULT_SIZES = ['224x224x8', '512x512x1', '800x1280x1']


def _timeit(fn: Callable[[], object], min_time: float, min_runs: int) -> List[float]:
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def matmul_gflops(n: int = 2048, min_time: float = 2.0) -> float:
    """GFLOP/s of an n x n float32 matmul (median of the timed runs, as for the model)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = _timeit(lambda: a @ b, min_time, 10)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _build(name: str) -> torch.nn.Module:
    import gpvit
    return gpvit.create_model(name).eval()


def _timm_twin(name: str, model: torch.nn.Module) -> Optional[torch.nn.Module]:
    """timm's implementation of the same GC ViT variant with the same weights, or None."""
    try:
        from gpvit.models.gcvit import timm_counterpart
    except ImportError:
        return None
    return timm_counterpart(name, model)


def run_case(name: str, size: str, min_time: float, with_timm: bool, threads: int, compile: bool) -> Dict:
    torch.set_num_threads(threads)
    from gpvit.tools.flops import count_flops
    H, W, B = (int(v) for v in size.split('x'))
    model = _build(name)
    twin = _timm_twin(name, model) if with_timm else None
    flops = count_flops(model, (B, 3, H, W))
    if compile:  # inductor with weight freezing: oneDNN GEMMs with fused bias / activation epilogues
        from torch._inductor import config as inductor_config
        inductor_config.freezing = True
        model = torch.compile(model)
    x = torch.randn(B, 3, H, W)
    rss_before = _peak_rss_mb()
    peak = matmul_gflops(min_time=min_time)
    row = dict(model=name + (' (compiled)' if compile else ''), input=f'{H}x{W}', batch=B,
               gflops_per_image=flops / B / 1e9, matmul_gflops=peak, threads=torch.get_num_threads())
    with torch.inference_mode():
        for _ in range(2):
            model(x)
            if twin is not None:
                twin(x)
        if twin is not None:  # alternate the two implementations so drifts in machine load hit both
            ours, theirs = [], []
            deadline = time.perf_counter() + 2 * min_time
            while len(ours) < 3 or time.perf_counter() < deadline:
                ours += _timeit(lambda: model(x), 0, 1)
                theirs += _timeit(lambda: twin(x), 0, 1)
            row['timm_images_per_s'] = B / statistics.median(theirs)
        else:
            ours = _timeit(lambda: model(x), min_time, 3)
    t = statistics.median(ours)
    row.update(images_per_s=B / t, gflop_per_s=flops / t / 1e9, peak_rss_mb=_peak_rss_mb(),
               forward_rss_growth_mb=_peak_rss_mb() - rss_before)
    row['ratio_to_matmul'] = row['gflop_per_s'] / peak
    return row


def _worker(args, queue):
    try:
        queue.put(run_case(*args))
    except Exception as e:  # reported in the table instead of killing the whole run
        queue.put(dict(model=args[0], input=args[1], error=f'{type(e).__name__}: {e}'))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', nargs='+', default=DEFAULT_MODELS)
    parser.add_argument('--sizes', nargs='+', default=DEFAULT_SIZES, help='HxWxBATCH')
    parser.add_argument('--min-time', type=float, default=5.0, help='seconds of timed runs per case')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--timm', action='store_true', help="also time timm's GC ViT with the same weights")
    parser.add_argument('--compile', action='store_true', help='torch.compile (inductor, freezing) the model')
    parser.add_argument('--csv', help='also write the rows to this CSV file')
    parser.add_argument('--json', action='store_true', help='print rows as JSON lines')
    args = parser.parse_args(argv)

    ctx = mp.get_context('spawn')
    rows = []
    for name in args.models:
        for size in args.sizes:
            queue = ctx.Queue()
            proc = ctx.Process(target=_worker, args=((name, size, args.min_time, args.timm, args.threads, args.compile), queue))
            proc.start()
            proc.join()
            row = queue.get() if not queue.empty() else dict(model=name, input=size, error=f'exit {proc.exitcode}')
            rows.append(row)
            print(json.dumps(row) if args.json else f'{name} {size}: ' + ', '.join(
                f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}' for k, v in row.items()
                if k not in ('model', 'input')), file=sys.stderr)

    print(f'\ntorch {torch.__version__}, {args.threads} threads\n')
    has_timm = any('timm_images_per_s' in r for r in rows)
    header = ['model', 'input', 'batch', 'images/s', 'GFLOP/s', 'matmul GFLOP/s', 'ratio', 'peak RSS MB']
    header += ['timm images/s', 'vs timm'] if has_timm else []
    print('| ' + ' | '.join(header) + ' |')
    print('|' + '---|' * len(header))
    for r in rows:
        if 'error' in r:
            print(f"| {r['model']} | {r['input']} | | {r['error']} |")
            continue
        cells = [r['model'], r['input'], str(r['batch']), f"{r['images_per_s']:.2f}", f"{r['gflop_per_s']:.1f}",
                 f"{r['matmul_gflops']:.1f}", f"{r['ratio_to_matmul']:.2f}", f"{r['peak_rss_mb']:.0f}"]
        if has_timm:
            t = r.get('timm_images_per_s')
            cells += [f'{t:.2f}', f"{r['images_per_s'] / t:.2f}x"] if t else ['', '']
        print('| ' + ' | '.join(cells) + ' |')
    if args.csv:
        keys = sorted({k for r in rows for k in r})
        with open(args.csv, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == '__main__':
    sys.exit(main())
