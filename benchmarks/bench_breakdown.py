"""Where a GPViT or GC ViT forward pass (or training step) spends its time: share of time and FLOPs, GFLOP/s,
per part.

The parts are modules. GPViT: stem, LayerNorms, stripe attention, MLPs, GP-block grouping/mixing/ungrouping,
the GP block's 2C->C projection, depthwise convs. GC ViT: stem, downsamplers, global query generators, local
and global window attention, MLPs, LayerNorms; ``--timm`` breaks timm's implementation of the same GC ViT
(same weights, same drop path) down into the same parts, so the two can be compared part by part. Each part
is timed with forward hooks (``time.perf_counter`` around the module, no profiler: ``torch.profiler`` slows the
GEMMs down by up to 20 % and distorts the shares) and its FLOPs come from ``torch.utils.flop_counter`` (2 per
multiply-accumulate). Runs eval mode under ``torch.inference_mode`` after
``gpvit.tools.bench.keep_freed_memory()``, with a 2048x2048 float32 matmul timed between the forward passes as
the yardstick, as in ``bench_backbone.py``.

``--train``: the training step instead (train mode, drop path 0.1, forward + cross-entropy + backward + SGD
step with momentum, as ``../shared``'s side-by-side bench times it): each part's forward time (forward hooks)
and backward time (from the module's backward pre-hook, when the gradient of its output is ready, to its
backward hook, when the gradients of its inputs are: weight gradients included), the optimizer step, and the
step's GFLOP/s at 3x the forward FLOPs (the usual convention; torch's counter charges depthwise-conv backward
as a dense conv) against the same model's inference GFLOP/s measured in the same run: the ratio issue 14 asks
to raise to 0.9. ``--bf16`` runs the step and the inference under bf16 autocast (the engine's ``train.amp: bf16``
with ``train.amp_on_cpu: true``, the recommendation on CPUs with bf16 instructions).

Usage::

    python benchmarks/bench_breakdown.py --model gpvit_l1 --size 224x224x8
    python benchmarks/bench_breakdown.py --model gpvit_l1 --size 224x224x8 --train [--bf16]
    python benchmarks/bench_breakdown.py --model gc_vit_tiny --size 224x224x8 --train [--timm]
"""
import argparse
import collections
import sys
import time
import warnings
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import gpvit
from gpvit.models.gcvit import GCViT, timm_counterpart
from gpvit.models.gpvit import GPViT, LePEBlock
from gpvit.tools.bench import keep_freed_memory
from gpvit.tools.flops import register_sdpa_flop_formulas

from bench_backbone import matmul_op  # this script's folder is on sys.path when it runs


def model_parts(model: nn.Module) -> Dict[nn.Module, str]:
    """Non-overlapping modules of the model -> the part they belong to."""
    if not isinstance(model, GPViT):
        return gcvit_parts(model)
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


def gcvit_parts(model: nn.Module) -> Dict[nn.Module, str]:
    """The parts of a GC ViT: this project's or timm's, whose modules carry the same names (timm's final
    LayerNorm is the last stage's ``norm``, this project's the model's)."""
    parts = {model.stem: 'stem'}
    for mod in (getattr(model, 'norm', None), *(getattr(stage, 'norm', None) for stage in model.stages)):
        if isinstance(mod, nn.LayerNorm):
            parts[mod] = 'LayerNorm'
    for stage in model.stages:
        if not isinstance(stage.downsample, nn.Identity):
            parts[stage.downsample] = 'downsample (LayerNorm, fused MBConv, 3x3/2 conv, LayerNorm)'
        parts[stage.global_block] = 'global query generator (fused MBConv, max-pool)'
        for blk in stage.blocks:
            kind = 'global' if blk.attn.use_global else 'local'
            parts.update({blk.norm1: 'LayerNorm', blk.norm2: 'LayerNorm', blk.mlp: 'MLP (fc1 + GELU, fc2)',
                          blk.attn: f'window attention, {kind} (qkv, attention, proj)'})
    return parts


