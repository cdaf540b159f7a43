"""The mmdet-style post-processing of benchmarks/bench_postprocess.py against torchvision's (docs/dense.md,
"Post-processing: what still differs from mmdet")."""
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torchvision.models.detection import RetinaNet
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.roi_heads import paste_masks_in_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
from bench_postprocess import (
    mmcv_size,
    paste_masks_mmdet,
    retina_postprocess,
    torchvision_size,
)

BOX = torch.tensor([[10.3, 12.7, 60.2, 50.9]])
H, W = 70, 90


def _box_raster(box, h, w):
    """Pixels whose centre lies in the box (edges included)."""
    ys, xs = torch.arange(h) + 0.5, torch.arange(w) + 0.5
    inside_x = (xs >= box[0]) & (xs <= box[2])
    inside_y = (ys >= box[1]) & (ys <= box[3])
    return inside_y[:, None] & inside_x[None, :]


def test_mmdet_paste_is_pixel_centred_torchvision_is_within_one_pixel():
    ones = torch.ones(1, 1, 28, 28)
    mm = paste_masks_mmdet(ones, BOX, (H, W))[0, 0].bool()
    raster = _box_raster(BOX[0], H, W)
    # mmdet: the pixels whose centre is in the box, less corner pixels within half a mask cell of two edges
    # (bilinear weights against the zero padding multiply there)
    x0, y0, x1, y1 = BOX[0].tolist()
    cx, cy = (x1 - x0) / 28 / 2, (y1 - y0) / 28 / 2
    one_axis_inside = (_box_raster(torch.tensor([x0 + cx, y0, x1 - cx, y1]), H, W)
                       | _box_raster(torch.tensor([x0, y0 + cy, x1, y1 - cy]), H, W))
    assert not (mm & ~raster).any() and torch.equal(mm[one_axis_inside], raster[one_axis_inside])
    assert (raster & ~mm).sum() <= 4
    # torchvision (integer corners, padded box): off by at most one pixel on each side
    tv = paste_masks_in_image(ones, BOX, (H, W))[0, 0] > 0.5
    grown = torch.nn.functional.max_pool2d(raster[None, None].float(), 3, 1, 1)[0, 0].bool()
    shrunk = ~torch.nn.functional.max_pool2d((~raster)[None, None].float(), 3, 1, 1)[0, 0].bool()
    assert not (tv & ~grown).any() and not (shrunk & ~tv).any() and not torch.equal(tv, raster)


def test_pastes_agree_inside_the_box_away_from_the_contour():
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28), indexing='ij')
    probs = torch.sigmoid(6 * (0.6 - (xx ** 2 + 0.7 * yy ** 2).sqrt()))[None, None]  # a smooth blob
    mm = paste_masks_mmdet(probs, BOX, (H, W), binary=False)[0, 0]
    tv = paste_masks_in_image(probs, BOX, (H, W))[0, 0]
    x0, y0, x1, y1 = BOX[0].tolist()
    interior = _box_raster(torch.tensor([x0 + 2, y0 + 2, x1 - 2, y1 - 2]), H, W)
    sure = interior & ((mm - 0.5).abs() > 0.15)
    assert sure.sum() > 500
    assert torch.equal((mm > 0.5)[sure], (tv > 0.5)[sure])
    assert (mm - tv)[interior].abs().max() < 0.15  # a sub-pixel shift of a smooth mask


def test_retinanet_threshold_then_topk_is_torchvisions_order():
    """mmdet >= 2.18 (the reference pins 2.25) thresholds (anchor, class) scores, then keeps the top k per level:
    torchvision's order. Random logits (no tied scores): the same detections."""
    g = torch.Generator().manual_seed(0)
    cfg = SimpleNamespace(box_coder=BoxCoder((1.0, 1.0, 1.0, 1.0)), score_thresh=0.05, topk_candidates=40,
                          nms_thresh=0.5, detections_per_img=100)
    levels = [(300, 5), (120, 5)]  # (anchors, classes) per level
    head = {'cls_logits': [torch.randn(2, a, c, generator=g) - 2 for a, c in levels],
            'bbox_regression': [0.2 * torch.randn(2, a, 4, generator=g) for a, _ in levels]}
    anchors = []
    for _ in range(2):
        per_level = []
        for a, _ in levels:
            xy = torch.rand(a, 2, generator=g) * 80
            per_level.append(torch.cat([xy, xy + 8 + 20 * torch.rand(a, 2, generator=g)], 1))
        anchors.append(per_level)
    shapes = [(100, 100), (100, 100)]  # anchors as RetinaNet.forward() hands them over: per image, per level
    tv = RetinaNet.postprocess_detections(cfg, head, anchors, shapes)
    ours = retina_postprocess(cfg, anchor_topk_first=False)(head, anchors, shapes)
    for a, b in zip(tv, ours):
        assert len(a['boxes']) > 10
        torch.testing.assert_close(a['scores'], b['scores'], rtol=0, atol=0)
        torch.testing.assert_close(a['boxes'], b['boxes'], rtol=0, atol=0)
        assert torch.equal(a['labels'], b['labels'])
    old = retina_postprocess(cfg, anchor_topk_first=True)(head, anchors, shapes)
    # mmdet <= 2.17: all classes of the top-k anchors, a superset of the top-k pairs: more reach the NMS
    assert all(len(b['boxes']) > len(a['boxes']) for a, b in zip(tv, old))


def test_resize_size_rules():
    assert torchvision_size(480, 640, 800, 1333) == (800, 1066) and mmcv_size(480, 640, 800, 1333) == (800, 1067)
    assert torchvision_size(427, 640, 800, 1333) == mmcv_size(427, 640, 800, 1333) == (800, 1199)
