"""Where a GPViT forward pass spends its time: share of time and of FLOPs, and GFLOP/s, per part of the model.

The parts are modules (stem, LayerNorms, stripe attention, MLPs, GP-block grouping/mixing/ungrouping, the GP
block's 2C->C projection, depthwise convs); each is timed with forward hooks (``time.perf_counter`` around the
module, no profiler: ``torch.profiler`` slows the GEMMs down by up to 20 % and distorts the shares) and its FLOPs
come from ``torch.utils.flop_counter`` (2 per multiply-accumulate). Runs eval mode under ``torch.inference_mode``
after ``gpvit.tools.bench.keep_freed_memory()``, with a 2048x2048 float32 matmul timed between the forward
passes as the yardstick, as in ``bench_backbone.py``.

Usage::

    python benchmarks/bench_breakdown.py --model gpvit_l1 --size 224x224x8
"""
import argparse
import collections
import sys
import time
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import gpvit
from gpvit.models.gpvit import GPViT, LePEBlock
from gpvit.tools.bench import keep_freed_memory
from gpvit.tools.flops import register_sdpa_flop_formulas

from bench_backbone import matmul_op  # this script's folder is on sys.path when it runs


def model_parts(model: GPViT) -> Dict[nn.Module, str]:
    """Non-overlapping modules of the model -> the part they belong to."""
    parts = {model.patch_embed: 'stem', model.norm: 'LayerNorm'}
    for blk in model.blocks:
        parts.update({blk.norm2: 'LayerNorm', blk.mlp: 'MLP (fc1 + GELU, fc2 + residual)'})
        if isinstance(blk, LePEBlock):
            parts.update({blk.norm1: 'LayerNorm', blk.dw: 'depthwise conv',
                          blk.attn: 'stripe attention (qkv, SDPA, LePE, proj + residual)'})
        else:
            gp = 'GP block: grouping, MLP-Mixer, ungrouping'
            parts.update({blk.group: gp, blk.mixer: gp, blk.ungroup: gp, blk.proj: 'GP block: 2C -> C projection',
                          blk.conv: 'depthwise conv'})
    return parts


def breakdown(name: str, size: str, iters: int = 4) -> List[str]:
    H, W, B = (int(v) for v in size.split('x'))
    model = gpvit.create_model(name).eval()
    if not isinstance(model, GPViT):
        raise SystemExit(f'{name} is not a GPViT model')
    x = torch.randn(B, 3, H, W)
    parts = model_parts(model)
    paths = {mod: f'{type(model).__name__}.{path}' for path, mod in model.named_modules() if mod in parts}
    register_sdpa_flop_formulas()  # CPU attention counted on every torch (done at import; explicit here)
    with FlopCounterMode(display=False) as counter:
        model(x)
    counts = counter.get_flop_counts()
    total_flops = sum(counts['Global'].values())
    flops = collections.Counter()
    for mod, part in parts.items():
        flops[part] += sum(counts.get(paths[mod], {}).values())

    spent, starts = collections.Counter(), {}
    for mod, part in parts.items():
        mod.register_forward_pre_hook(lambda m, args: starts.__setitem__(m, time.perf_counter()))
        mod.register_forward_hook(lambda m, args, out, part=part: spent.update({part: time.perf_counter() - starts[m]}))
    matmul = matmul_op()
    model_time = matmul_time = 0.
    with torch.inference_mode():
        model(x)
        model(x)
        spent.clear()
        for _ in range(iters):
            t = time.perf_counter()
            model(x)
            model_time += time.perf_counter() - t
            t = time.perf_counter()
            for _ in range(3):
                matmul()
            matmul_time += (time.perf_counter() - t) / 3
    T, peak = model_time / iters, 2 * 2048 ** 3 / (matmul_time / iters) / 1e9
    lines = [f'{name} {H}x{W} batch {B}: {T * 1e3:.0f} ms per forward, {total_flops / T / 1e9:.0f} GFLOP/s, '
             f'matmul {peak:.0f} GFLOP/s, ratio {total_flops / T / 1e9 / peak:.2f}', '',
             '| part | time | FLOPs | GFLOP/s | ratio to matmul |', '|---|---|---|---|---|']
    for part, t in sorted(spent.items(), key=lambda kv: -kv[1]):
        t /= iters
        rate = flops[part] / t / 1e9
        lines.append(f'| {part} | {100 * t / T:.1f} % | {100 * flops[part] / total_flops:.1f} % | {rate:.0f} | '
                     f'{rate / peak:.2f} |')
    rest = T - sum(spent.values()) / iters
    lines.append(f'| rest (position embedding, concatenation, pooling, head) | {100 * rest / T:.1f} % | | | |')
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='gpvit_l1')
    parser.add_argument('--size', default='224x224x8', help='HxWxBATCH')
    parser.add_argument('--iters', type=int, default=4)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    print('\n'.join(breakdown(args.model, args.size, args.iters)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
