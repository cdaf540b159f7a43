"""Reference (mmseg) segmentor checkpoints load whole into the project's segmentors and compute the reference's
function: golden outputs of the official code in tests/data/golden/dense (see its README)."""
import pytest
import torch
from densekit import GPVIT_WIDTH, close_to_reference
from fill import fill, load_manifest

import gpvit
from gpvit.errors import CheckpointError

DENSE = 'dense'
# Published parameter counts (M), GPViT paper, L1-L4.
PUBLISHED_M = {'upernet': (37, 53, 66, 107), 'segformer': (9, 24, 36, 76)}


def _reference(golden_dir, recipe):
    sd = fill(load_manifest(golden_dir / DENSE / f'gpvit_l1_{recipe}_manifest.json'), seed=0)
    return sd, torch.load(golden_dir / DENSE / f'gpvit_l1_{recipe}_seed0.pt')


@pytest.mark.parametrize('recipe', ['upernet', 'segformer'])
def test_golden_reference_segmentor(golden_dir, tmp_path, recipe):
    """The seed-0 reference state dict as a release file -> backbone maps, decode (and auxiliary) logits."""
    sd, ref = _reference(golden_dir, recipe)
    torch.save({'meta': {'CLASSES': None}, 'state_dict': sd}, tmp_path / f'gpvit_l1_{recipe}.pth')
    model = gpvit.create_model(f'gpvit_l1_{recipe}', checkpoint=tmp_path / f'gpvit_l1_{recipe}.pth').eval()
    assert sum(p.numel() for p in model.parameters()) == ref['meta']['param_count']
    with torch.no_grad():
        feats = model.backbone(ref['input'])
        assert len(feats) == len(ref['features']) == 4
        assert all(close_to_reference(a, b) for a, b in zip(feats, ref['features']))
        assert close_to_reference(model.decode_head(feats), ref['decode_logits'])
        if recipe == 'upernet':
            assert close_to_reference(model.auxiliary_head(feats), ref['aux_logits'])
        else:
            assert model.auxiliary_head is None and 'aux_logits' not in ref
        logits = model(ref['input'])  # at the image's size
    assert logits.shape == (1, 150, 128, 192)


def test_reference_segmentor_parts_count(golden_dir):
    _, ref = _reference(golden_dir, 'upernet')
    with torch.device('meta'):
        model = gpvit.create_model('gpvit_l1_upernet')
    parts = {n: sum(p.numel() for p in m.parameters()) for n, m in model.named_children()}
    assert parts == ref['meta']['param_count_parts']


@pytest.mark.parametrize('recipe', ['upernet', 'segformer'])
@pytest.mark.parametrize('level', [1, 2, 3, 4])
def test_param_count_published(recipe, level):
    with torch.device('meta'):
        model = gpvit.create_model(f'gpvit_l{level}_{recipe}')
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / 1e6 - PUBLISHED_M[recipe][level - 1]) < 1


def _scaled_layout(golden_dir, recipe, level):
    """An L``level`` reference layout: the backbone manifest of that level, the L1 head manifest with the
    backbone width (216, and 216 + 4 x 512 for the UperNet PPM bottleneck) replaced by the level's."""
    backbone = load_manifest(golden_dir / f'gpvit_l{level}_seg_manifest.json')
    heads = [(k, s) for k, s in load_manifest(golden_dir / DENSE / f'gpvit_l1_{recipe}_manifest.json')
             if not k.startswith('backbone.')]
    w = GPVIT_WIDTH[level]
    scale = {216: w, 216 + 4 * 512: w + 4 * 512}
    heads = [(k, tuple(scale.get(d, d) if i == 1 else d for i, d in enumerate(s))) for k, s in heads]
    return fill(backbone + heads, seed=0)