def build(name: str, with_timm: bool = False, **kwargs) -> nn.Module:
    """This project's model ``name`` (GPViT or GC ViT), or with ``with_timm`` timm's GC ViT with its weights."""
    model = gpvit.create_model(name, **kwargs)
    if not isinstance(model, (GPViT, GCViT)):
        raise SystemExit(f'{name} is neither a GPViT nor a GC ViT model')
    if with_timm:
        if not isinstance(model, GCViT):
            raise SystemExit(f'--timm: timm has no {name}; it applies to the GC ViT models')
        model = timm_counterpart(name, model, **kwargs)
    return model


def _rest(model: nn.Module) -> str:
    """What the parts leave out, which the 'rest' row times."""
    if isinstance(model, GPViT):
        return 'position embedding, concatenation, pooling, head'
    return 'window partition and reverse, residual adds, drop path, pooling, head'


def _forward_flops(model: nn.Module, x: torch.Tensor, parts: Dict[nn.Module, str]):
    """Forward FLOPs of the whole model and per part (eval mode, no autograd)."""
    paths = {mod: f'{type(model).__name__}.{path}' for path, mod in model.named_modules() if mod in parts}
    register_sdpa_flop_formulas()  # CPU attention counted on every torch (done at import; explicit here)
    training = model.training
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    model.train(training)
    counts = counter.get_flop_counts()
    flops = collections.Counter()
    for mod, part in parts.items():
        flops[part] += sum(counts.get(paths[mod], {}).values())
    return sum(counts['Global'].values()), flops


def breakdown(name: str, size: str, iters: int = 4, with_timm: bool = False) -> List[str]:
    H, W, B = (int(v) for v in size.split('x'))
    model = build(name, with_timm).eval()
    x = torch.randn(B, 3, H, W)
    parts = model_parts(model)
    total_flops, flops = _forward_flops(model, x, parts)

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
    rate = total_flops / T / 1e9
    lines = [f'{_label(name, with_timm)} {H}x{W} batch {B}: {T * 1e3:.0f} ms per forward, {rate:.0f} GFLOP/s, '
             f'matmul {peak:.0f} GFLOP/s, ratio {rate / peak:.2f}', '',
             '| part | time | FLOPs | GFLOP/s | ratio to matmul |', '|---|---|---|---|---|']
    for part, t in sorted(spent.items(), key=lambda kv: -kv[1]):
        t /= iters
        rate = flops[part] / t / 1e9
        lines.append(f'| {part} | {100 * t / T:.1f} % | {100 * flops[part] / total_flops:.1f} % | {rate:.0f} | '
                     f'{rate / peak:.2f} |')
    rest = T - sum(spent.values()) / iters
    lines.append(f'| rest ({_rest(model)}) | {100 * rest / T:.1f} % | | | |')
    return lines


def _label(name: str, with_timm: bool) -> str:
    return f"{name} (timm's implementation, same weights)" if with_timm else name


