"""``gpvit predict --config FILE --checkpoint CKPT IMAGE``: draw a detector's or segmentor's prediction over an image.

Detection (``task: detection``): boxes with class names and scores, and instance masks (Mask R-CNN), for the
detections scoring at least ``--score-thr``. Segmentation (``task: segmentation``): the colour-coded label map
blended over the image (``--alpha``). The model is rebuilt from the checkpoint's recorded model (training
checkpoints of this project), else from the config.
"""
import argparse
import json
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

__all__ = ['predict_image', 'palette']


def palette(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 colours, fixed for a given n (a seeded random palette, as segmentation tools use)."""
    rng = np.random.RandomState(3)
    return rng.randint(40, 256, size=(n, 3)).astype(np.uint8)


@torch.no_grad()
def predict_image(cfg, checkpoint, image, out, score_thr: float = 0.5, alpha: float = 0.5,
                  device: Optional[str] = None, use_ema: bool = False) -> Dict[str, Any]:
    """Predict on one image file and write the drawing to ``out`` (PNG). Returns a summary dict."""
    from PIL import Image

    from ..data.folder import decode_image
    if cfg.task not in ('detection', 'segmentation'):
        raise ValueError(f'gpvit predict draws detection and segmentation predictions; the config\'s task is '
                         f'{cfg.task!r}')
    checkpoint, image_path, out = Path(checkpoint), Path(image), Path(out)
    for p, what in ((checkpoint, '--checkpoint'), (image_path, 'IMAGE')):
        if not p.is_file():
            raise FileNotFoundError(f'{what}: no file at {p}')
    dev = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    img = decode_image(image_path, str(image_path))
    rgb = torch.from_numpy(np.array(img)).permute(2, 0, 1)  # uint8 (3, H, W)
    from ..checkpoint import read_checkpoint_file
    from ..tasks import load_model
    ckpt = read_checkpoint_file(checkpoint, use_ema=use_ema)  # read once: weights, model spec, class names
    task, model = load_model(cfg, ckpt, use_ema)
    model.to(dev).eval()
    summary: Dict[str, Any] = {'image': str(image_path), 'out': str(out), 'task': cfg.task}
    if cfg.task == 'detection':
        from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks
        det = model([rgb.float().div(255).to(dev)])[0]
        keep = det['scores'] >= score_thr
        boxes, labels, scores = det['boxes'][keep].cpu(), det['labels'][keep].cpu(), det['scores'][keep].cpu()
        names = ckpt.meta.get('classes')
        colours = palette(max(model.num_classes, 2))
        canvas = rgb
        if 'masks' in det and keep.any():
            masks = det['masks'][keep][:, 0].cpu() > 0.5
            canvas = draw_segmentation_masks(canvas, masks, alpha=alpha,
                                             colors=[tuple(int(c) for c in colours[int(lb)]) for lb in labels])
        text = [f'{names[int(lb) - 1] if names and 0 < int(lb) <= len(names) else int(lb)} {float(s):.2f}'
                for lb, s in zip(labels, scores)]
        if len(boxes):
            canvas = draw_bounding_boxes(canvas, boxes, labels=text, width=2,
                                         colors=[tuple(int(c) for c in colours[int(lb)]) for lb in labels])
        summary['detections'] = [{'label': t.rsplit(' ', 1)[0], 'score': round(float(s), 4),
                                  'box': [round(float(v), 1) for v in b]} for t, s, b in zip(text, scores, boxes)]
        out_img = canvas.permute(1, 2, 0).numpy()
    else:
        from ..data.ade import SegEvalTransform
        d = cfg.data
        x, _ = SegEvalTransform(d.test_scale, d.size_divisor, d.mean, d.std)(img, np.zeros((1, 1), np.uint8))
        pred = task.predict(model, x, (img.height, img.width)).cpu().numpy()
        colours = palette(model.num_classes)
        overlay = colours[pred].astype(np.float32)
        out_img = (alpha * overlay + (1 - alpha) * np.array(img, dtype=np.float32)).round().astype(np.uint8)
        ids, counts = np.unique(pred, return_counts=True)
        summary['classes'] = {int(i): round(float(c) / pred.size, 4) for i, c in zip(ids, counts)}
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(out_img).save(out, format='PNG')
    return summary


def run(args: argparse.Namespace) -> int:
    from .train import load
    cfg = load(args)
    summary = predict_image(cfg, args.checkpoint, args.image, args.out or Path(args.image).with_suffix('.pred.png'),
                            args.score_thr, args.alpha, args.device, args.use_ema)
    print(json.dumps(summary))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from .train import add_config_args
    p = sub.add_parser('predict', help='draw a detection / segmentation prediction over an image',
                       description='Run a detection or segmentation checkpoint on one image and write a PNG with '
                                   'the boxes and masks, or the colour-coded segmentation, over it.')
    add_config_args(p)
    p.add_argument('image', metavar='IMAGE', help='image file')
    p.add_argument('--checkpoint', required=True, help='checkpoint file (a training checkpoint of this project)')
    p.add_argument('--out', default=None, help='output PNG (default: IMAGE with .pred.png)')
    p.add_argument('--score-thr', type=float, default=0.5, help='detection: lowest score drawn (default 0.5)')
    p.add_argument('--alpha', type=float, default=0.5, help='opacity of masks / the label map (default 0.5)')
    p.add_argument('--use-ema', action='store_true', help='use the EMA weights of a checkpoint that has them')
    p.set_defaults(func=run)
