"""Reference (mmdet) Mask R-CNN and RetinaNet checkpoints load whole into the project's torchvision detectors
and compute the reference's function: golden outputs of the official code in tests/data/golden/dense."""
import math

import pytest
import torch
from densekit import GPVIT_WIDTH, close_to_reference
from fill import fill, load_manifest

import gpvit
from gpvit.dense.reference import BACKGROUND_LOGIT
from gpvit.errors import CheckpointError
from gpvit.factory import recipe_model

DENSE = 'dense'
# torchvision's background slot: the box regressor's 4 rows (+ biases) and the mask logits' one channel
# (Mask R-CNN); one class per anchor in RetinaNet's 3x3 classifier conv (9 anchors).
BACKGROUND_PARAMS = {'maskrcnn': 4 * (1024 + 1) + (256 + 1), 'retinanet': 9 * (256 * 9 + 1)}


def _load(golden_dir, tmp_path_factory, family):
    sd = fill(load_manifest(golden_dir / DENSE / f'gpvit_l1_{family}_manifest.json'), seed=0)
    ref = torch.load(golden_dir / DENSE / f'gpvit_l1_{family}_seed0.pt')
    path = tmp_path_factory.mktemp(family) / f'gpvit_l1_{family}_1x.pth'
    torch.save({'meta': {'CLASSES': None}, 'state_dict': sd}, path)
    model = gpvit.create_model(f'gpvit_l1_{family}_1x', checkpoint=path).eval()
    return model, ref, sd


@pytest.fixture(scope='module')
def maskrcnn(golden_dir, tmp_path_factory):
    return _load(golden_dir, tmp_path_factory, 'maskrcnn')


@pytest.fixture(scope='module')
def retinanet(golden_dir, tmp_path_factory):
    return _load(golden_dir, tmp_path_factory, 'retinanet')


def test_golden_maskrcnn_backbone_fpn_rpn(maskrcnn):
    model, ref, _ = maskrcnn
    with torch.no_grad():
        feats = model.backbone.body(ref['input'])
        assert all(close_to_reference(a, b) for a, b in zip(feats, ref['backbone_features']))
        fpn = model.backbone(ref['input'])  # torchvision's detectors: backbone(x) -> the FPN maps
        assert list(fpn) == ['0', '1', '2', '3', 'pool']
        assert all(close_to_reference(a, b) for a, b in zip(fpn.values(), ref['fpn_features']))
        objectness, deltas = model.rpn.head(list(fpn.values()))
    # the anchor order per location is mmdet's (ratio-major): raw outputs compare without a permutation
    assert all(close_to_reference(a, b) for a, b in zip(objectness, ref['rpn_cls_scores']))
    assert all(close_to_reference(a, b) for a, b in zip(deltas, ref['rpn_bbox_preds']))


def test_golden_maskrcnn_roi_heads(maskrcnn):
    model, ref, _ = maskrcnn
    heads = model.roi_heads
    with torch.no_grad():
        fpn = list(model.backbone(ref['input']).values())[:4]
        assert torch.equal(heads.box_roi_pool.levels(ref['rois']), ref['roi_levels'])
        box_feats = heads.box_roi_pool.pool_rois(fpn, ref['rois'])
        assert close_to_reference(box_feats, ref['bbox_roi_feats'])
        cls, deltas = heads.box_predictor(heads.box_head(box_feats))
        mask_feats = heads.mask_roi_pool.pool_rois(fpn, ref['rois'])
        assert close_to_reference(mask_feats, ref['mask_roi_feats'])
        masks = heads.mask_predictor(heads.mask_head(mask_feats))
    # mmdet [80 classes, background] -> torchvision [background, 80 classes]
    assert close_to_reference(torch.cat([cls[:, 1:], cls[:, :1]], 1), ref['cls_score'])
    assert close_to_reference(deltas[:, 4:], ref['bbox_pred']) and not deltas[:, :4].any()
    assert close_to_reference(masks[:, 1:], ref['mask_pred']) and not masks[:, 0].any()


