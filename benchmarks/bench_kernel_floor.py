"""The kernel floor of a training step (or forward pass): how long its matrix kernels take on their own.

One step of the model runs under a ``TorchDispatchMode`` that records every call of a kernel
``torch.utils.flop_counter`` counts FLOPs for: the GEMMs (``mm``, ``addmm``, ``bmm``, ``baddbmm``), the
convolutions (forward and backward) and the fused attention kernels (SDPA, forward and backward). Each distinct
call (op, shapes, strides, dtypes, the other arguments) is then replayed on its own, on random inputs of the same
layout, and its median time over ``--reps`` runs is multiplied by the number of such calls. The sum is the time
the step would take if everything else (element-wise ops, norms, activations, softmax, copies, the autograd
engine, the loss and the optimizer) were free and the kernels found their operands in the cache: a floor for any
implementation that hands the same products to the same kernels.

Why: it says how far a step is from what PyTorch's kernels allow, and whether a target is reachable at all.
The linear layers' GEMMs and the convolutions are fixed by the architecture (every implementation of the
network computes them, with the same shapes), so a target of ``REF / x`` (``--ref-ms``, ``--target``) leaves
``REF / x - floor(linear layers, convolutions)`` for everything else; the script prints that budget next to
what this implementation spends on everything else now. The attention products depend on how the attention is
written (batched products, SDPA's fused kernel), so they are reported apart.

The step: train mode, forward + cross-entropy + backward + SGD step with momentum (fused), as
``bench_breakdown.py --train`` times it, at ``--drop-path-rate`` (default 0: every sample's branches run, as the
reference implementations compute them; a recording mode also makes :class:`DropPathAdd` compute the whole
batch, so the floor is that of the full batch in any case). ``--infer``: the eval-mode forward under
``torch.inference_mode`` instead. ``--timm``: timm's implementation of a GC ViT with the same weights.

Usage::

    python benchmarks/bench_kernel_floor.py --model gc_vit_tiny --size 224x224x8 [--timm] [--ref-ms 2430 --target 1.25]
    python benchmarks/bench_kernel_floor.py --model gpvit_l1 --size 224x224x8 --ref-ms 3460 --target 1.3
    python benchmarks/bench_kernel_floor.py --model gpvit_l1 --size 224x224x8 --infer
"""
import argparse
import collections
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

import gpvit.tools.flops  # noqa: F401  (registers the CPU SDPA kernels' FLOP formulas)
from gpvit.tools.bench import keep_freed_memory

from bench_backbone import matmul_op  # this script's folder is on sys.path when it runs
from bench_breakdown import build, _label

#: The kernel groups, by op name: the linear layers (and the head) run as ``addmm`` / ``mm``, written-out
#: attention as ``bmm`` / ``baddbmm``.
GROUPS = (('linear layers (mm, addmm)', ('mm', 'addmm')),
          ('attention products (bmm, baddbmm)', ('bmm', 'baddbmm')),
          ('fused attention (SDPA kernels)', ('_scaled_dot_product', '_flash_attention', '_efficient_attention')),
          ('convolutions (forward, backward)', ('convolution', '_convolution', '_slow_conv2d')))


def group_of(op_name: str) -> str:
    """The group of a kernel: the GEMMs by name, the others by prefix (``convolution_backward``, the SDPA
    kernels of each backend and their backwards)."""
    for group, names in GROUPS:
        if op_name in names or (group != GROUPS[0][0] and group != GROUPS[1][0]
                                and any(op_name.startswith(n) for n in names)):
            return group
    return 'other counted kernels'


def _describe(value: Any) -> Any:
    """A hashable description of one argument: a tensor's layout and dtype, anything else as it is."""
    if isinstance(value, torch.Tensor):
        return ('tensor', tuple(value.shape), tuple(value.stride()), value.storage_offset(), value.dtype)
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_describe(v) for v in value))
    if isinstance(value, dict):
        return ('dict', tuple((k, _describe(v)) for k, v in sorted(value.items())))
    if isinstance(value, (int, float, bool, str, type(None), torch.dtype, torch.device, torch.memory_format)):
        return value
    return repr(value)


class KernelRecorder(TorchDispatchMode):
    """Counts the distinct calls of the FLOP-counted kernels, and their FLOPs, while a step runs."""

    def __init__(self):
        super().__init__()
        self.calls: Dict[Tuple, List] = {}  # key -> [func, args, kwargs, count, flops]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func.overloadpacket)
        if formula is not None:
            key = (func, _describe(args), _describe(kwargs))
            if key not in self.calls:
                flops = formula(*args, **kwargs, out_val=out)
                self.calls[key] = [func, args, kwargs, 0, flops]
            self.calls[key][3] += 1
        return out


def _fresh(value: Any) -> Any:
    """A random tensor of ``value``'s layout (shape, strides, offset, dtype); other arguments as they are."""
    if isinstance(value, torch.Tensor):
        span = value.storage_offset() + 1 + sum((n - 1) * s for n, s in zip(value.shape, value.stride()) if n > 0)
        base = torch.empty(span, dtype=value.dtype, device=value.device)
        if value.dtype == torch.bool:
            base.fill_(True)
        elif value.is_floating_point():
            base.normal_()
        else:
            base.zero_()
        return base.as_strided(value.shape, value.stride(), value.storage_offset())
    if isinstance(value, (list, tuple)):
        return type(value)(_fresh(v) for v in value)
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    return value


