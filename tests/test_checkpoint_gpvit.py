"""GPViT checkpoints: every supported layout loads to the same function; everything else fails clearly."""
import logging
import re

import pytest
import torch
from fill import fill, load_manifest
from safetensors.torch import load_file

import gpvit
from gpvit.checkpoint import CheckpointError
from gpvit.cli import main as cli_main

# mmpretrain PR #1303 names, as its converter writes them (spec §4.8), from the reference names.
REF_TO_MMPRETRAIN = [
    (r'patch_embed\.stem\.0\.', 'patch_embed.stem.conv.'),
    (r'patch_embed\.stem\.1\.', 'patch_embed.stem.bn.'),
    (r'patch_embed\.convs\.0\.', 'patch_embed.convs.0.conv.'),
    (r'patch_embed\.convs\.1\.', 'patch_embed.convs.0.bn.'),
    (r'patch_embed\.convs\.3\.', 'patch_embed.convs.1.conv.'),
    (r'patch_embed\.convs\.4\.', 'patch_embed.convs.1.bn.'),
    (r'group_layer\.norm_query\.', 'group_layer.norm_group_token.'),
    (r'group_layer\.norm_key\.', 'group_layer.norm_x.'),
    (r'un_group_layer\.norm_query\.', 'un_group_layer.norm_x.'),
    (r'un_group_layer\.norm_key\.', 'un_group_layer.norm_group_token.'),
    (r'patch_mixer\.0\.', 'token_mix.layers.0.0.'),
    (r'patch_mixer\.3\.', 'token_mix.layers.1.'),
    (r'channel_mixer\.0\.', 'channel_mix.layers.0.0.'),
    (r'channel_mixer\.3\.', 'channel_mix.layers.1.'),
    (r'(mixer\.layers\.0)\.norm1\.', r'\1.ln1.'),
    (r'(mixer\.layers\.0)\.norm2\.', r'\1.ln2.'),
    (r'dwconv\.0\.', 'dwconv.conv.'),
    (r'dwconv\.1\.', 'dwconv.bn.'),
    (r'^backbone\.ln1\.', 'backbone.lastnorm.'),
]


def _to_mmpretrain(sd):
    out = {}
    for k, v in sd.items():
        for pattern, repl in REF_TO_MMPRETRAIN:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


@pytest.fixture(scope='module')
def l2(golden_dir):
    """Reference L2 classifier weights (L2 has one extra stem conv), the input and the golden logits."""
    ref = torch.load(golden_dir / 'gpvit_l2_seed0.pt')
    sd = fill(load_manifest(golden_dir / 'gpvit_l2_cls_manifest.json'), seed=0)
    return sd, ref['input0'][:1], ref['logits0'][:1]


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_reference_release_and_bare_dict(l2):
    sd, x, logits = l2
    for ckpt in ({'meta': {'CLASSES': ['a'] * 1000}, 'state_dict': sd}, sd):
        assert (_logits(gpvit.create_model('gpvit_l2', checkpoint=ckpt), x) - logits).abs().max() <= 1e-4


def test_mmpretrain_port(l2):
    sd, x, logits = l2
    ported = _to_mmpretrain(sd)
    assert 'backbone.lastnorm.weight' in ported and 'backbone.patch_embed.convs.0.bn.running_var' in ported
    model = gpvit.create_model('gpvit_l2', checkpoint={'state_dict': ported})
    assert (_logits(model, x) - logits).abs().max() <= 1e-4


def test_project_layouts_file_formats_and_prefixes(l2, tmp_path):
    sd, x, logits = l2
    model = gpvit.create_model('gpvit_l2', checkpoint=sd)
    own = model.state_dict()
    torch.save({'model': own, 'epoch': 3}, tmp_path / 'train.pth')  # a training checkpoint of this project
    torch.save({f'module.{k}': v for k, v in own.items()}, tmp_path / 'ddp.pth')
    for src in (tmp_path / 'train.pth', tmp_path / 'ddp.pth', own):
        assert (_logits(gpvit.create_model('gpvit_l2', checkpoint=src), x) - logits).abs().max() <= 1e-4
    fresh = gpvit.create_model('gpvit_l2')
    gpvit.load_checkpoint(fresh, tmp_path / 'train.pth')
    assert (_logits(fresh, x) - logits).abs().max() <= 1e-4