def test_golden_retinanet(retinanet):
    model, ref, _ = retinanet
    assert model.detections_per_img == 100  # the reference test config
    with torch.no_grad():
        body = model.backbone.body(ref['input'])
        assert all(close_to_reference(a, b) for a, b in zip(body, ref['backbone_features']))
        fpn = list(model.backbone(ref['input']).values())
        assert all(close_to_reference(a, b) for a, b in zip(fpn, ref['fpn_features']))
        cls_head, reg_head = model.head.classification_head, model.head.regression_head
        for level, f in enumerate(fpn):
            cls = cls_head.cls_logits(cls_head.conv(f))
            n, _, h, w = cls.shape
            cls = cls.view(n, 9, 81, h, w)  # (anchor, class) along channels, as mmdet's (anchor, class)
            assert close_to_reference(cls[:, :, 1:].reshape(n, 720, h, w), ref['cls_scores'][level])
            assert (cls[:, :, 0] == BACKGROUND_LOGIT).all()
            assert close_to_reference(reg_head.bbox_reg(reg_head.conv(f)), ref['bbox_preds'][level])


@pytest.mark.parametrize('family', ['maskrcnn', 'retinanet'])
def test_param_count_is_the_reference_plus_background(request, family):
    model, ref, _ = request.getfixturevalue(family)
    count = sum(p.numel() for p in model.parameters())
    assert count == ref['meta']['param_count'] + BACKGROUND_PARAMS[family]


def _mmdet_base_anchors(base: float, scales, ratios) -> torch.Tensor:
    """mmdet's base anchors around (0, 0): for each ratio (h / w), for each scale."""
    rows = []
    for r in ratios:
        for s in scales:
            w, h = base * s / math.sqrt(r), base * s * math.sqrt(r)
            rows.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(rows)


def test_anchors_are_mmdets(maskrcnn, retinanet):
    rpn = maskrcnn[0].rpn.anchor_generator.cell_anchors
    for level, stride in enumerate((4, 8, 16, 32, 64)):
        torch.testing.assert_close(rpn[level], _mmdet_base_anchors(stride, [8], [0.5, 1, 2]))
    retina = retinanet[0].anchor_generator.cell_anchors
    for level, stride in enumerate((8, 16, 32, 64, 128)):
        torch.testing.assert_close(retina[level],
                                   _mmdet_base_anchors(stride, [4 * 2 ** (i / 3) for i in range(3)], [0.5, 1, 2]))


@pytest.mark.parametrize('family', ['maskrcnn', 'retinanet'])
def test_end_to_end_detections(request, family):
    model, ref, _ = request.getfixturevalue(family)
    model.transform.min_size, model.transform.max_size = (128,), 192  # the golden input's size
    image = (ref['input'][0] - ref['input'][0].min()) / (ref['input'][0].max() - ref['input'][0].min())
    with torch.no_grad():
        out = model([image])[0]
    assert set(out) >= {'boxes', 'scores', 'labels'} and out['boxes'].shape[1] == 4
    assert len(out['boxes']) <= 100 and (out['labels'] >= 1).all() and (out['labels'] <= 80).all()
    if family == 'maskrcnn':
        assert out['masks'].shape[1:] == (1, 128, 192)


def test_detector_checkpoint_into_the_other_detector(maskrcnn):
    _, _, sd = maskrcnn
    with pytest.raises(CheckpointError, match="it is a Mask R-CNN.*build 'gpvit_l1_maskrcnn_1x'"):
        gpvit.create_model('gpvit_l1_retinanet_1x', checkpoint=sd)
    with pytest.raises(CheckpointError, match='cannot load into a Segmentor'):
        gpvit.create_model('gpvit_l1_upernet', checkpoint=sd)


# Published parameter counts (M), GPViT paper, L1-L4.
PUBLISHED_M = {'maskrcnn': (33, 50, 64, 109), 'retinanet': (21, 37, 52, 96)}


