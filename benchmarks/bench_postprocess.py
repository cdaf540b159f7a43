"""The effect of each post-processing difference between the library's torchvision detectors and mmdet 2.x.

Each difference is toggled on its own against the library's default by an mmdet-style variant written here
(the library itself is not changed):

* ``small_boxes``: mmdet keeps what torchvision's ``remove_small_boxes`` drops after clipping: RPN proposals
  with ``0 < w, h < 1e-3`` (mmdet's ``min_bbox_size=0`` keeps ``w > 0 and h > 0``) and R-CNN detections smaller
  than 1e-2 px (mmdet's ``multiclass_nms`` has no size filter).
* ``mask_paste``: mmdet's ``_do_paste_mask`` (``grid_sample`` at pixel centres, zeros outside the 28x28 grid,
  ``>= 0.5``) instead of torchvision's ``paste_masks_in_image`` (1-pixel padded box, integer corners, bilinear
  ``F.interpolate``; the evaluator thresholds ``> 0.5``).
* ``retina_thr_topk``: mmdet >= 2.18 RetinaNet candidates (``filter_scores_and_topk``: score > 0.05 over
  (anchor, class) pairs, then the top 1000 per level), the order of the pinned mmdet 2.25. A check: it must
  change nothing.
* ``retina_anchor_topk``: mmdet <= 2.17 (not the reference's): the top 1000 anchors per level by their best
  class score, then score > 0.05.
* ``resize_floor``: torchvision's own test size (``GeneralizedRCNNTransform``: ``floor(x * scale)``), which the
  library used until it took mmcv's ``imrescale`` rule (``int(x * scale + 0.5)``, its default now): the
  effect of that change, measured from the other side.
* ``resize_cv2``: all of mmcv's resize: the rounded size (the library's), the uint8 image resized by OpenCV
  ``INTER_LINEAR`` (uint8 out), then normalised. Needs ``cv2`` (``--cv2-path`` adds a folder holding it to
  ``sys.path``).

Measured on (a) tiny GPViT detectors trained here on generated COCO-format data (tests/test_detection.py's
generator and recipe), COCO AP on held-out images, and (b) the reference L1 Mask R-CNN / RetinaNet with the
seed-0 golden weights (random-ish: detections, not accuracy) on the golden input. Also: how often the resized
size differs between the two resize rules over a grid of image sizes, and the pixel difference of the resize.

    python benchmarks/bench_postprocess.py            # everything (about 5 min on one thread)
    python benchmarks/bench_postprocess.py --quick    # fewer updates and images: a smoke run
"""
import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.models.detection.transform as tv_transform
import torchvision.ops.boxes as tv_boxes
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / 'tests'
GOLDEN = TESTS / 'data' / 'golden'
sys.path[:0] = [str(TESTS), str(GOLDEN)]

import gpvit
from gpvit.data.coco import (
    CocoDetection,
    CocoEvaluator,
    collate_detection,
    eval_transform,
)

cv2 = None
RPN_MIN, RCNN_MIN = 1e-3, 1e-2  # torchvision's minimum box sides (rpn.py: self.min_size; roi_heads.py: literal)
STATS = {'rpn_dropped_tv': 0, 'rpn_dropped_mmdet': 0, 'rcnn_dropped_tv': 0, 'rcnn_dropped_mmdet': 0}


# -- the mmdet-style variants ----------------------------------------------------------------------------------

@contextlib.contextmanager
def _patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


_tv_remove_small_boxes = tv_boxes.remove_small_boxes


def _count_small(boxes, min_size):
    """What torchvision's filter and mmdet's rule would drop: RPN (min_size 1e-3) and R-CNN (1e-2)."""
    ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    stage = 'rpn' if min_size == RPN_MIN else 'rcnn'
    STATS[f'{stage}_dropped_tv'] += int(((ws < min_size) | (hs < min_size)).sum())
    mm = ~((ws > 0) & (hs > 0)) if stage == 'rpn' else torch.zeros_like(ws, dtype=torch.bool)
    STATS[f'{stage}_dropped_mmdet'] += int(mm.sum())
    return ws, hs, stage


