"""``gpvit eval`` and fine-tuning on checkpoints of the reference formats (GPViT mmcls release layout)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_config import CONFIGS

import gpvit
from gpvit.cli import main as cli_main
from gpvit.engine.distributed import DistContext
from gpvit.tasks import load_config
from gpvit.tasks.classification import ClassificationTask

from trainkit import make_image_folder


@pytest.fixture(scope='module')
def reference_checkpoint(tmp_path_factory, golden_dir):
    from fill import fill, load_manifest
    sd = fill(load_manifest(golden_dir / 'gpvit_l1_cls_manifest.json'), seed=0)
    path = tmp_path_factory.mktemp('ckpt') / 'gpvit_l1_in1k_300e.pth'
    torch.save({'meta': {'epoch': 300}, 'state_dict': sd}, path)  # the layout of the reference release files
    return path


def test_eval_of_a_reference_release_checkpoint(tmp_path, reference_checkpoint, capsys):
    """The GPViT-L1 recipe config evaluates a reference-format checkpoint on a 1000-class ImageNet-style folder.

    Each of 24 real images (40x48, evaluated at 32 px to stay fast) is filed under the class the reference
    weights predict for it, so a correct pipeline (weights, neck, test transform, class order) scores 100 %
    top-1; every other class folder holds an unreadable file, which evaluation skips and counts."""
    root = tmp_path / 'imagenet'
    overrides = [f'data.root={root}', 'data.format=folder', 'data.img_size=32', 'loader.batch_size=250',
                 'loader.workers=0', 'train.amp=none']
    cfg = load_config(CONFIGS / 'gpvit_l1_in1k.yaml', overrides)
    tf = ClassificationTask(cfg, DistContext()).transform('val')
    model = gpvit.create_model('gpvit_l1', checkpoint=reference_checkpoint).eval()
    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(24)]
    with torch.no_grad():
        logits = model(torch.stack([tf(im) for im in images]))
    labels = logits.argmax(1).tolist()
    for c in range(1000):
        (root / 'val' / f'n{c:08d}').mkdir(parents=True)
    for i, (im, c) in enumerate(zip(images, labels)):
        im.save(root / 'val' / f'n{c:08d}' / f'img{i:02d}.png')
    for c in set(range(1000)) - set(labels):
        (root / 'val' / f'n{c:08d}' / 'broken.png').write_bytes(b'not an image')

    rc = cli_main(['eval', '-c', str(CONFIGS / 'gpvit_l1_in1k.yaml'), '--checkpoint', str(reference_checkpoint),
                   *overrides])
    assert rc == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics['count'] == 24 and metrics['skipped_images'] == 1000 - len(set(labels))
    assert metrics['top1'] == 100.0 and metrics['top5'] == 100.0
    expected_loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels)).item()
    assert metrics['loss'] == pytest.approx(expected_loss, rel=1e-4)


def test_fine_tuning_starts_from_a_reference_checkpoint(tmp_path, reference_checkpoint):
    """model.pretrained: the backbone comes from the checkpoint, the classifier is new for the task's classes."""
    data = make_image_folder(tmp_path / 'data', classes=3, per_class=2, val_per_class=1, corrupt=False)
    cfg = load_config(CONFIGS / 'gpvit_l1_in1k.yaml', [
        f'data.root={data["root"]}', 'data.format=folder', 'data.num_classes=null', 'data.img_size=32',
        f'model.pretrained={reference_checkpoint}'])
    task = ClassificationTask(cfg, DistContext())
    task.build_datasets()
    model = task.build_model()
    ref = gpvit.create_model('gpvit_l1', checkpoint=reference_checkpoint)
    assert model.head.weight.shape == (3, 216)
    own, theirs = model.state_dict(), ref.state_dict()
    backbone = [k for k in own if not k.startswith('head.')]
    assert backbone and all(torch.equal(own[k], theirs[k]) for k in backbone)
