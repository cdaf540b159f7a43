"""Backbone inference benchmark: images/s, achieved GFLOP/s and its ratio to this machine's matmul rate.

For each model and input size, in a fresh subprocess (so peak memory is the case's own):
  * images/s of ``model(x)`` in eval mode under ``torch.inference_mode`` (median of timed runs after warm-up);
  * achieved GFLOP/s = FLOPs of one forward (``torch.utils.flop_counter``, 2 per multiply-accumulate) / time;
  * that figure divided by the GFLOP/s of a 2048x2048 float32 matmul (into a preallocated output) timed in the
    same process, in alternation with the model so that drifts in the machine's speed hit both: how close the
    model gets to the machine's dense-matmul peak;
  * peak resident memory (ru_maxrss) of the process, and its growth during the forward passes.

Each process first calls ``gpvit.tools.bench.keep_freed_memory()`` (glibc keeps freed activations for reuse
instead of unmapping them; the matmul and the model both run under it); ``--malloc-default`` leaves glibc's
malloc as it is.

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


def matmul_op(n: int = 2048) -> Callable[[], object]:
    """One n x n float32 matmul into a preallocated output, so that the allocator plays no part in its rate."""
    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    return lambda: torch.mm(a, b, out=c)


def interleaved(fns: Dict[str, Callable[[], object]], min_time: float, min_rounds: int = 3) -> Dict[str, float]:
    """Median seconds per call of each function, timed in alternation (one call each per round, at least 0.2 s
    of calls for short ones) until ``min_time`` has passed: drifts in the machine's speed hit all of them."""
    times = {k: [] for k in fns}
    start, rounds = time.perf_counter(), 0
    while rounds < min_rounds or time.perf_counter() - start < min_time:
        for k, fn in fns.items():
            times[k] += _timeit(fn, 0.2, 1)
        rounds += 1
    return {k: statistics.median(v) for k, v in times.items()}


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


def use_plain_ops() -> None:
    """Run the models the way the reference code does: separate bias, GELU and residual passes (no fused oneDNN
    GEMMs) and attention as explicit ``softmax(q k^T) v`` matmuls. A stand-in for timing the reference's
    computation, which cannot run here (mmcv-full 1.4.8, torch 1.7); it still skips the reference's layout copies
    (window partitions made contiguous, separate LePE and attention outputs), so it flatters the reference."""
    from gpvit.models import fused, gcvit, gpvit, layers

    def explicit_attention(q, k, v, num_heads, scale=None, attn_mask=None, dropout_p=0.):
        qh = layers.split_heads(q, num_heads).expand(k.shape[0], -1, -1, -1)
        kh, vh = layers.split_heads(k, num_heads), layers.split_heads(v, num_heads)
        logits = (qh * (qh.shape[-1] ** -0.5 if scale is None else scale)) @ kh.transpose(-2, -1)
        if attn_mask is not None:
            is_bool = attn_mask.dtype == torch.bool
            logits = logits.masked_fill(~attn_mask, float('-inf')) if is_bool else logits + attn_mask
        return layers.merge_heads(logits.softmax(dim=-1) @ vh)

    fused.set_auto_fuse(False)  # the models keep their plain blocks in eval mode
    gpvit.attention = gcvit.attention = explicit_attention


def run_case(name: str, size: str, min_time: float, with_timm: bool, threads: int, compile: bool,
             keep_memory: bool, plain: bool = False) -> Dict:
    torch.set_num_threads(threads)
    if plain:
        use_plain_ops()
    if keep_memory:
        from gpvit.tools.bench import keep_freed_memory
        keep_memory = keep_freed_memory()
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
    fns = {'model': lambda: model(x), 'matmul': matmul_op()}
    if twin is not None:
        fns['timm'] = lambda: twin(x)
    with torch.inference_mode():
        for fn in fns.values():  # warm-up
            fn()
            fn()
        # The model, the matmul (and timm's twin) alternate, so drifts in machine speed hit all of them.
        t = interleaved(fns, min_time)
    peak = 2 * 2048 ** 3 / t['matmul'] / 1e9
    label = name + (' (compiled)' if compile else '') + (' (plain ops)' if plain else '')
    row = dict(model=label, input=f'{H}x{W}', batch=B,
               gflops_per_image=flops / B / 1e9, matmul_gflops=peak, threads=torch.get_num_threads(),
               keep_freed_memory=keep_memory, images_per_s=B / t['model'], gflop_per_s=flops / t['model'] / 1e9,
               peak_rss_mb=_peak_rss_mb(), forward_rss_growth_mb=_peak_rss_mb() - rss_before)
    if twin is not None:
        row['timm_images_per_s'] = B / t['timm']
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
    parser.add_argument('--plain', action='store_true',
                        help='plain ops like the reference code: no fused GEMMs, explicit attention (use_plain_ops)')
    parser.add_argument('--malloc-default', action='store_true',
                        help="leave glibc's malloc as it is (default: gpvit.tools.bench.keep_freed_memory())")
    parser.add_argument('--csv', help='also write the rows to this CSV file')
    parser.add_argument('--json', action='store_true', help='print rows as JSON lines')
    args = parser.parse_args(argv)

    ctx = mp.get_context('spawn')
    rows = []
    for name in args.models:
        for size in args.sizes:
            queue = ctx.Queue()
            case = (name, size, args.min_time, args.timm, args.threads, args.compile, not args.malloc_default,
                    args.plain)
            proc = ctx.Process(target=_worker, args=(case, queue))
            proc.start()
            proc.join()
            row = queue.get() if not queue.empty() else dict(model=name, input=size, error=f'exit {proc.exitcode}')
            rows.append(row)
            print(json.dumps(row) if args.json else f'{name} {size}: ' + ', '.join(
                f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}' for k, v in row.items()
                if k not in ('model', 'input')), file=sys.stderr)

    malloc = 'glibc default malloc' if args.malloc_default else 'keep_freed_memory()'
    print(f'\ntorch {torch.__version__}, {args.threads} threads, {malloc}\n')
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