def test_ema_flag(l2, tmp_path):
    sd, x, logits = l2
    own = gpvit.create_model('gpvit_l2', checkpoint=sd).state_dict()
    noise = {k: v + 1 if v.is_floating_point() else v for k, v in own.items()}
    torch.save({'model': noise, 'model_ema': own}, tmp_path / 'ema.pth')
    assert (_logits(gpvit.create_model('gpvit_l2', checkpoint=tmp_path / 'ema.pth', use_ema=True), x)
            - logits).abs().max() <= 1e-4
    with pytest.raises(CheckpointError, match='no EMA weights'):
        gpvit.create_model('gpvit_l2', checkpoint=sd, use_ema=True)


def test_convert_command_round_trip(l2, tmp_path, capsys):
    sd, x, logits = l2
    torch.save({'meta': {}, 'state_dict': sd}, tmp_path / 'release.pth')
    assert cli_main(['convert', str(tmp_path / 'release.pth'), str(tmp_path / 'l2.safetensors')]) == 0
    assert 'gpvit_l2' in capsys.readouterr().out
    converted = load_file(str(tmp_path / 'l2.safetensors'))
    assert 'blocks.0.attn.qkv.weight' in converted and 'backbone.pos_embed' not in converted
    model = gpvit.create_model('gpvit_l2', checkpoint=tmp_path / 'l2.safetensors')
    assert (_logits(model, x) - logits).abs().max() <= 1e-4


def test_detector_checkpoint_backbone(golden_dir, caplog):
    """A reference Mask R-CNN checkpoint: GPViT backbone inside the adapter, heads and adapter set aside."""
    ref = torch.load(golden_dir / 'gpvit_l1_seed0.pt')
    seg = fill(load_manifest(golden_dir / 'gpvit_l1_seg_manifest.json'), seed=0)
    det = {k: v for k, v in seg.items() if not re.match(r'backbone\.(norm\d|ln1)\.', k)}  # final_norm=False
    det.update({'backbone.level_embed': torch.zeros(3, 216), 'backbone.spm.stem.0.weight': torch.zeros(64, 3, 3, 3),
                'backbone.interactions.0.injector.gamma': torch.zeros(216),
                'neck.lateral_convs.0.conv.weight': torch.zeros(256, 216, 1, 1),
                'rpn_head.rpn_conv.weight': torch.zeros(256, 256, 3, 3),
                'roi_head.bbox_head.fc_cls.weight': torch.zeros(81, 1024)})
    with caplog.at_level(logging.WARNING):
        backbone = gpvit.create_model('gpvit_l1', checkpoint={'meta': {}, 'state_dict': det}, features_only=True,
                                      out_indices=(11,))
    assert 'norm.weight' in caplog.text  # the adapter's backbone has no final norm: said, not hidden
    seg_backbone = gpvit.create_model('gpvit_l1', checkpoint=seg, features_only=True, out_indices=(11,))
    backbone.eval(), seg_backbone.eval()
    with torch.no_grad():  # same blocks; the detector has no final norm, so compare before it
        a = backbone.model.forward_intermediates(ref['seg_input'], indices=[11], intermediates_only=True)[0]
        b = seg_backbone.model.forward_intermediates(ref['seg_input'], indices=[11], intermediates_only=True)[0]
    assert torch.equal(a, b)


def test_backbone_only_into_classifier(golden_dir, caplog):
    seg = fill(load_manifest(golden_dir / 'gpvit_l1_seg_manifest.json'), seed=0)
    assert gpvit.create_model('gpvit_l1', checkpoint=seg).num_classes == 0  # no head in it: none made up
    with caplog.at_level(logging.WARNING):
        model = gpvit.create_model('gpvit_l1', checkpoint=seg, num_classes=1000)  # asked for: warned
    assert 'head.weight' in caplog.text and 'left as initialised' in caplog.text
    assert torch.equal(model.blocks[0].attn.qkv.weight, seg['backbone.layers.0.qkv.weight'])