@pytest.mark.parametrize('schedule', ['1x', '3x'])
@pytest.mark.parametrize('family', ['maskrcnn', 'retinanet'])
@pytest.mark.parametrize('level', [1, 2, 3, 4])
def test_param_count_published(family, level, schedule):
    """Every detector recipe, less torchvision's background slot, is the published size."""
    with torch.device('meta'):
        model = gpvit.create_model(f'gpvit_l{level}_{family}_{schedule}')
    count = sum(p.numel() for p in model.parameters()) - BACKGROUND_PARAMS[family]
    assert abs(count / 1e6 - PUBLISHED_M[family][level - 1]) < 1


def _scaled_layout(golden_dir, family, level):
    """An L``level`` reference detector layout: the GPViT layers of that level's segmentation manifest (without
    the final and per-level norms: ``final_norm=False``), the L1 adapter / neck / heads with the width 216 (and
    the ConvFFN hidden 216 / 4) replaced by the level's."""
    vit = [(k, s) for k, s in load_manifest(golden_dir / f'gpvit_l{level}_seg_manifest.json')
           if not k.startswith(('backbone.ln1.', 'backbone.norm'))]
    l1 = load_manifest(golden_dir / DENSE / f'gpvit_l1_{family}_manifest.json')
    vit_keys = {k for k, _ in load_manifest(golden_dir / 'gpvit_l1_seg_manifest.json')}
    w = GPVIT_WIDTH[level]
    scale = {216: w, 54: w // 4}
    rest = [(k, tuple(scale.get(d, d) for d in s)) for k, s in l1 if k not in vit_keys]
    return fill(vit + rest, seed=0)


@pytest.mark.parametrize('family', ['maskrcnn', 'retinanet'])
@pytest.mark.parametrize('level', [2, 3, 4])
def test_reference_layout_other_level_loads(golden_dir, family, level):
    sd = _scaled_layout(golden_dir, family, level)
    model = gpvit.create_model(f'gpvit_l{level}_{family}_1x', checkpoint={'meta': {}, 'state_dict': sd})
    body = model.backbone.body
    assert torch.equal(body.backbone.blocks[0].attn.qkv.weight, sd['backbone.layers.0.qkv.weight'])
    assert torch.equal(body.extractors[5].ffn.dwconv.weight,
                       sd['backbone.interactions.3.extra_extractors.1.ffn.dwconv.dwconv.weight'])
    dpr = recipe_model(f'gpvit_l{level}_{family}_1x')[1]['drop_path_rate']
    assert all(ex.drop_path.drop_prob == dpr for ex in body.extractors)  # the backbone's drop path rate


def test_gpvit_predict_with_a_reference_detector(retinanet, tmp_path, capsys):
    """``gpvit predict --config gpvit_l1_retinanet_1x --checkpoint <release file>`` draws the detections, named
    by the release file's ``meta['CLASSES']`` (mmcv's convention)."""
    import json

    import numpy as np
    from PIL import Image

    from gpvit.cli import main as cli_main
    _, _, sd = retinanet
    names = [f'class_{i}' for i in range(80)]
    ckpt = tmp_path / 'gpvit_l1_retinanet_1x.pth'
    torch.save({'meta': {'CLASSES': tuple(names)}, 'state_dict': sd}, ckpt)
    image = tmp_path / 'image.png'
    Image.fromarray((np.random.default_rng(0).random((64, 96, 3)) * 255).astype('uint8')).save(image)
    assert cli_main(['predict', '--config', 'gpvit_l1_retinanet_1x', '--checkpoint', str(ckpt), '--device', 'cpu',
                     '--score-thr', '0', '--out', str(tmp_path / 'pred.png'), str(image)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary['task'] == 'detection' and 0 < len(summary['detections']) <= 100
    assert all(d['label'] in names and len(d['box']) == 4 for d in summary['detections'])
    drawn = np.array(Image.open(tmp_path / 'pred.png'))
    assert drawn.shape == (64, 96, 3) and not np.array_equal(drawn, np.array(Image.open(image)))