def _replay_args(func, args: tuple, kwargs: dict) -> Tuple[tuple, dict]:
    """Random inputs for one recorded call. A fused-attention backward gets the output and log-sum-exp of its
    forward on the same random q, k, v, so that it computes on the values it would see."""
    args, kwargs = _fresh(args), _fresh(kwargs)
    name = func.overloadpacket.__name__
    if name == '_scaled_dot_product_flash_attention_for_cpu_backward':
        _, q, k, v = args[:4]
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, args[6], args[7], attn_mask=kwargs.get('attn_mask'), scale=kwargs.get('scale'))
        args = (args[0], q, k, v, out, lse) + tuple(args[6:])
    return args, kwargs


def replay(calls: Dict[Tuple, List], reps: int) -> Dict[str, Dict[str, float]]:
    """Each distinct call timed alone (median of ``reps`` after one warm-up) -> per group: calls, distinct
    calls, seconds (time x count) and FLOPs."""
    groups: Dict[str, Dict[str, float]] = collections.defaultdict(collections.Counter)
    with torch.no_grad():
        for func, args, kwargs, count, flops in calls.values():
            args, kwargs = _replay_args(func, args, kwargs)
            func(*args, **kwargs)
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                func(*args, **kwargs)
                times.append(time.perf_counter() - t)
            g = groups[group_of(func.overloadpacket.__name__)]
            g['calls'] += count
            g['distinct'] += 1
            g['seconds'] += statistics.median(times) * count
            g['flops'] += flops * count
    return groups


def _step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, infer: bool,
             recording: bool = False) -> Callable[[], None]:
    if infer:
        def forward():
            # recorded under no_grad: under inference_mode a dispatch mode sees ``aten.linear`` and SDPA before
            # they are decomposed into the kernels that run (the same kernels either way)
            with torch.no_grad() if recording else torch.inference_mode():
                model(x)
        return forward
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, fused=True)  # the engine's optim.fused

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def kernel_floor(name: str, size: str, iters: int = 3, reps: int = 5, drop_path_rate: float = 0.,
                 with_timm: bool = False, infer: bool = False, ref_ms: Optional[float] = None,
                 target: float = 1.) -> List[str]:
    H, W, B = (int(v) for v in size.split('x'))
    torch.manual_seed(0)
    model = build(name, with_timm, drop_path_rate=drop_path_rate)
    model.train(not infer)
    x, y = torch.randn(B, 3, H, W), torch.randint(0, model.num_classes, (B,))
    step = _step_fn(model, x, y, infer)
    step()
    step()
    matmul = matmul_op()
    times, mm_times = [], []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(3):
            matmul()
        mm_times.append((time.perf_counter() - t) / 3)
    T = statistics.median(times)
    peak = 2 * 2048 ** 3 / statistics.median(mm_times) / 1e9
    recorder = KernelRecorder()
    record = _step_fn(model, x, y, infer, recording=True) if infer else step
    with recorder:
        record()
    groups = replay(recorder.calls, reps)
    floor = sum(g['seconds'] for g in groups.values())
    what = 'forward (eval, inference mode)' if infer else f'train step (drop path {drop_path_rate})'
    lines = [f'{_label(name, with_timm)} {H}x{W} batch {B}, {what}, float32, {torch.get_num_threads()} threads: '
             f'{T * 1e3:.0f} ms; kernel floor {floor * 1e3:.0f} ms ({100 * floor / T:.0f} % of it), everything '
             f'else {(T - floor) * 1e3:.0f} ms; matmul {peak:.0f} GFLOP/s', '',
             '| kernels | calls (distinct) | time alone | share of the step | GFLOP/s alone |', '|---|---|---|---|---|']
    order = [g for g, _ in GROUPS] + ['other counted kernels']
    for group in (g for g in order if g in groups):
        g = groups[group]
        rate = g['flops'] / g['seconds'] / 1e9 if g['seconds'] else 0.
        lines.append(f'| {group} | {int(g["calls"])} ({int(g["distinct"])}) | {g["seconds"] * 1e3:.0f} ms | '
                     f'{100 * g["seconds"] / T:.1f} % | {rate:.0f} |')
    lines.append(f'| everything else | | {(T - floor) * 1e3:.0f} ms | {100 * (T - floor) / T:.1f} % | |')
    if ref_ms is not None:
        fixed = sum(groups[g]['seconds'] for g in (GROUPS[0][0], GROUPS[3][0]) if g in groups)
        goal = ref_ms / 1e3 / target
        lines += ['', f'Target {target:g}x a reference step of {ref_ms:.0f} ms: {goal * 1e3:.0f} ms. The linear '
                  f'layers and convolutions alone take {fixed * 1e3:.0f} ms, which leaves {(goal - fixed) * 1e3:.0f} '
                  f'ms for everything else (attention included); this implementation spends '
                  f'{(T - fixed) * 1e3:.0f} ms on it now.']
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='gpvit_l1')
    parser.add_argument('--size', default='224x224x8', help='HxWxBATCH')
    parser.add_argument('--iters', type=int, default=3, help='timed steps (median)')
    parser.add_argument('--reps', type=int, default=5, help='timed replays of each distinct kernel call (median)')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--drop-path-rate', type=float, default=0.)
    parser.add_argument('--infer', action='store_true', help='the eval-mode forward instead of the training step')
    parser.add_argument('--timm', action='store_true', help="GC ViT: timm's implementation (same weights)")
    parser.add_argument('--ref-ms', type=float, help="a reference implementation's step time, for the budget line")
    parser.add_argument('--target', type=float, default=1., help='the speed-up over --ref-ms to budget for')
    args = parser.parse_args(argv)
    if args.iters < 1 or args.reps < 1:
        parser.error('--iters and --reps must be at least 1')
    if args.target <= 0:
        parser.error('--target must be positive')
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    print('\n'.join(kernel_floor(args.model, args.size, args.iters, args.reps, args.drop_path_rate, args.timm,
                                 args.infer, args.ref_ms, args.target)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