def test_wrong_variant_names_the_variant(l2):
    sd, _, _ = l2
    with pytest.raises(CheckpointError, match=r'gpvit_l1.*looks like gpvit_l2') as err:
        gpvit.create_model('gpvit_l1', checkpoint=sd)
    assert 'blocks.0.attn.qkv.weight (1044, 348) vs model (648, 216)' in str(err.value)


def test_missing_and_unexpected_keys(l2):
    sd, _, _ = l2
    broken = {k: v for k, v in sd.items() if 'layers.3.' not in k}
    with pytest.raises(CheckpointError, match=r'missing keys, first: \[.blocks\.3\.'):
        gpvit.create_model('gpvit_l2', checkpoint=broken)
    extra = dict(sd, **{'backbone.layers.0.extra.weight': torch.zeros(3)})
    with pytest.raises(CheckpointError, match='unexpected keys.*layers.0.extra.weight'):
        gpvit.create_model('gpvit_l2', checkpoint=extra)
    model = gpvit.create_model('gpvit_l2')
    before = model.blocks[0].attn.qkv.weight.clone()
    with pytest.raises(CheckpointError):
        gpvit.load_checkpoint(model, broken)
    assert torch.equal(model.blocks[0].attn.qkv.weight, before)  # nothing half-loaded


def test_not_a_checkpoint(tmp_path):
    (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint at all')
    with pytest.raises(CheckpointError, match='not a readable PyTorch checkpoint'):
        gpvit.create_model('gpvit_l1', checkpoint=tmp_path / 'junk.pth')
    with pytest.raises(FileNotFoundError):
        gpvit.create_model('gpvit_l1', checkpoint=tmp_path / 'missing.pth')
    with pytest.raises(CheckpointError, match='not a GPViT checkpoint'):
        gpvit.create_model('gpvit_l1', checkpoint={'fc.weight': torch.zeros(2, 2)})
    assert cli_main(['convert', str(tmp_path / 'junk.pth'), str(tmp_path / 'out.safetensors')]) == 2
    assert not (tmp_path / 'out.safetensors').exists()


def test_num_classes_and_resolution_adaptation(l2):
    sd, x, logits = l2
    small = {k: v for k, v in sd.items()}
    small['head.fc.weight'], small['head.fc.bias'] = sd['head.fc.weight'][:10], sd['head.fc.bias'][:10]
    model = gpvit.create_model('gpvit_l2', checkpoint=small)  # num_classes taken from the checkpoint
    assert model.num_classes == 10
    assert (_logits(model, x) - logits[:, :10]).abs().max() <= 1e-4
    # Built for 256x256: the 28x28 position embedding is resampled at load time, the same function as the
    # 224 model resizing it on the fly.
    hi = gpvit.create_model('gpvit_l2', checkpoint=sd, img_size=256)
    assert hi.pos_embed.shape == (1, 32 * 32, 348)
    x256 = torch.randn(1, 3, 256, 256)
    native = gpvit.create_model('gpvit_l2', checkpoint=sd)
    assert (_logits(hi, x256) - _logits(native, x256)).abs().max() <= 1e-4


def test_classifier_checkpoint_into_dense_backbone(l2, caplog):
    """ImageNet weights initialise a segmentation backbone: its per-block norms start fresh, as the reference's."""
    sd, _, _ = l2
    with caplog.at_level(logging.WARNING):
        backbone = gpvit.create_model('gpvit_l2', checkpoint=sd, features_only=True, out_indices=(2, 5, 8, 11))
    assert 'out_norms.2.weight' in caplog.text
    assert torch.equal(backbone.model.out_norms['2'].weight, torch.ones(348))
    assert torch.equal(backbone.model.norm.weight, sd['backbone.ln1.weight'])
    assert torch.equal(backbone.model.blocks[0].attn.qkv.weight, sd['backbone.layers.0.qkv.weight'])