def train_breakdown(name: str, size: str, iters: int = 3, drop_path_rate: float = 0.1,
                    with_timm: bool = False, bf16: bool = False) -> List[str]:
    """The training step's time per part, forward and backward, and its GFLOP/s against inference's; both
    under bf16 autocast with ``bf16``."""
    H, W, B = (int(v) for v in size.split('x'))
    torch.manual_seed(0)
    model = build(name, with_timm, drop_path_rate=drop_path_rate)
    x, y = torch.randn(B, 3, H, W), torch.randint(0, model.num_classes, (B,))
    parts = model_parts(model)
    total_flops, flops = _forward_flops(model, x, parts)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, fused=True)  # the engine's optim.fused
    fwd, bwd, starts, timing = collections.Counter(), collections.Counter(), {}, [False]

    def mark(key):
        return lambda *_: starts.__setitem__(key, time.perf_counter()) if timing[0] else None

    def add(counter, key, part):
        def hook(*_):
            if timing[0]:
                counter[part] += time.perf_counter() - starts[key]
        return hook

    # the stem's input needs no gradient: its full backward hooks fire on its output's gradient (torch warns)
    warnings.filterwarnings('ignore', message='Full backward hook is firing')
    for mod, part in parts.items():
        mod.register_forward_pre_hook(mark((mod, 'f')))
        mod.register_forward_hook(add(fwd, (mod, 'f'), part))
        mod.register_full_backward_pre_hook(mark((mod, 'b')))
        mod.register_full_backward_hook(add(bwd, (mod, 'b'), part))
    phases = collections.Counter()

    def step():
        t0 = time.perf_counter()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if timing[0]:
            phases.update({'forward': t1 - t0, 'backward': t2 - t1, 'optimizer': t3 - t2})

    def infer():
        with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            model(x)

    matmul = matmul_op()
    model.train()
    step()
    step()
    model.eval()
    infer()
    infer()
    train_time = infer_time = matmul_time = 0.
    for _ in range(iters):  # alternated, so that drifts of the machine's speed hit all three alike
        model.train()
        timing[0] = True
        t = time.perf_counter()
        step()
        train_time += time.perf_counter() - t
        timing[0] = False
        model.eval()
        t = time.perf_counter()
        infer()
        infer_time += time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(3):
            matmul()
        matmul_time += (time.perf_counter() - t) / 3
    T, Ti = train_time / iters, infer_time / iters
    peak = 2 * 2048 ** 3 / (matmul_time / iters) / 1e9
    train_rate, infer_rate = 3 * total_flops / T / 1e9, total_flops / Ti / 1e9
    lines = [f'{_label(name, with_timm)} {H}x{W} batch {B}, drop path {drop_path_rate}, '
             f'{"bf16 autocast" if bf16 else "float32"}: train step {T * 1e3:.0f} ms '
             f'(forward {phases["forward"] / iters * 1e3:.0f}, backward {phases["backward"] / iters * 1e3:.0f}, '
             f'optimizer {phases["optimizer"] / iters * 1e3:.0f}), {train_rate:.0f} GFLOP/s at 3x the forward '
             f'FLOPs; inference {Ti * 1e3:.0f} ms, {infer_rate:.0f} GFLOP/s; train / inference GFLOP/s '
             f'{train_rate / infer_rate:.2f}; matmul {peak:.0f} GFLOP/s', '',
             '| part | forward | backward | share of the step | FLOPs (x3) | GFLOP/s (fwd + bwd) |',
             '|---|---|---|---|---|---|']
    for part in sorted(set(fwd) | set(bwd), key=lambda p: -(fwd[p] + bwd[p])):
        tf, tb = fwd[part] / iters, bwd[part] / iters
        rate = 3 * flops[part] / (tf + tb) / 1e9
        lines.append(f'| {part} | {tf * 1e3:.0f} ms | {tb * 1e3:.0f} ms | {100 * (tf + tb) / T:.1f} % | '
                     f'{100 * flops[part] / total_flops:.1f} % | {rate:.0f} |')
    opt_time = phases['optimizer'] / iters
    lines.append(f'| optimizer step (SGD, momentum) | | | {100 * opt_time / T:.1f} % | | |')
    rest = T - (sum(fwd.values()) + sum(bwd.values())) / iters - opt_time
    lines.append(f'| rest (loss, {_rest(model)}; the stem\'s weight gradients: its input needs none, so its '
                 f'backward hooks cannot time it) | | | {100 * rest / T:.1f} % | | |')
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='gpvit_l1')
    parser.add_argument('--size', default='224x224x8', help='HxWxBATCH')
    parser.add_argument('--iters', type=int, default=4)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--train', action='store_true', help='break the training step down instead')
    parser.add_argument('--timm', action='store_true',
                        help="GC ViT: break timm's implementation down instead (same weights and parts)")
    parser.add_argument('--bf16', action='store_true', help='with --train: step and inference under bf16 autocast')
    args = parser.parse_args(argv)
    if args.bf16 and not args.train:
        parser.error('--bf16 breaks the training step down: add --train')
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    if args.train:
        lines = train_breakdown(args.model, args.size, args.iters, with_timm=args.timm, bf16=args.bf16)
    else:
        lines = breakdown(args.model, args.size, args.iters, with_timm=args.timm)
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