def _counting_remove_small_boxes(boxes, min_size):
    _count_small(boxes, min_size)
    return _tv_remove_small_boxes(boxes, min_size)


def _mmdet_remove_small_boxes(boxes, min_size):
    ws, hs, stage = _count_small(boxes, min_size)
    if stage == 'rcnn':  # multiclass_nms: no size filter
        return torch.arange(len(boxes), device=boxes.device)
    return torch.where((ws > 0) & (hs > 0))[0]  # RPN, min_bbox_size=0: w > 0 and h > 0


def paste_masks_mmdet(masks, boxes, img_shape, padding=1, binary=True):
    """(N, 1, M, M) mask probabilities -> (N, 1, H, W) binary (float): each image pixel centre mapped into its
    box, sampled bilinearly from the M x M grid (zeros outside), ``>= 0.5``. The same arithmetic as mmdet's
    ``_do_paste_mask``; ``padding`` (torchvision's argument) is unused; ``binary=False``: the probabilities."""
    h, w = int(img_shape[0]), int(img_shape[1])
    n = masks.shape[0]
    if n == 0:
        return masks.new_zeros((0, 1, h, w))
    x0, y0, x1, y1 = boxes.float().split(1, dim=1)
    gx = ((torch.arange(w, dtype=torch.float32) + 0.5) - x0) / (x1 - x0) * 2 - 1  # (N, W)
    gy = ((torch.arange(h, dtype=torch.float32) + 0.5) - y0) / (y1 - y0) * 2 - 1  # (N, H)
    gx[torch.isinf(gx)] = 0
    gy[torch.isinf(gy)] = 0
    grid = torch.stack([gx[:, None, :].expand(n, h, w), gy[:, :, None].expand(n, h, w)], dim=3)
    probs = F.grid_sample(masks.float(), grid, mode='bilinear', padding_mode='zeros', align_corners=False)
    return (probs >= 0.5).to(masks.dtype) if binary else probs


def mmcv_size(h: int, w: int, min_size: int, max_size: int):
    """mmcv ``rescale_size`` with ``keep_ratio``: the scale of torchvision, the sides rounded."""
    s = min(max_size / max(h, w), min_size / min(h, w))
    return int(h * s + 0.5), int(w * s + 0.5)


def torchvision_size(h: int, w: int, min_size: int, max_size: int):
    """``GeneralizedRCNNTransform``: the same scale (double), ``F.interpolate``'s ``floor(side * scale)``."""
    s = min(min_size / min(h, w), max_size / max(h, w))
    return int(np.floor(float(h) * s)), int(np.floor(float(w) * s))


