"""Training-step benchmark: eager float32 against bf16 autocast and ``torch.compile``, beside inference.

One model and input size, one process. Each variant is a training step as the engine runs it by default
(train mode, drop path, forward + cross-entropy + backward + an optimizer step; AdamW here, the recipes'), timed
in alternation with the other variants and with the model's float32 inference (eval mode,
``torch.inference_mode``), so that drifts in the machine's speed hit all alike; medians are reported, with
GFLOP/s at 3x the forward FLOPs (``torch.utils.flop_counter``, 2 per multiply-accumulate) and the ratio of
each step's GFLOP/s to inference's. ``compile`` variants compile the whole step's model forward with
``torch.compile`` (the trainer's ``train.compile: true``); their compile time is printed apart. ``eager_all``
is the eager step computing every sample's branch, the dropped ones' too, as timm does
(``DropPathAdd.skip_dropped = False``): set beside ``eager`` it shows what skipping them saves. The drop-path
steps vary with the samples dropped; use enough ``--iters``.

Usage::

    python benchmarks/bench_train_step.py --model gpvit_l1 --size 224x224x8
    python benchmarks/bench_train_step.py --model gc_vit_tiny --variants eager bf16
"""
import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import gpvit
from gpvit.models.layers import DropPathAdd
from gpvit.tools.bench import keep_freed_memory
from gpvit.tools.flops import register_sdpa_flop_formulas

VARIANTS = ('eager', 'eager_all', 'bf16', 'compile', 'compile_bf16')


def _step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)  # the engine's optim.fused

    def step():
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def run(name: str, size: str, variants: List[str], iters: int, drop_path_rate: float) -> List[str]:
    H, W, B = (int(v) for v in size.split('x'))
    torch.manual_seed(0)
    x = torch.randn(B, 3, H, W)
    base = gpvit.create_model(name, drop_path_rate=drop_path_rate)
    y = torch.randint(0, base.num_classes, (B,))
    register_sdpa_flop_formulas()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        base.eval()(x)
    flops = sum(counter.get_flop_counts()['Global'].values())
    steps: Dict[str, Callable[[], None]] = {}
    compile_s: Dict[str, float] = {}
    for v in variants:
        model = gpvit.create_model(name, drop_path_rate=drop_path_rate)
        model.load_state_dict(base.state_dict())
        model.train()
        if v == 'eager_all':  # every sample's branch computed (timm's drop path)
            for m in model.modules():
                if isinstance(m, DropPathAdd):
                    m.skip_dropped = False
        if v.startswith('compile'):
            model = torch.compile(model)
        steps[v] = _step_fn(model, x, y, bf16=v.endswith('bf16'))
        t = time.perf_counter()
        steps[v]()  # compiles the compiled ones
        compile_s[v] = time.perf_counter() - t
        print(f'{v}: first step {compile_s[v]:.1f} s', file=sys.stderr, flush=True)
        steps[v]()

    def infer():
        with torch.inference_mode():
            base(x)
    base.eval()
    infer()
    times: Dict[str, List[float]] = {v: [] for v in ['inference'] + variants}
    for _ in range(iters):
        for v, fn in [('inference', infer)] + list(steps.items()):
            t = time.perf_counter()
            fn()
            times[v].append(time.perf_counter() - t)
    ti = statistics.median(times['inference'])
    load = ', '.join(f'{a:.2f}' for a in os.getloadavg()) if hasattr(os, 'getloadavg') else 'n/a'
    lines = [f'{name} {H}x{W} batch {B}, drop path {drop_path_rate}, {torch.get_num_threads()} threads, torch '
             f'{torch.__version__}, median of {iters}; load average after the run {load}', '',
             '| variant | time | GFLOP/s | ratio to float32 inference GFLOP/s | first step (compile) |',
             '|---|---|---|---|---|',
             f'| inference (eval, float32) | {ti * 1e3:.0f} ms | {flops / ti / 1e9:.0f} | 1.00 | |']
    for v in variants:
        t = statistics.median(times[v])
        rate = 3 * flops / t / 1e9
        lines.append(f'| train step, {v} | {t * 1e3:.0f} ms | {rate:.0f} | {rate / (flops / ti / 1e9):.2f} | '
                     f'{compile_s[v]:.1f} s |')
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='gpvit_l1')
    p.add_argument('--size', default='224x224x8', help='HxWxBATCH')
    p.add_argument('--variants', nargs='+', choices=VARIANTS, default=list(VARIANTS))
    p.add_argument('--iters', type=int, default=3)
    p.add_argument('--drop-path-rate', type=float, default=0.1)
    p.add_argument('--threads', type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    print('\n'.join(run(args.model, args.size, args.variants, args.iters, args.drop_path_rate)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
