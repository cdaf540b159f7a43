"""Training-step benchmark: eager float32 against bf16 autocast and ``torch.compile``, beside inference.

One model and input size, one process. Each variant is a training step as the engine runs it by default
(train mode, drop path, forward + cross-entropy + backward + an optimizer step; AdamW here, the recipes'), timed
in alternation with the other variants and with the model's float32 inference (eval mode,
``torch.inference_mode``), so that drifts in the machine's speed hit all alike; medians are reported, with
GFLOP/s at 3x the forward FLOPs (``torch.utils.flop_counter``, 2 per multiply-accumulate) and the ratio of
each step's GFLOP/s to inference's. ``compile`` variants compile the whole step's model forward with
``torch.compile`` (the trainer's ``train.compile: true``); their compile time is printed apart. ``eager_all``
and ``bf16_all`` compute every sample's branch, the dropped ones' too, as timm does
(``DropPathAdd.skip_dropped = False``): set beside ``eager`` / ``bf16`` they show what skipping them saves. Steps
vary with the samples dropped; use enough ``--iters``.

Usage::

    python benchmarks/bench_train_step.py --model gpvit_l1 --size 224x224x8
    python benchmarks/bench_train_step.py --model gc_vit_tiny --variants eager bf16
    python benchmarks/bench_train_step.py --device cuda --size 224x224x64 --variants eager eager_all bf16 bf16_all
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

VARIANTS = ('eager', 'eager_all', 'bf16', 'bf16_all', 'compile', 'compile_bf16')


def _step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)  # the engine's optim.fused

    def step():
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def run(name: str, size: str, variants: List[str], iters: int, drop_path_rate: float,
        device: str = 'cpu') -> List[str]:
    H, W, B = (int(v) for v in size.split('x'))
    torch.manual_seed(0)
    x = torch.randn(B, 3, H, W, device=device)
    base = gpvit.create_model(name, drop_path_rate=drop_path_rate).to(device)
    y = torch.randint(0, base.num_classes, (B,), device=device)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    register_sdpa_flop_formulas()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        base.eval()(x)
    flops = sum(counter.get_flop_counts()['Global'].values())
    steps: Dict[str, Callable[[], None]] = {}
    compile_s: Dict[str, float] = {}
    for v in variants:
        model = gpvit.create_model(name, drop_path_rate=drop_path_rate).to(device)
        model.load_state_dict(base.state_dict())
        model.train()
        if v.endswith('_all'):  # every sample's branch computed (timm's drop path)
            for m in model.modules():
                if isinstance(m, DropPathAdd):
                    m.skip_dropped = False
        if v.startswith('compile'):
            model = torch.compile(model)
        steps[v] = _step_fn(model, x, y, bf16='bf16' in v)
        t = time.perf_counter()
        steps[v]()  # compiles the compiled ones
        sync()
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
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[v].append(time.perf_counter() - t)
    ti = statistics.median(times['inference'])
    load = ', '.join(f'{a:.2f}' for a in os.getloadavg()) if hasattr(os, 'getloadavg') else 'n/a'
    where = torch.cuda.get_device_name(x.device) if x.is_cuda else f'{torch.get_num_threads()} threads'
    lines = [f'{name} {H}x{W} batch {B}, drop path {drop_path_rate}, {where}, torch '
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
    p.add_argument('--device', default='cpu', help='cpu or cuda')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device == 'cpu':
        keep_freed_memory()
    print('\n'.join(run(args.model, args.size, args.variants, args.iters, args.drop_path_rate, args.device)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