def _resize_cv2(image01: torch.Tensor, size) -> torch.Tensor:
    u8 = (image01 * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    out = cv2.resize(u8, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(out).permute(2, 0, 1).float() / 255


@contextlib.contextmanager
def opencv_resize(model):
    """mmcv's resize: the uint8 image through OpenCV to mmcv's rounded size (the library's size too), normalised
    after (the library normalises, then resizes in float)."""
    t = model.transform
    normalize = type(t).normalize.__get__(t)

    def resize(image, target=None):
        size = mmcv_size(image.shape[-2], image.shape[-1], t.min_size[-1], t.max_size)
        return normalize(_resize_cv2(image, size)), target

    t.normalize, t.resize = (lambda image: image), resize  # resize() normalises
    try:
        yield
    finally:
        del t.normalize, t.resize


def retina_postprocess(model, anchor_topk_first: bool):
    """RetinaNet candidates as mmdet: ``anchor_topk_first`` (mmdet <= 2.17: top-k anchors by their best class
    score, then the score threshold) or thresholding first, then the top k (anchor, class) pairs (mmdet >= 2.18,
    ``filter_scores_and_topk``). Then per-class NMS over the levels and the best ``detections_per_img``."""
    def post(head_outputs, anchors, image_shapes):
        k, thr = model.topk_candidates, model.score_thresh
        detections = []
        for i, shape in enumerate(image_shapes):
            boxes, scores, labels = [], [], []
            for logits, deltas, anc in zip(head_outputs['cls_logits'], head_outputs['bbox_regression'], anchors[i]):
                s, d = torch.sigmoid(logits[i]), deltas[i]  # (A, C), (A, 4)
                if anchor_topk_first:
                    if s.shape[0] > k:
                        top = s.max(1).values.topk(k).indices
                        s, d, anc = s[top], d[top], anc[top]
                    a_idx, c_idx = torch.nonzero(s > thr, as_tuple=True)
                    sc = s[a_idx, c_idx]
                else:
                    a_idx, c_idx = torch.nonzero(s > thr, as_tuple=True)
                    sc, order = s[a_idx, c_idx].sort(descending=True)
                    sc, a_idx, c_idx = sc[:k], a_idx[order[:k]], c_idx[order[:k]]
                b = clip_boxes_to_image(model.box_coder.decode_single(d[a_idx], anc[a_idx]), shape)
                boxes.append(b)
                scores.append(sc)
                labels.append(c_idx)
            boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
            keep = batched_nms(boxes, scores, labels, model.nms_thresh)[:model.detections_per_img]
            detections.append({'boxes': boxes[keep], 'scores': scores[keep], 'labels': labels[keep]})
        return detections
    return post


@contextlib.contextmanager
def variant(model, name: str):
    if name == 'default':
        with _patched(tv_boxes, 'remove_small_boxes', _counting_remove_small_boxes):
            yield
    elif name == 'small_boxes':
        with _patched(tv_boxes, 'remove_small_boxes', _mmdet_remove_small_boxes):
            yield
    elif name == 'mask_paste':
        with _patched(tv_transform, 'paste_masks_in_image', paste_masks_mmdet):
            yield
    elif name in ('retina_thr_topk', 'retina_anchor_topk'):
        with _patched(model, 'postprocess_detections', retina_postprocess(model, name == 'retina_anchor_topk')):
            yield
    elif name == 'resize_floor':
        with _patched(model.transform, 'resize', tv_transform.GeneralizedRCNNTransform.resize.__get__(
                model.transform)):
            yield
    elif name == 'resize_cv2':
        with opencv_resize(model):
            yield
    elif name == 'all_mmdet':
        with contextlib.ExitStack() as stack:
            stack.enter_context(_patched(tv_boxes, 'remove_small_boxes', _mmdet_remove_small_boxes))
            if hasattr(model, 'roi_heads'):
                stack.enter_context(_patched(tv_transform, 'paste_masks_in_image', paste_masks_mmdet))
            if cv2 is not None:
                stack.enter_context(opencv_resize(model))
            yield
    else:
        raise ValueError(name)


def variants_for(model) -> list:
    names = ['small_boxes', 'mask_paste'] if hasattr(model, 'roi_heads') else ['retina_thr_topk',
                                                                                 'retina_anchor_topk']
    names += ['resize_floor'] + (['resize_cv2'] if cv2 is not None else []) + ['all_mmdet']
    return names


# -- comparing detections --------------------------------------------------------------------------------------

def _match(ref: list, new: list, min_iou: float) -> dict:
    """Greedy 1:1 matching per image (same label, IoU > ``min_iou``, best IoU first, in the reference's score
    order): unmatched detections of each side, the largest score change of a matched pair, and for masks the
    pixels that differ between matched binary masks, over the pixels of their union."""
    out = {'unmatched_ref': 0, 'unmatched_new': 0, 'max_score_diff': 0.0, 'mask_xor': 0, 'mask_union': 0}
    for a, b in zip(ref, new):
        taken = torch.zeros(len(b['boxes']), dtype=torch.bool)
        iou = box_iou(a['boxes'], b['boxes']) if len(a['boxes']) and len(b['boxes']) else None
        for i in range(len(a['boxes'])):
            j = -1
            if iou is not None:
                cand = iou[i].clone()
                cand[taken | (b['labels'] != a['labels'][i])] = -1
                best = int(cand.argmax())
                if cand[best] > min_iou:
                    j = best
            if j < 0:
                out['unmatched_ref'] += 1
                continue
            taken[j] = True
            out['max_score_diff'] = max(out['max_score_diff'], float((a['scores'][i] - b['scores'][j]).abs()))
            if 'masks' in a:
                ma, mb = a['masks'][i, 0] > 0.5, b['masks'][j, 0] > 0.5
                out['mask_xor'] += int((ma ^ mb).sum())
                out['mask_union'] += int((ma | mb).sum())
        out['unmatched_new'] += int((~taken).sum())
    return out


def compare(ref: list, new: list) -> dict:
    """Detection counts; matching at IoU > 0.99 ('changed') and > 0.9 ('moved'); whether the sorted scores are
    the same (a different choice among tied scores changes boxes, not scores)."""
    out = {'n_ref': sum(len(a['boxes']) for a in ref), 'n_new': sum(len(b['boxes']) for b in new),
           'same_scores': all(len(a['scores']) == len(b['scores']) and
                              torch.equal(a['scores'].sort().values, b['scores'].sort().values)
                              for a, b in zip(ref, new))}
    out['at_0.99'] = _match(ref, new, 0.99)
    out['at_0.9'] = _match(ref, new, 0.9)
    return out


def _fmt_compare(c: dict) -> str:
    m99, m9 = c['at_0.99'], c['at_0.9']
    s = (f"dets {c['n_ref']}->{c['n_new']}, unmatched at IoU>0.99 {m99['unmatched_ref']}/{m99['unmatched_new']}, "
         f"at IoU>0.9 {m9['unmatched_ref']}/{m9['unmatched_new']}, max|dscore| {m9['max_score_diff']:.2g}, "
         f"same scores {'yes' if c['same_scores'] else 'no'}")
    if m9['mask_union']:
        s += (f", mask px differ (IoU>0.9 pairs) {m9['mask_xor']}/{m9['mask_union']} "
              f"({m9['mask_xor'] / m9['mask_union']:.2%} of union)")
    return s


def _stats_line() -> str:
    return (f"small boxes dropped by torchvision / by mmdet's rule: RPN {STATS['rpn_dropped_tv']}"
            f" / {STATS['rpn_dropped_mmdet']}, R-CNN {STATS['rcnn_dropped_tv']} / {STATS['rcnn_dropped_mmdet']}")


def _reset_stats():
    for k in STATS:
        STATS[k] = 0


# -- (a) tiny detectors trained on generated data --------------------------------------------------------------

def tiny_detectors(args, tmp: Path):
    from test_detection import MINI, SMALL_HEADS, make_coco
    make_coco(tmp / 'train_set', n_train=16, n_val=0, broken=False, seed=1)  # the test's 16 training images
    make_coco(tmp / 'val_set', n_train=0, n_val=args.val_images, size=tuple(args.val_size), broken=False, seed=2)
    print(f'\n== (a) tiny detectors: 16 training images 64x80, {args.val_images} held-out images '
          f'{args.val_size[0]}x{args.val_size[1]} (resized by the detector: min_size 64, max_size 96)')
    tv = torchvision_size(*args.val_size, 64, 96)
    mm = mmcv_size(*args.val_size, 64, 96)
    print(f'   resized size: torchvision {tv[0]}x{tv[1]}, mmcv {mm[0]}x{mm[1]}')
    for name, updates, lr in (('mask_rcnn', args.mask_rcnn_updates, 3e-4), ('retinanet', args.retinanet_updates, 1e-3)):
        masks = name == 'mask_rcnn'
        torch.manual_seed(0)
        model = gpvit.create_model(name, num_classes=3, min_size=64, max_size=96, detector_kwargs=SMALL_HEADS,
                                   fpn_channels=32, **MINI)
        ann = tmp / 'train_set' / 'annotations' / 'instances_train.json'
        train = CocoDetection(ann, tmp / 'train_set' / 'train', eval_transform(), with_masks=masks)
        val = CocoDetection(tmp / 'val_set' / 'annotations' / 'instances_val.json', tmp / 'val_set' / 'val',
                            eval_transform(), with_masks=masks, train=False)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        order = torch.Generator().manual_seed(0)
        t0 = time.time()
        model.train()
        for _ in range(updates):
            batch = collate_detection([train[i] for i in torch.randperm(len(train), generator=order)[:4].tolist()])
            targets = [{k: v for k, v in t.items() if k in ('boxes', 'labels', 'masks')} for t in batch['targets']]
            loss = sum(model(batch['images'], targets).values())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        model.eval()
        print(f'\n-- {name}: {updates} updates (AdamW lr {lr}), trained in {time.time() - t0:.0f} s')
        held_out = collate_detection([val[i] for i in range(len(val))])
        types = ('bbox', 'segm') if masks else ('bbox',)
        results = {}
        for v in ['default'] + variants_for(model):
            _reset_stats()
            ev = CocoEvaluator(val.ann_file, val.cat_ids, types)
            dets = []
            with torch.no_grad(), variant(model, v):
                for k in range(0, len(held_out['images']), 8):
                    dets += model(held_out['images'][k:k + 8])
            for t, d in zip(held_out['targets'], dets):
                ev.add(t['image_id'], d['boxes'], d['scores'], d['labels'], d['masks'][:, 0] if masks else None)
            m = ev.compute()
            results[v] = dets
            ap = f"bbox AP {m['bbox_AP']:.4f} AP50 {m['bbox_AP50']:.4f}"
            if masks:
                ap += f", segm AP {m['segm_AP']:.4f} AP50 {m['segm_AP50']:.4f}"
            line = f'   {v:18s} {ap}'
            if v != 'default':
                line += '; vs default: ' + _fmt_compare(compare(results['default'], dets))
            print(line)
            if masks and v in ('default', 'small_boxes'):
                print(f'   {"":18s} {_stats_line()}')


# -- (b) the reference L1 detectors with the seed-0 golden weights ---------------------------------------------

def golden_detectors(args, tmp: Path):
    from fill import fill, load_manifest
    print(f'\n== (b) reference L1 detectors, seed-0 golden weights (random-ish: detections, not accuracy), the '
          f'golden input scaled to [0, 1] and quantised to uint8 levels, min_size {args.golden_min_size}, '
          f'max_size {args.golden_max_size}')
    for family in ('maskrcnn', 'retinanet'):
        sd = fill(load_manifest(GOLDEN / 'dense' / f'gpvit_l1_{family}_manifest.json'), seed=0)
        ref = torch.load(GOLDEN / 'dense' / f'gpvit_l1_{family}_seed0.pt')
        path = tmp / f'gpvit_l1_{family}_1x.pth'
        torch.save({'meta': {'CLASSES': None}, 'state_dict': sd}, path)
        model = gpvit.create_model(f'gpvit_l1_{family}_1x', checkpoint=path).eval()
        model.transform.min_size, model.transform.max_size = (args.golden_min_size,), args.golden_max_size
        x = ref['input'][0]
        image = ((x - x.min()) / (x.max() - x.min()) * 255).round() / 255
        h, w = image.shape[-2:]
        print(f'\n-- gpvit_l1_{family}_1x: input {h}x{w}, resized: torchvision '
              f'{"x".join(map(str, torchvision_size(h, w, args.golden_min_size, args.golden_max_size)))}, mmcv '
              f'{"x".join(map(str, mmcv_size(h, w, args.golden_min_size, args.golden_max_size)))}')
        results = {}
        for v in ['default'] + variants_for(model):
            _reset_stats()
            with torch.no_grad(), variant(model, v):
                results[v] = model([image])
            line = f'   {v:18s} {len(results[v][0]["boxes"])} detections'
            if v != 'default':
                line += '; vs default: ' + _fmt_compare(compare(results['default'], results[v]))
            print(line)
            if family == 'maskrcnn' and v in ('default', 'small_boxes'):
                print(f'   {"":18s} {_stats_line()}')


# -- the resize itself -----------------------------------------------------------------------------------------

TYPICAL = [(480, 640), (427, 640), (375, 500), (612, 612), (640, 480), (424, 640), (426, 640), (640, 427),
           (333, 500), (500, 375), (428, 640), (360, 640), (480, 480), (640, 640)]


def resize_sizes(args):
    print('\n== resized size (800 / 1333): torchvision floor(side * scale) vs mmcv int(side * scale + 0.5)')
    for h, w in TYPICAL:
        tv, mm = torchvision_size(h, w, 800, 1333), mmcv_size(h, w, 800, 1333)
        print(f'   {h}x{w} (HxW): torchvision {tv[0]}x{tv[1]}, mmcv {mm[0]}x{mm[1]}' + ('' if tv == mm else '  differ'))
    lo, hi = args.size_grid
    sides = np.arange(lo, hi + 1, dtype=np.float64)
    hh, ww = np.meshgrid(sides, sides, indexing='ij')
    s = np.minimum(800 / np.minimum(hh, ww), 1333 / np.maximum(hh, ww))
    tv_h, tv_w = np.floor(hh * s), np.floor(ww * s)
    mm_h, mm_w = np.floor(hh * s + 0.5), np.floor(ww * s + 0.5)  # int() of a positive number
    diff = (tv_h != mm_h) | (tv_w != mm_w)
    pad = lambda v: np.ceil(v / 32) * 32
    pad_diff = (pad(tv_h) != pad(mm_h)) | (pad(tv_w) != pad(mm_w))
    n = diff.size
    print(f'   over all {n} sizes with H, W in [{lo}, {hi}]: resized size differs for {diff.sum()} '
          f'({diff.mean():.1%}), by at most {int(max(np.abs(tv_h - mm_h).max(), np.abs(tv_w - mm_w).max()))} px; '
          f'the size padded to 32 differs for {pad_diff.sum()} ({pad_diff.mean():.1%})')
    # a check of the rule against F.interpolate itself on a few random sizes
    rng = np.random.default_rng(0)
    for h, w in rng.integers(lo, hi + 1, size=(20, 2)):
        got = tv_transform._resize_image_and_masks(torch.zeros(1, int(h), int(w)), 800, 1333)[0].shape[-2:]
        assert tuple(got) == torchvision_size(int(h), int(w), 800, 1333), (h, w, got)


def _bilinear_numpy(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel bilinear (src = (dst + 0.5) * in / out - 0.5, clamped to the border), float64, HWC."""
    def axis(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, None)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0
    y0, y1, fy = axis(img.shape[0], out_h)
    x0, x1, fx = axis(img.shape[1], out_w)
    img = img.astype(np.float64)
    top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
    bot = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bot * fy[:, None, None]


def resize_pixels(args):
    from PIL import Image
    h, w = 480, 640
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    img = (127 + 60 * np.sin(xx / 23.0) * np.cos(yy / 17.0) + rng.normal(0, 25, (h, w)))[..., None]
    img = np.concatenate([img, img[::-1], img[:, ::-1]], 2)
    img = np.clip(img, 0, 255).astype(np.uint8)  # smooth pattern + noise, sharp enough to show interpolation
    if args.image:
        img = np.asarray(Image.open(args.image).convert('RGB'))
        h, w = img.shape[:2]
    oh, ow = torchvision_size(h, w, 800, 1333)
    t = torch.from_numpy(img).permute(2, 0, 1).float()
    torch_out = F.interpolate(t[None], size=(oh, ow), mode='bilinear', align_corners=False)[0].permute(1, 2, 0)
    torch_out = torch_out.double().numpy()
    ref = _bilinear_numpy(img, oh, ow)
    print(f'\n== the resize itself: {h}x{w} uint8 image -> {oh}x{ow} (same size for both), grey levels 0-255')
    print(f'   torch bilinear (float32) vs numpy half-pixel formula (float64): max |diff| '
          f'{np.abs(torch_out - ref).max():.2g}')
    if cv2 is None:
        print('   cv2 not available: OpenCV INTER_LINEAR not measured (--cv2-path DIR to add it)')
        return
    cv_u8 = cv2.resize(img, (ow, oh), interpolation=cv2.INTER_LINEAR).astype(np.float64)
    cv_f = cv2.resize(img.astype(np.float32), (ow, oh), interpolation=cv2.INTER_LINEAR).astype(np.float64)
    d = np.abs(cv_u8 - torch_out)
    print(f'   OpenCV {cv2.__version__} INTER_LINEAR float32 vs torch: max |diff| {np.abs(cv_f - torch_out).max():.2g}')
    print(f'   OpenCV INTER_LINEAR uint8 (what mmcv feeds mmdet) vs torch float: mean |diff| {d.mean():.3f}, '
          f'max {d.max():.3f}; vs torch rounded to uint8: {(cv_u8 != np.round(torch_out)).mean():.2%} of values '
          f'differ, max {np.abs(cv_u8 - np.round(torch_out)).max():.0f} level(s)')
    mh, mw = mmcv_size(h, w, 800, 1333)
    if (mh, mw) != (oh, ow):
        # the sampling grids of the two sizes: where the source positions of the same output pixel drift apart
        src = lambda n_in, n_out: (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        n = min(ow, mw)
        shift = np.abs(src(w, ow)[:n] - src(w, mw)[:n]).max()
        print(f'   sizes differ ({oh}x{ow} vs {mh}x{mw}): source position of output column j drifts by up to '
              f'{shift:.2f} source px across the row; boxes map back by each side\'s own ratio')


def main():
    global cv2
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true', help='20/40 updates, 12 held-out images')
    p.add_argument('--skip-tiny', action='store_true')
    p.add_argument('--skip-golden', action='store_true')
    p.add_argument('--val-images', type=int, default=40)
    p.add_argument('--val-size', type=int, nargs=2, default=[61, 77], metavar=('H', 'W'),
                   help='held-out image size; 61x77 is resized to 64x80 (torchvision) / 64x81 (mmcv)')
    p.add_argument('--mask-rcnn-updates', type=int, default=75)
    p.add_argument('--retinanet-updates', type=int, default=150)
    p.add_argument('--golden-min-size', type=int, default=133, help='133 on 128x192: 133x199 vs 133x200')
    p.add_argument('--golden-max-size', type=int, default=400)
    p.add_argument('--size-grid', type=int, nargs=2, default=[100, 640], metavar=('LO', 'HI'))
    p.add_argument('--image', help='an image file for the resize pixel comparison (default: a generated one)')
    p.add_argument('--cv2-path', help='a folder with the cv2 package, appended to sys.path')
    p.add_argument('--threads', type=int, default=1)
    args = p.parse_args()
    if args.quick:
        args.mask_rcnn_updates, args.retinanet_updates, args.val_images = 20, 40, 12
    torch.set_num_threads(args.threads)
    if args.cv2_path:
        sys.path.append(args.cv2_path)
    try:
        import cv2 as _cv2
        cv2 = _cv2
    except ImportError:
        cv2 = None
    print(f'torch {torch.__version__}, {torch.get_num_threads()} thread(s), cv2 '
          f'{cv2.__version__ if cv2 else "not available"}')
    t0 = time.time()
    resize_sizes(args)
    resize_pixels(args)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_golden:
            golden_detectors(args, Path(tmp))
        if not args.skip_tiny:
            tiny_detectors(args, Path(tmp))
    print(f'\ntotal {time.time() - t0:.0f} s')


if __name__ == '__main__':
    main()
