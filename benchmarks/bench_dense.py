"""Dense-task benchmark: training iterations/s and inference images/s of a detector and a segmentor.

Cases (defaults: the reference settings):
  * ``maskrcnn``: GPViT-L1 + ViT-Adapter + torchvision Mask R-CNN (FPN), images 800x1333, 81 classes; a
    training iteration is forward + backward + AdamW step on ``--batch`` images with a few boxes and masks each;
    inference is ``model([image])`` in eval mode (resize to 800x1333 included, no drawing);
  * ``gc_maskrcnn`` / ``gc_cascade``: the GC ViT-T recipes ``gc_vit_tiny_maskrcnn_3x`` and
    ``gc_vit_tiny_cascade_maskrcnn_3x`` (windows of 24), timed as ``maskrcnn``;
  * ``upernet``: GPViT-L1 + UperNet + auxiliary FCN head, 512x512 crops, 150 classes; training as above on
    ``--batch`` crops with random labels; inference is whole-image ``model.inference`` of one 512x512 image.

Times are medians of ``--iters`` timed runs after ``--warmup`` untimed ones. On the CPU, other processes
sharing the machine slow the numbers down: the table records the thread count and the device.

Usage::

    python benchmarks/bench_dense.py                       # both cases, CUDA if available
    python benchmarks/bench_dense.py --cases upernet --device cpu --iters 3 --warmup 1
    python benchmarks/bench_dense.py --cases gc_maskrcnn gc_cascade --device cpu --infer-only
"""
import argparse
import json
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Sequence

import torch

import gpvit


def _median_time(fn: Callable[[], object], warmup: int, iters: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _targets(batch: int, h: int, w: int, device: torch.device) -> List[Dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(batch):
        n = 8
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 32 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.25, h * 0.25])
        boxes = torch.cat([xy, xy + wh], 1)
        masks = torch.zeros(n, h, w, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
            masks[i, y1:y2, x1:x2] = 1
        out.append({'boxes': boxes.to(device), 'labels': torch.randint(1, 81, (n,), generator=g).to(device),
                    'masks': masks.to(device)})
    return out


def _bench_train_and_infer(args, device: torch.device, model: torch.nn.Module, train_inputs: Sequence,
                           infer: Callable[[], object], lr: float, weight_decay: float) -> Dict[str, float]:
    """Time a training iteration (``model(*train_inputs)`` in train mode returns the losses; their sum is
    backpropagated, then an AdamW step) and ``infer()`` (one image) in eval mode under inference_mode."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def step():
        losses = model(*train_inputs)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()

    t_train = float('nan')
    if not args.infer_only:
        model.train()
        t_train = _median_time(step, args.warmup, args.iters, device)
    model.eval()
    with torch.inference_mode():
        t_inf = _median_time(infer, args.warmup, args.iters, device)
    return {'train_it_s': 1 / t_train, 'train_img_s': args.batch / t_train, 'infer_img_s': 1 / t_inf,
            'params_M': sum(p.numel() for p in model.parameters()) / 1e6}


def _bench_detector(args, device: torch.device, model: torch.nn.Module) -> Dict[str, float]:
    model = model.to(device)
    h, w = 800, 1333
    images = [torch.rand(3, h, w, device=device) for _ in range(args.batch)]
    targets = _targets(args.batch, h, w, device)
    return _bench_train_and_infer(args, device, model, (images, targets), lambda: model(images[:1]),
                                  lr=2e-4, weight_decay=0.05)


def bench_maskrcnn(args, device: torch.device) -> Dict[str, float]:
    return _bench_detector(args, device, gpvit.create_model('mask_rcnn', backbone='gpvit_l1', num_classes=81))


def bench_gc_maskrcnn(args, device: torch.device) -> Dict[str, float]:
    return _bench_detector(args, device, gpvit.create_model('gc_vit_tiny_maskrcnn_3x'))


def bench_gc_cascade(args, device: torch.device) -> Dict[str, float]:
    return _bench_detector(args, device, gpvit.create_model('gc_vit_tiny_cascade_maskrcnn_3x'))


def bench_upernet(args, device: torch.device) -> Dict[str, float]:
    model = gpvit.create_model('upernet', backbone='gpvit_l1', num_classes=150).to(device)
    x = torch.randn(args.batch, 3, 512, 512, device=device)
    y = torch.randint(0, 150, (args.batch, 512, 512), device=device)
    return _bench_train_and_infer(args, device, model, (x, y), lambda: model.inference(x[:1]),
                                  lr=1.2e-4, weight_decay=0.01)


CASES = {'maskrcnn': ('GPViT-L1 Mask R-CNN', '800x1333', bench_maskrcnn),
         'gc_maskrcnn': ('GC ViT-T Mask R-CNN', '800x1333', bench_gc_maskrcnn),
         'gc_cascade': ('GC ViT-T Cascade Mask R-CNN', '800x1333', bench_gc_cascade),
         'upernet': ('GPViT-L1 UperNet', '512x512', bench_upernet)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--cases', nargs='+', choices=sorted(CASES), default=['maskrcnn', 'upernet'])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--batch', type=int, default=2, help='training images per iteration (the recipes: 2 per GPU)')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--iters', type=int, default=5)
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--infer-only', action='store_true', help='time inference only (no training iterations)')
    p.add_argument('--json', default=None, help='also write the rows to this file')
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    where = (torch.cuda.get_device_name(device) if device.type == 'cuda'
             else f'CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)')
    load = ', '.join(f'{v:.2f}' for v in os.getloadavg()) if hasattr(os, 'getloadavg') else 'n/a'
    print(f'device: {where}; torch {torch.__version__}; batch {args.batch}; median of {args.iters} after '
          f'{args.warmup} warm-up; load average before the run {load}')
    print('| model | input | params (M) | train it/s | train img/s | inference img/s |')
    print('|---|---|---|---|---|---|')
    rows = []
    for case in args.cases:
        title, size, fn = CASES[case]
        r = fn(args, device)
        rows.append({'case': case, 'device': where, **r})
        print(f'| {title} | {size} | {r["params_M"]:.1f} | {r["train_it_s"]:.3g} | {r["train_img_s"]:.3g} | '
              f'{r["infer_img_s"]:.3g} |', flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)


if __name__ == '__main__':
    main()
