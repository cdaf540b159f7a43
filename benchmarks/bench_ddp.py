"""DistributedDataParallel on CPU processes (gloo): peak memory and step time of the engine's DDP wrapping.

Each variant runs in fresh processes (``--ranks`` of them, ``--threads`` each): ``engine`` wraps the model as
the trainer does (``gpvit.engine.distributed.wrap_ddp``: gradients as views of the all-reduce buckets, gradient
strides aligned to their parameters'), ``plain`` as ``DistributedDataParallel(model)`` with its defaults. A step
is forward + cross-entropy + backward (with the all-reduce) + fused AdamW, in train mode with the model's
drop path; after ``--warmup`` steps the kernel's peak-resident mark is reset (``/proc/self/clear_refs``), so
the peak reported is that of the timed steps. Also counted: DDP's "Grad strides do not match bucket view
strides" warnings.

Usage::

    python benchmarks/bench_ddp.py --model gpvit_l1 --size 224x224x4
    python benchmarks/bench_ddp.py --model gpvit_l4 --size 224x224x4 --steps 2
"""
import argparse
import os
import socket
import statistics
import sys
import time
import warnings
from typing import Dict, List

import torch
import torch.multiprocessing as mp

VARIANTS = ('engine', 'plain')


def _peak_rss_mib() -> float:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM'):
                return int(line.split()[1]) / 1024
    return float('nan')


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, variant: str, queue) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import gpvit
    from gpvit.engine.distributed import DistContext, wrap_ddp
    from gpvit.tools.bench import keep_freed_memory
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # the engine's default on CPUs
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        kwargs = {} if args.drop_path_rate is None else {'drop_path_rate': args.drop_path_rate}
        model = gpvit.create_model(args.model, **kwargs).train()
        ddp = (wrap_ddp(model, DistContext(rank=rank, world_size=world)) if variant == 'engine'
               else DistributedDataParallel(model))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
        h, w, b = args.size
        x = torch.randn(b, 3, h, w)
        y = torch.randint(0, model.num_classes, (b,))
        times: List[float] = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            for i in range(args.warmup + args.steps):
                if i == args.warmup:
                    with open('/proc/self/clear_refs', 'w') as f:
                        f.write('5')  # reset the peak-resident mark
                t = time.perf_counter()
                torch.nn.functional.cross_entropy(ddp(x), y).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if i >= args.warmup:
                    times.append(time.perf_counter() - t)
        stride_warnings = sum('Grad strides' in str(c.message) for c in caught)
        queue.put((rank, _peak_rss_mib(), statistics.median(times), stride_warnings))
    finally:
        dist.destroy_process_group()


def _run(args: argparse.Namespace, variant: str) -> Dict[str, float]:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    queue = mp.get_context('spawn').Queue()
    mp.spawn(_rank, args=(args.ranks, port, args, variant, queue), nprocs=args.ranks)
    results = sorted(queue.get() for _ in range(args.ranks))
    return {'peak': max(r[1] for r in results), 'peaks': [r[1] for r in results],
            'step': statistics.median(r[2] for r in results), 'warnings': sum(r[3] for r in results)}


def _size(text: str):
    try:
        h, w, b = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must be HxWxB (e.g. 224x224x4), got {text!r}')
    return h, w, b


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='gpvit_l1')
    p.add_argument('--size', type=_size, default=(224, 224, 4), help='HxWxB per rank (default 224x224x4)')
    p.add_argument('--ranks', type=int, default=2)
    p.add_argument('--threads', type=int, default=1, help='torch threads per rank')
    p.add_argument('--steps', type=int, default=3)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--drop-path-rate', type=float, default=None, help="default: the model's own")
    p.add_argument('--variants', nargs='+', choices=VARIANTS, default=list(VARIANTS))
    args = p.parse_args(argv)
    if args.ranks < 2 or args.steps < 1 or args.warmup < 1:
        p.error('--ranks must be at least 2, --steps and --warmup at least 1')
    if not os.path.exists('/proc/self/clear_refs'):
        p.error('needs Linux: the peak resident memory is read from /proc/self')
    h, w, b = args.size
    print(f'{args.model}, {args.ranks} gloo ranks x {args.threads} thread(s), batch {b} per rank at {h}x{w}, '
          f'torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}')
    print('\n| variant | peak resident memory per rank | step (median) | stride warnings |\n|---|---|---:|---:|')
    for variant in args.variants:
        r = _run(args, variant)
        peaks = ' / '.join(f'{v:.0f}' for v in r['peaks'])
        print(f'| {variant} | {peaks} MiB | {r["step"] * 1000:.0f} ms | {r["warnings"]} |', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
