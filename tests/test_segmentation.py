"""Semantic segmentation: ADE20K-format data, heads, segmentors, mIoU, training through the engine, resume."""
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import gpvit
from gpvit.data.ade import ADE20KDataset, SegEvalTransform, SegTrainTransform, collate_seg
from gpvit.dense.heads import SegFormerHead, UperNetHead
from gpvit.dense.segmentor import Segmentor
from gpvit.tasks import build_config
from gpvit.tasks.segmentation import MIoUEvaluator

from densekit import (
    CONFIGS,
    check_config_errors,
    check_resume_is_bit_exact,
    dense_raw,
    train_and_reevaluate,
    trained_predictor,
)

NUM_CLASSES = 3
TINY = dict(backbone='gpvit_mini', embed_dim=48, img_size=32)  # a reduced gpvit_mini


def shapes_sample(rng: np.random.RandomState, size: int = 64):
    """An image of simple shapes and its exact ADE label map (0 = other/ignored, 1 = background, 2 = rectangle,
    3 = disc)."""
    label = np.ones((size, size), np.uint8)
    y, x = rng.randint(4, size // 2, size=2)
    h, w = rng.randint(size // 5, size // 2, size=2)
    label[y:y + h, x:x + w] = 2
    cy, cx, r = rng.randint(size // 4, 3 * size // 4), rng.randint(size // 4, 3 * size // 4), rng.randint(5, 12)
    yy, xx = np.mgrid[:size, :size]
    label[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 3
    label[:, :2] = 0  # an "other" strip, ignored after reduce_zero_label
    colours = np.array([[0, 0, 0], [30, 30, 30], [230, 40, 40], [40, 40, 230]], np.uint8)
    img = colours[label] + rng.randint(0, 20, size=(size, size, 3)).astype(np.uint8)
    return Image.fromarray(img), Image.fromarray(label, 'L')


def make_ade(root: Path, n_train: int = 4, n_val: int = 2, broken: bool = True, seed: int = 0) -> Path:
    """``root/images/{training,validation}/*.jpg`` + ``root/annotations/.../*.png``. With ``broken``: a training
    image without a label map, a corrupt training image, and a validation label with out-of-range values."""
    rng = np.random.RandomState(seed)
    for split, n in (('training', n_train), ('validation', n_val)):
        (root / 'images' / split).mkdir(parents=True, exist_ok=True)
        (root / 'annotations' / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, label = shapes_sample(rng)
            img.save(root / 'images' / split / f'{split}_{i:03d}.jpg', quality=95)
            label.save(root / 'annotations' / split / f'{split}_{i:03d}.png')
    if broken:
        img, _ = shapes_sample(rng)
        img.save(root / 'images' / 'training' / 'zz_no_label.jpg')
        (root / 'images' / 'training' / 'zz_corrupt.jpg').write_bytes(b'not a jpeg' * 20)
        shapes_sample(rng)[1].save(root / 'annotations' / 'training' / 'zz_corrupt.png')
        img, label = shapes_sample(rng)
        lab = np.array(label)
        lab[10:14, 10:14] = 200  # out of range for 3 classes
        img.save(root / 'images' / 'validation' / 'zz_bad_values.jpg', quality=95)
        Image.fromarray(lab).save(root / 'annotations' / 'validation' / 'zz_bad_values.png')
    return root


@pytest.fixture(scope='module')
def ade(tmp_path_factory):
    return make_ade(tmp_path_factory.mktemp('ade'))


def seg_raw(root: Path, out: Path, model: str = 'upernet', **model_kwargs):
    kwargs = dict(TINY, channels=32, **model_kwargs)
    if model == 'upernet':
        kwargs.setdefault('aux_channels', 16)
    data = {'root': str(root), 'num_classes': NUM_CLASSES, 'test_scale': [64, 64],
            'train_aug': {'scale': [96, 64], 'ratio_range': [0.75, 1.25], 'crop_size': [48, 48]}}
    return dense_raw('segmentation', out, model, kwargs, data, optim={'lr': 1e-3, 'weight_decay': 0.01},
                     sched={'name': 'poly', 'warmup_iters': 1, 'warmup_ratio': 0.1, 'warmup_mode': 'scaled'})


# -- data ------------------------------------------------------------------------------------------------------

def test_dataset_labels_and_broken_samples(ade, caplog):
    ds = ADE20KDataset(ade, 'training', NUM_CLASSES, transform=None, on_error='substitute')
    assert len(ds) == 5 and ds.missing_labels == 1  # zz_no_label left out, counted
    s = ds[0]
    label = np.array(Image.open(ade / 'annotations' / 'training' / 'training_000.png'))
    expected = np.where(label == 0, 255, label.astype(np.int64) - 1)
    assert (s['label'] == expected).all() and s['skipped'] == 0
    with caplog.at_level(logging.WARNING):
        s = ds[4]  # the corrupt image: replaced by the next usable sample, counted
    assert s['skipped'] == 1 and s['name'] == 'training_000.jpg' and 'zz_corrupt' in caplog.text
    ev = ADE20KDataset(ade, 'validation', NUM_CLASSES, transform=SegEvalTransform((64, 64)), on_error='skip')
    bad = ev[len(ev) - 1]
    assert bad['clipped'] == 16 and (bad['label'][10:14, 10:14] == 255).all()
    assert int(bad['label'][bad['label'] != 255].max()) < NUM_CLASSES
    skip = ADE20KDataset(ade, 'training', NUM_CLASSES, on_error='skip')[4]
    assert skip['image'] is None and skip['skipped'] == 1
    batch = collate_seg([skip, ev[0]])
    assert batch['skipped'] == 1 and batch['images'].shape == (1, 3, 64, 64) and batch['labels'].shape == (1, 64, 64)


def test_train_transform_shapes_and_padding():
    import random
    random.seed(0)
    rng = np.random.RandomState(1)
    img, label = shapes_sample(rng, 64)
    lab = np.array(label).astype(np.int64)
    t = SegTrainTransform(scale=(48, 32), ratio_range=(1.0, 1.0), crop_size=(40, 40), cat_max_ratio=0.75)
    x, y = t(img, lab.astype(np.uint8))
    # rescaled to 32x32 (short side 32), padded to the 40x40 crop with 0 (image) and 255 (label)
    assert x.shape == (3, 40, 40) and y.shape == (40, 40)
    assert (y[32:] == 255).all() and (y[:, 32:] == 255).all() and (x[:, 32:] == 0).all()
    assert set(np.unique(y[:32, :32].numpy())) <= {0, 1, 2, 3}
    t = SegTrainTransform(scale=(256, 128), ratio_range=(1.0, 1.0), crop_size=(32, 32), photometric=True)
    for _ in range(5):
        x, y = t(img, lab.astype(np.uint8))
        assert x.shape == (3, 32, 32) and y.shape == (32, 32)
        _, counts = np.unique(y[y != 255].numpy(), return_counts=True)
        assert counts.max() / counts.sum() < 0.75 or len(counts) == 1  # cat_max_ratio honoured when possible
    ev = SegEvalTransform(scale=(100, 50), size_divisor=32)
    x, y = ev(Image.new('RGB', (120, 60)), np.zeros((60, 120), np.uint8))
    assert x.shape == (3, 64, 128) and y.shape == (60, 120)  # 100x50, rounded up to multiples of 32


# -- metric --------------------------------------------------------------------------------------------------

def test_miou_ground_truth_is_one_and_known_value(ade):
    ds = ADE20KDataset(ade, 'validation', NUM_CLASSES, transform=SegEvalTransform((64, 64)), on_error='skip')
    ev = MIoUEvaluator(NUM_CLASSES)
    for i in range(len(ds)):
        label = ds[i]['label']
        ev.update(label.clone(), label)  # 255 pixels predicted as 255: ignored anyway
    m = ev.compute()
    assert m['mIoU'] == 1.0 and m['aAcc'] == 1.0 and m['mAcc'] == 1.0 and m['images'] == len(ds)

    ev = MIoUEvaluator(4)
    label = torch.tensor([[0, 0, 1, 255], [1, 1, 2, 2]])
    pred = torch.tensor([[0, 1, 1, 3], [1, 1, 2, 0]])
    ev.update(pred, label)
    # class 0: tp 1, union 3; class 1: tp 3, union 4; class 2: tp 1, union 2; class 3: absent -> left out
    m = ev.compute()
    assert m['mIoU'] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert m['aAcc'] == pytest.approx(5 / 7)
    with pytest.raises(ValueError, match='differ'):
        ev.update(pred, label[:, :3])


# -- heads and segmentors ------------------------------------------------------------------------------------

def test_heads_shapes_multiscale():
    feats = [torch.randn(2, c, s, s) for c, s in ((16, 16), (24, 8), (32, 4), (40, 2))]
    up = UperNetHead([16, 24, 32, 40], 5, channels=8)
    assert up(feats).shape == (2, 5, 16, 16)
    sf = SegFormerHead([16, 24, 32, 40], 5, channels=8, proj_norm=False)
    assert sf(feats).shape == (2, 5, 16, 16)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in sf.proj.modules())


class _Pointwise(Segmentor):
    """A per-pixel segmentor: sliding-window inference must equal whole-image inference."""

    def __init__(self):
        nn.Module.__init__(self)
        self.num_classes = 4
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, images, labels=None):
        return self.conv(images)


def test_slide_inference_equals_whole_for_pointwise_model():
    m = _Pointwise().eval()
    x = torch.randn(1, 3, 50, 70)
    whole = m.inference(x, 'whole')
    slide = m.inference(x, 'slide', crop_size=(32, 32), stride=(20, 20))
    torch.testing.assert_close(slide, whole)
    assert m.inference(x, 'slide', (32, 32), (20, 20), out_size=(25, 35)).shape == (1, 4, 25, 35)
    with pytest.raises(ValueError, match='mode'):
        m.inference(x, 'tiles')


@pytest.fixture(scope='module')
def ade_learn(tmp_path_factory):
    """16 training and 6 held-out images of the shapes task, nothing broken."""
    return make_ade(tmp_path_factory.mktemp('ade_learn'), n_train=16, n_val=6, broken=False, seed=1)


@pytest.mark.parametrize('name,kwargs', [
    ('upernet', dict(TINY, channels=128, aux_channels=64)),
    ('segformer', dict(TINY, channels=128)),
    ('upernet', dict(backbone='gc_vit_xxtiny', embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
                     window_size=4, channels=64, aux_channels=32)),
])
def test_tiny_models_learn_to_segment_held_out_images(ade_learn, one_thread, name, kwargs):
    """100 updates (batch 4, AdamW 2e-3) on 16 images, then the mIoU of 6 held-out ones above 0.75.

    The threshold is above 2/3, the most a model that misses one of the three classes can score, so every class
    must be learned. Measured on 2026-12-01 (newest and floor versions): 0.87 (UperNet), 0.88 (SegFormer), 0.94
    (GC ViT UperNet). With
    32-channel heads UperNet reached 0.78 here and SegFormer with 64 stayed at 0.55 (one class never learned):
    the widths here are what these tiny backbones need, not the recipes'."""
    torch.manual_seed(0)
    model = gpvit.create_model(name, num_classes=NUM_CLASSES, **kwargs)
    train = ADE20KDataset(ade_learn, 'training', NUM_CLASSES, transform=SegEvalTransform((64, 64)))
    val = ADE20KDataset(ade_learn, 'validation', NUM_CLASSES, transform=SegEvalTransform((64, 64)))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    order = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(100):
        batch = collate_seg([train[i] for i in torch.randperm(len(train), generator=order)[:4].tolist()])
        out = model.train()(batch['images'], batch['labels'])
        assert set(out) == ({'loss_decode', 'loss_aux'} if 'aux_channels' in kwargs else {'loss_decode'})
        loss = sum(out.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10]), losses
    held_out = collate_seg([val[i] for i in range(len(val))])
    with torch.no_grad():
        logits = model.eval()(held_out['images'])
    assert logits.shape == (len(val), NUM_CLASSES, 64, 64)
    ev = MIoUEvaluator(NUM_CLASSES)
    ev.update(logits.argmax(1), held_out['labels'])
    miou = ev.compute()['mIoU']
    assert miou > 0.75, f'held-out mIoU {miou:.3f}'


def test_backbone_from_classification_checkpoint(tmp_path):
    cls = gpvit.create_model('gpvit_mini', num_classes=10, embed_dim=48, img_size=32, global_pool='group')
    path = tmp_path / 'cls.pth'
    torch.save({'state_dict': cls.state_dict()}, path)
    seg = gpvit.create_model('segformer', backbone='gpvit_mini', embed_dim=48, img_size=32, num_classes=3,
                             backbone_checkpoint=str(path))
    body = seg.backbone.body
    torch.testing.assert_close(body.pos_embed, cls.pos_embed)
    torch.testing.assert_close(body.blocks[3].attn.qkv.weight, cls.blocks[3].attn.qkv.weight)
    assert sorted(body.out_norms) == ['1', '2', '3']  # block 5, the last, uses the final norm
    # same keys as the features_only model of the backbone
    ref = gpvit.create_model('gpvit_mini', embed_dim=48, img_size=32, features_only=True, out_indices=(1, 2, 3, 5))
    assert set(ref.model.state_dict()) == set(body.state_dict())
    with pytest.raises(ValueError, match='out_indices'):
        gpvit.create_model('upernet', backbone='gpvit_mini', out_indices=(1, 9))


# -- the engine ----------------------------------------------------------------------------------------------

def test_config_errors(ade, tmp_path):
    check_config_errors(lambda: seg_raw(ade, tmp_path / 'x'), {
        'model.kwargs.num_classes=5': 'num_classes',
        'data.train_aug.ratio_range=[2.0, 1.0]': 'ratio_range',
        'data.inference=tile': 'data.inference',
    })


@pytest.mark.parametrize('model', ['upernet', 'segformer'])
def test_engine_train_eval_and_gpvit_eval(ade, tmp_path, model):
    out = tmp_path / 'run'
    raw = seg_raw(ade, out, model)
    if model == 'segformer':
        raw['optim']['lr_mult'] = {'decode_head': 10.0}
        raw['data']['inference'] = 'slide'
        raw['data']['slide_crop'] = [48, 48]
        raw['data']['slide_stride'] = [32, 32]
    recs = train_and_reevaluate(build_config(raw), 'mIoU')
    last = recs[-1]
    assert 0 <= last['val_mIoU'] <= 1 and last['val_images'] == 3 and last['val_clipped_labels'] == 16
    assert recs[0]['train_skipped_images'] + recs[1]['train_skipped_images'] >= 0
    assert 'train_loss_decode' in last
    ckpt = torch.load(out / 'last.pth', map_location='cpu', weights_only=True)
    assert ckpt['model_spec']['name'] == model and ckpt['task'] == 'segmentation'


def test_resume_is_bit_exact(ade, tmp_path):
    check_resume_is_bit_exact(lambda out: seg_raw(ade, out), tmp_path)


def _check_ade_recipe(cfg, head: str) -> None:
    """gpvit.md 6.2: AdamW 1.2e-4, wd 0.01, poly with a 1500-iteration warmup, 160k iterations of global batch 32
    (2 per GPU), 512x512 crops of ADE20K (150 classes), head lr x10 for the SegFormer head only."""
    assert cfg.task == 'segmentation' and cfg.model.name == head and cfg.model.kwargs['num_classes'] == 150
    assert cfg.train.iters == 160000 and cfg.sched.name == 'poly' and cfg.sched.warmup_iters == 1500
    assert cfg.optim.lr == pytest.approx(1.2e-4) and cfg.optim.weight_decay == 0.01
    assert cfg.train.global_batch == 32 and cfg.loader.batch_size == 2
    assert tuple(cfg.data.train_aug.crop_size) == (512, 512) and cfg.data.num_classes == 150
    assert (cfg.optim.lr_mult == {'decode_head': 10.0}) == (head == 'segformer')


def test_shipped_configs_load():
    from gpvit.tasks import load_config
    root = CONFIGS / 'segmentation'
    names = {p.stem for p in root.glob('*.yaml')}
    expected = {f'gpvit_l{v}_{head}' for v in (1, 2, 3, 4) for head in ('upernet', 'segformer')}
    gc_vit = {f'gc_vit_{size}_upernet' for size in ('tiny', 'small', 'base')}
    assert expected | gc_vit <= names
    for name in sorted(names):
        assert load_config(root / f'{name}.yaml').task == 'segmentation'
    for v in (1, 2, 3, 4):
        for head in ('upernet', 'segformer'):
            cfg = load_config(root / f'gpvit_l{v}_{head}.yaml')
            _check_ade_recipe(cfg, head)
            assert cfg.model.kwargs['backbone'] == f'gpvit_l{v}'
            assert cfg.model.kwargs['drop_path_rate'] == (0.1 if v <= 2 else 0.2)
    # GC ViT releases no segmentation recipe (gcvit.md 4): the GPViT UperNet recipe with the GC ViT detection
    # backbone's windows of 24 and its drop path (T 0.2 released; S, B 0.3 as the cascade recipes); the head and
    # its auxiliary FCN as the GPViT config's.
    ref = load_config(root / 'gpvit_l1_upernet.yaml')
    head_keys = ('channels', 'pool_scales', 'aux_channels', 'aux_in_index', 'aux_weight')
    for size, drop_path in (('tiny', 0.2), ('small', 0.3), ('base', 0.3)):
        cfg = load_config(root / f'gc_vit_{size}_upernet.yaml')
        _check_ade_recipe(cfg, 'upernet')
        k = cfg.model.kwargs
        assert (k['backbone'], k['window_size'], k['drop_path_rate'], k['out_indices']) == \
            (f'gc_vit_{size}', 24, drop_path, [0, 1, 2, 3])
        assert {key: k[key] for key in head_keys} == {key: ref.model.kwargs[key] for key in head_keys}
        assert (cfg.data, cfg.optim, cfg.sched, cfg.train) == (ref.data, ref.optim, ref.sched, ref.train)


def test_gc_vit_upernet_config_builds_a_working_model():
    """The shipped GC ViT UperNet's model arguments (windows of 24, the four stage maps, the head settings) with
    a 1-block-per-stage, 16-wide GC ViT: a training step gives both losses, inference logits at the image size."""
    from gpvit.tasks import load_config
    cfg = load_config(CONFIGS / 'segmentation' / 'gc_vit_tiny_upernet.yaml')
    model = gpvit.create_model(cfg.model.name, **dict(cfg.model.kwargs, embed_dim=16, depths=(1, 1, 1, 1),
                                                      num_heads=(1, 1, 2, 2)))
    assert model.backbone.strides == [4, 8, 16, 32] and model.backbone.body.window_size == ((24, 24),) * 4
    x, y = torch.randn(2, 3, 64, 96), torch.randint(0, 150, (2, 64, 96))
    losses = model.train()(x, y)
    assert set(losses) == {'loss_decode', 'loss_aux'} and all(torch.isfinite(v) for v in losses.values())
    assert model.eval()(x[:1]).shape == (1, 150, 64, 96)


def test_gpvit_predict_draws_the_segmentation(ade, tmp_path, capsys):
    out = tmp_path / 'run'
    predict = trained_predictor(seg_raw(ade, out, 'segformer'), tmp_path / 'seg.yaml')
    image = ade / 'images' / 'validation' / 'validation_000.jpg'
    png = tmp_path / 'pred.png'
    assert predict(image, png) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    drawn = np.array(Image.open(png))
    original = np.array(Image.open(image))
    assert drawn.shape == original.shape and not np.array_equal(drawn, original)
    assert sum(summary['classes'].values()) == pytest.approx(1.0, abs=1e-3)
    assert {int(k) for k in summary['classes']} <= set(range(NUM_CLASSES))  # JSON keys are strings
    # the drawing is the palette colour of each predicted class blended 50/50 with the image
    from gpvit.commands.predict import palette
    assert predict(image, png, '--alpha', '1.0') == 0
    drawn = np.array(Image.open(png))
    colours = {tuple(c) for c in palette(NUM_CLASSES)[list(map(int, summary['classes']))]}
    assert {tuple(p) for p in drawn.reshape(-1, 3)} <= colours
    assert predict(image, png, checkpoint=out / 'missing.pth') == 2