@pytest.mark.parametrize('recipe', ['upernet', 'segformer'])
@pytest.mark.parametrize('level', [2, 3, 4])
def test_reference_layout_other_levels_loads(golden_dir, recipe, level):
    sd = _scaled_layout(golden_dir, recipe, level)
    model = gpvit.create_model(f'gpvit_l{level}_{recipe}', checkpoint={'meta': {}, 'state_dict': sd})
    assert torch.equal(model.decode_head.classifier.weight, sd['decode_head.conv_seg.weight'])
    assert torch.equal(model.backbone.body.blocks[0].attn.qkv.weight, sd['backbone.layers.0.qkv.weight'])


def test_reference_wrong_head_names_the_recipe(golden_dir):
    sd, _ = _reference(golden_dir, 'upernet')
    with pytest.raises(CheckpointError, match=r"decode_head is UPerHead.*SegformerHead.*build 'upernet'"):
        gpvit.create_model('gpvit_l1_segformer', checkpoint=sd)
    with pytest.raises(CheckpointError, match='auxiliary_head is FCNHead.*aux_weight'):
        gpvit.create_model('gpvit_l1_upernet', aux_weight=0, checkpoint=sd)


def test_reference_mismatch_names_the_key(golden_dir):
    sd, _ = _reference(golden_dir, 'segformer')
    del sd['decode_head.fusion_conv.bn.running_var']
    sd['decode_head.extra.weight'] = torch.zeros(1)
    with pytest.raises(CheckpointError) as e:
        gpvit.create_model('gpvit_l1_segformer', checkpoint=sd)
    msg = str(e.value)
    assert '\n' not in msg and 'decode_head.fuse.1.running_var' in msg and 'decode_head.extra.weight' in msg
    sd, _ = _reference(golden_dir, 'segformer')
    with pytest.raises(CheckpointError, match=r'decode_head.classifier.weight \(150, 256, 1, 1\) vs model '
                                              r'\(19, 256, 1, 1\)'):
        gpvit.create_model('gpvit_l1_segformer', num_classes=19, checkpoint=sd)


def test_gpvit_convert_writes_the_whole_segmentor(golden_dir, tmp_path, capsys):
    from gpvit.cli import main as cli_main
    sd, ref = _reference(golden_dir, 'segformer')
    torch.save({'meta': {}, 'state_dict': sd}, tmp_path / 'gpvit_l1_segformer.pth')
    assert cli_main(['convert', str(tmp_path / 'gpvit_l1_segformer.pth'), str(tmp_path / 'seg.safetensors')]) == 0
    assert 'segformer' in capsys.readouterr().out
    model = gpvit.create_model('segformer', checkpoint=tmp_path / 'seg.safetensors').eval()  # settings travel
    assert model.backbone.out_indices == (2, 5, 8, 11) and model.num_classes == 150
    with torch.no_grad():
        assert close_to_reference(model.decode_head(model.backbone(ref['input'])), ref['decode_logits'])


def test_gpvit_predict_with_a_reference_checkpoint(golden_dir, tmp_path, capsys):
    """``gpvit predict --config gpvit_l1_segformer --checkpoint <reference release file>`` draws a label map."""
    import json

    import numpy as np
    from PIL import Image

    from gpvit.cli import main as cli_main
    sd, _ = _reference(golden_dir, 'segformer')
    torch.save({'meta': {}, 'state_dict': sd}, tmp_path / 'gpvit_l1_segformer.pth')
    image = tmp_path / 'image.png'
    Image.fromarray((np.random.default_rng(0).random((64, 96, 3)) * 255).astype('uint8')).save(image)
    ckpt = tmp_path / 'gpvit_l1_segformer.pth'
    assert cli_main(['predict', '--config', 'gpvit_l1_segformer', '--checkpoint', str(ckpt), '--device', 'cpu',
                     '--out', str(tmp_path / 'pred.png'), str(image)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary['task'] == 'segmentation' and summary['classes']
    assert np.array(Image.open(tmp_path / 'pred.png')).shape[:2] == (64, 96)
