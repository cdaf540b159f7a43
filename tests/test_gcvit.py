"""GC ViT: exactness against the reference and timm, the timm backbone API, any input size, checkpoints, errors."""
import argparse
import copy
import re

import pytest
import timm
import torch
import torch.nn.functional as F
from backbonekit import (BAD_INPUTS, assert_backward_reaches_every_parameter, assert_bad_input_raises,
                         assert_bf16_autocast_close, assert_checkpointing_keeps_gradients,
                         assert_input_dtype_checked, assert_intermediates_match_feature_info,
                         assert_reset_classifier)
from fill import fill, load_manifest
from timm.layers import DropPath, RelPosBias
from timm.models import group_parameters
from timm.layers.pos_embed_rel import gen_relative_position_index, resize_rel_pos_bias_table_simple
from timm.models._manipulate import reinit_non_persistent_buffers

import gpvit
from gpvit.checkpoint import CheckpointError
from gpvit.models.gcvit import (TIMM_NAMES, GCViT, GCViTBlock, RelPosBiasGather, timm_counterpart,
                                to_project_layout, to_timm_layout)
from gpvit.models.layers import attention, split_heads
from gpvit.tools.flops import count_flops

VARIANTS = ['gc_vit_xxtiny', 'gc_vit_xtiny', 'gc_vit_tiny', 'gc_vit_tiny2', 'gc_vit_small', 'gc_vit_small2',
            'gc_vit_base', 'gc_vit_large', 'gc_vit_large_224_21k', 'gc_vit_large_384_21k', 'gc_vit_large_512_21k']
LARGE = {'gc_vit_large', 'gc_vit_large_224_21k', 'gc_vit_large_384_21k', 'gc_vit_large_512_21k'}
# Spec §2, measured on the reference: parameters, and FLOPs (2 x MAC) at the native resolution.
PARAMS = {'gc_vit_xxtiny': 11_995_428, 'gc_vit_xtiny': 19_981_294, 'gc_vit_tiny': 28_221_974,
          'gc_vit_tiny2': 34_535_654, 'gc_vit_small': 51_092_173, 'gc_vit_small2': 68_615_197,
          'gc_vit_base': 90_320_836, 'gc_vit_large': 202_075_570, 'gc_vit_large_224_21k': 202_075_570,
          'gc_vit_large_384_21k': 202_860_610, 'gc_vit_large_512_21k': 203_795_362}
GFLOPS = {'gc_vit_xxtiny': 4.242, 'gc_vit_xtiny': 5.825, 'gc_vit_tiny': 9.522, 'gc_vit_tiny2': 12.356,
          'gc_vit_small': 17.059, 'gc_vit_small2': 23.075, 'gc_vit_base': 29.632, 'gc_vit_large': 65.110,
          'gc_vit_large_224_21k': 65.110, 'gc_vit_large_384_21k': 207.887, 'gc_vit_large_512_21k': 404.275}
RESOLUTION = {v: 384 if '384' in v else 512 if '512' in v else 224 for v in VARIANTS}
CROP_PCT = {'gc_vit_xtiny': 0.875, 'gc_vit_tiny2': 0.875, 'gc_vit_small': 0.875, 'gc_vit_small2': 0.875}
TIMM_VARIANTS = ['gc_vit_xxtiny', 'gc_vit_xtiny', 'gc_vit_tiny', 'gc_vit_small', 'gc_vit_base']
TIMM_FIXED = tuple(int(v) for v in timm.__version__.split('.')[:3]) >= (1, 0, 31)


def _param(variant, slow=()):
    return pytest.param(variant, marks=pytest.mark.slow) if variant in slow else variant


def _reference_sd(golden_dir, variant):
    return fill(load_manifest(golden_dir / f'{variant}_manifest.json'), seed=0)


def _empty(variant, **kwargs):
    """The model without spending time on initialisation (all weights come from a checkpoint next)."""
    with torch.device('meta'):
        model = timm.create_model(variant, weight_init='skip', **kwargs)
    model.to_empty(device='cpu')
    reinit_non_persistent_buffers(model)  # the relative-position indices
    return model


def _with_index_buffers(sd):
    """An NVlabs state dict as the reference saves it: with the persistent int64 relative_position_index."""
    sd = dict(sd)
    for k, v in list(sd.items()):
        if k.endswith('relative_position_bias_table'):
            w = (round(v.shape[0] ** 0.5) + 1) // 2
            sd[k.replace('bias_table', 'index')] = gen_relative_position_index((w, w))
    return sd


@pytest.fixture(scope='module')
def xxtiny(golden_dir):
    """Reference XXT weights (NVlabs layout), the first golden image and its logits."""
    ref = torch.load(golden_dir / 'gc_vit_xxtiny_seed0.pt')
    return _reference_sd(golden_dir, 'gc_vit_xxtiny'), ref['input0'][:1], ref['logits0'][:1]


@pytest.fixture(scope='module')
def xxtiny_model():
    """A randomly initialised XXT classifier in eval mode, shared by the tests that do not change it."""
    return gpvit.create_model('gc_vit_xxtiny').eval()


def _same_weights(model, state_dict):
    own = model.state_dict()
    return own.keys() == state_dict.keys() and all(torch.equal(v, state_dict[k]) for k, v in own.items())


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


# ----------------------------------------------------------------------------------------------------------
# Exactness
# ----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def golden_models(golden_dir):
    """``variant -> model`` with its golden weights, loaded from an NVlabs CheckpointSaver dict (with the
    persistent index buffers). Holds one model at a time; variants with the same manifest (gc_vit_large and
    gc_vit_large_224_21k) share it."""
    cache = {}

    def get(variant):
        manifest = (golden_dir / f'{variant}_manifest.json').read_text()
        if manifest not in cache:
            cache.clear()
            sd = fill(load_manifest(golden_dir / f'{variant}_manifest.json'), seed=0)
            ckpt = {'state_dict': _with_index_buffers(sd), 'epoch': 310}
            cache[manifest] = gpvit.load_checkpoint(_empty(variant), ckpt).eval()
        return cache[manifest]

    yield get
    cache.clear()


@pytest.mark.parametrize('variant', [_param(v, LARGE | {'gc_vit_base', 'gc_vit_small2'}) for v in VARIANTS])
def test_golden_classifier(golden_dir, golden_models, variant):
    """NVlabs checkpoint -> the reference's logits at the native resolution."""
    ref = torch.load(golden_dir / f'{variant}_seed0.pt')
    model = golden_models(variant)
    x = ref['input0']
    assert x.shape[-1] == RESOLUTION[variant]
    assert (_logits(model, x) - ref['logits0']).abs().max() <= 1e-4


def test_golden_through_create_model(xxtiny):
    sd, x, logits = xxtiny
    model = gpvit.create_model('gc_vit_xxtiny', checkpoint={'state_dict': sd})
    assert (_logits(model, x) - logits).abs().max() <= 1e-4


@pytest.mark.skipif(not TIMM_FIXED, reason='timm <= 1.0.30 mixes the images of a batch in global attention')
@pytest.mark.parametrize('variant', [_param(v, {'gc_vit_base', 'gc_vit_small'}) for v in TIMM_VARIANTS])
def test_same_function_as_timm_at_batch_3(variant):
    """timm's gcvit_* with weights in timm's layout; ours loads the same dict through its converter."""
    with torch.device('meta'):
        theirs = timm.create_model(TIMM_NAMES[variant])
    theirs.to_empty(device='cpu')
    for m in theirs.modules():
        if hasattr(m, 'relative_position_index'):
            m.reset_parameters()  # timm's RelPosBias: computes its index buffer
    sd = fill([(k, tuple(v.shape)) for k, v in theirs.state_dict().items()], seed=0)
    theirs.load_state_dict(sd)
    ours = gpvit.load_checkpoint(_empty(variant), sd)
    x = torch.randn(3, 3, 224, 224)
    assert (_logits(ours, x) - _logits(theirs, x)).abs().max() <= 1e-4


def test_timm_counterpart_takes_the_same_drop_path_schedule():
    """``timm_counterpart(..., drop_path_rate=r)``: timm's twin drops each block's branch with the probability
    this project's model gives that block (both linear over all blocks), and still has the same weights."""
    ours = gpvit.create_model('gc_vit_xxtiny', drop_path_rate=0.3)
    theirs = timm_counterpart('gc_vit_xxtiny', ours, drop_path_rate=0.3)
    for path in ('drop_path1', 'drop_path2'):
        a = [getattr(b, path).drop_prob for stage in ours.stages for b in stage.blocks]
        b = [getattr(getattr(b, path), 'drop_prob', 0.) for stage in theirs.stages for b in stage.blocks]
        assert a == pytest.approx(b, abs=1e-12) and a[-1] == pytest.approx(0.3), (a, b)
    x = torch.randn(1, 3, 224, 224)
    assert (_logits(ours, x) - _logits(theirs, x)).abs().max() <= 1e-4


@pytest.mark.parametrize('shared_query', [False, True])
def test_attention_with_learned_bias_matches_sdpa(shared_query):
    """The written-out attention taken on the CPU for a bias that needs a gradient (training) gives SDPA's output
    and gradients for q, k, v and the bias, in float64; a shared ``(1, L, C)`` query broadcasts as in SDPA."""
    torch.manual_seed(0)
    q = torch.randn(1 if shared_query else 6, 49, 64, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(6, 49, 64, dtype=torch.float64, requires_grad=True) for _ in range(2))
    bias = torch.randn(1, 4, 49, 49, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(6, 49, 64, dtype=torch.float64)
    ours = attention(q, k, v, 4, attn_mask=bias)
    sdpa = F.scaled_dot_product_attention(split_heads(q, 4).expand(6, -1, -1, -1), split_heads(k, 4),
                                          split_heads(v, 4), attn_mask=bias).transpose(1, 2).flatten(2)
    assert torch.allclose(ours, sdpa, rtol=0, atol=1e-12)
    for a, b, name in zip(torch.autograd.grad(ours, (q, k, v, bias), grad),
                          torch.autograd.grad(sdpa, (q, k, v, bias), grad), 'q k v bias'.split()):
        assert torch.allclose(a, b, rtol=0, atol=1e-11), name


@pytest.mark.parametrize('window', [(7, 7), (14, 14), (6, 10)])
def test_relative_position_bias_gather_is_timms_bias(window):
    """The head-major gather gives timm's ``RelPosBias`` bias (bit for bit) and its table gradient (float64)."""
    torch.manual_seed(0)
    ours = RelPosBiasGather(window, 3).double()
    timms = RelPosBias(window, 3).double()
    timms.load_state_dict(ours.state_dict())
    assert ours.get_bias().shape == (1, 3, window[0] * window[1], window[0] * window[1])
    assert ours.get_bias().is_contiguous()  # SDPA's mask: a strided one slows the kernel
    assert torch.equal(ours.get_bias(), timms.get_bias())
    g = torch.randn(ours.get_bias().shape, dtype=torch.float64)
    a, = torch.autograd.grad(ours.get_bias(), ours.relative_position_bias_table, g)
    b, = torch.autograd.grad(timms.get_bias(), timms.relative_position_bias_table, g)
    torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    assert a.abs().amin() > 0  # every table entry is used


@pytest.mark.parametrize('drop_path', [0., 0.5])
def test_block_with_layer_scale_is_the_residual_of_timms_layer_scale_and_drop_path(drop_path):
    """The S/B/L block passes its layer scale into the residual add (one pass): the same function as
    ``x + DropPath(LayerScale(branch))`` in train mode under the same seed (float64: output and the input, gamma
    and weight gradients), and TorchScript compiles it."""
    torch.manual_seed(0)
    block = GCViTBlock(32, 2, (7, 7), layer_scale=1e-5, drop_path=drop_path).double().train()
    with torch.no_grad():
        block.ls1.gamma.uniform_(0.5, 1.5)
        block.ls2.gamma.uniform_(-1., 1.)
    x = torch.randn(8, 14, 14, 32, dtype=torch.float64, requires_grad=True)
    g = torch.randn(8, 14, 14, 32, dtype=torch.float64)
    wrt = (x, block.ls1.gamma, block.ls2.gamma, block.attn.qkv.weight, block.mlp.fc1.weight)

    def plain(x: torch.Tensor) -> torch.Tensor:
        drop = DropPath(drop_path).train(block.training)
        x = x + drop(block.ls1(block._window_attn(block.norm1(x), None)))
        return x + drop(block.ls2(block.mlp(block.norm2(x))))

    torch.manual_seed(1)
    out = block(x)
    grads = torch.autograd.grad(out, wrt, g)
    torch.manual_seed(1)
    ref = plain(x)
    ref_grads = torch.autograd.grad(ref, wrt, g)
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-13)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    if drop_path:  # some of the 8 samples lost a branch at this seed
        assert (ref - x).flatten(1).abs().amax(1).min() < (ref - x).abs().max()
    block.eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(block)(x), plain(x), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize('size', [(224, 224), (96, 128)])
def test_global_query_does_not_mix_images(xxtiny_model, size):
    """Each image alone gives what it gives in a batch of three (timm <= 1.0.30 gave window w of image b the
    global query of image (b * nW + w) mod B); 96x128 adds padding and the resized query."""
    x = torch.randn(3, 3, *size)
    with torch.no_grad():
        batched = xxtiny_model(x)
        single = torch.cat([xxtiny_model(x[i:i + 1]) for i in range(3)])
    assert (batched - single).abs().max() < 1e-4


@pytest.mark.parametrize('variant', VARIANTS)
def test_param_count_and_flops(variant):
    with torch.device('meta'):  # shapes only: the count needs no arithmetic
        model = timm.create_model(variant)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[variant]
    gflops = count_flops(model, (1, 3, RESOLUTION[variant], RESOLUTION[variant])) / 1e9
    assert abs(gflops - GFLOPS[variant]) / GFLOPS[variant] < 0.01


def test_reference_structure():
    with torch.device('meta'):
        model = timm.create_model('gc_vit_small')
        assert model.window_size == ((7, 7), (7, 7), (14, 14), (7, 7))
        assert timm.create_model('gc_vit_large_384_21k').window_size == ((12, 12), (12, 12), (24, 24), (12, 12))
        assert timm.create_model('gc_vit_large_512_21k').window_size == ((16, 16), (16, 16), (32, 32), (16, 16))
        tiny = timm.create_model('gc_vit_tiny')
    # Global query: 3 / 2 / 1 / 1 fused-MBConv blocks; stages 0 and 1 pool down to one window, 2 and 3 do not.
    assert [len(s.global_block.blocks) for s in model.stages] == [3, 2, 1, 1]
    assert [s.global_block.pool for s in model.stages] == [True, True, False, False]
    # Every stage starts local, then alternates; head_dim 32; layer scale 1e-5 in S/B/L only.
    assert [b.attn.use_global for b in model.stages[1].blocks] == [False, True, False, True]
    assert all(b.attn.qkv.out_features == (2 if b.attn.use_global else 3) * b.attn.num_heads * 32
               for s in model.stages for b in s.blocks)
    assert model.stages[0].blocks[0].ls1.init_values == 1e-5 and model.stages[0].blocks[0].ls2.gamma.shape == (96,)
    assert isinstance(tiny.stages[0].blocks[0].ls1, torch.nn.Identity)
    assert model.stages[0].global_block.blocks[0].se.fc1.weight.shape == (24, 96)
    dpr = [b.drop_path2.drop_prob for s in model.stages for b in s.blocks]
    assert len(dpr) == 31 and dpr[0] == 0 and abs(dpr[-1] - 0.3) < 1e-6  # linear over all 31 blocks


# ----------------------------------------------------------------------------------------------------------
# Any input size, dense models
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('size', [(32, 32), (64, 96), (100, 75), (250, 131)])
def test_any_input_size(xxtiny_model, size):
    with torch.no_grad():
        feats = xxtiny_model.forward_features(torch.randn(1, 3, *size))
        logits = xxtiny_model.forward_head(feats)
    h, w = size
    for _ in range(5):
        h, w = (h + 1) // 2, (w + 1) // 2
    assert feats.shape == (1, 512, h, w)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


@pytest.mark.parametrize('size', [(512, 640), (480, 704), (36, 50)])
def test_dense_feature_shapes(size):
    """Reference detection backbone: windows of 24 everywhere, four normed stage maps at strides 4-32."""
    backbone = gpvit.create_model('gc_vit_xxtiny', features_only=True, window_size=24).eval()
    assert backbone.feature_info.channels() == [64, 128, 256, 512]
    assert backbone.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, *size))
    H, W = size
    sides = [(-(-H // 2 ** i), -(-W // 2 ** i)) for i in range(2, 6)]  # ceil at every stride-2 step
    assert [tuple(f.shape) for f in feats] == [(1, 64 * 2 ** i, *sides[i]) for i in range(4)]
    # Each map went through its own LayerNorm (init 1 / 0): zero mean, unit variance over the channels.
    for f in feats:
        assert f.mean(1).abs().max() < 1e-4 and (f.var(1, unbiased=False) - 1).abs().max() < 1e-2


def test_dense_backbone_structure():
    """The reference detection backbone for T: 28.14M parameters (tables for windows of 24, per-level norms, no
    final norm or head); stage 2's global query pools once because its window (24) is not the 14x14 map."""
    with torch.device('meta'):
        backbone = timm.create_model('gc_vit_tiny', features_only=True, window_size=24)
    model = backbone.model
    assert sum(p.numel() for p in backbone.parameters()) == 28_142_910
    assert isinstance(model.norm, torch.nn.Identity) and isinstance(model.head, torch.nn.Identity)
    assert sorted(model.out_norms) == ['0', '1', '2', '3']
    assert [s.global_block.pool for s in model.stages] == [True, True, True, False]
    table = model.stages[2].blocks[0].attn.rel_pos.relative_position_bias_table
    assert table.shape == (47 * 47, 8)


def test_table_resize_keeps_centre_and_orientation(xxtiny):
    """A classifier's 13x13 table into a window-24 model: resized bicubically as an image of relative offsets,
    so offset 0 keeps its value and offsets stretch by 13/47, rows (dy) and columns (dx) in place."""
    sd, _, _ = xxtiny
    offsets = torch.arange(-6, 7, dtype=torch.float32)
    ramps = torch.stack([offsets[:, None].expand(13, 13), offsets[None, :].expand(13, 13)], -1).reshape(169, 2)
    sd = dict(sd, **{'levels.0.blocks.0.attn.relative_position_bias_table': ramps})
    dense = gpvit.create_model('gc_vit_xxtiny', checkpoint={'state_dict': sd}, features_only=True, window_size=24)
    rel_pos = dense.model.stages[0].blocks[0].attn.rel_pos
    assert rel_pos.relative_position_bias_table.shape == (47 * 47, 2)
    bias = rel_pos.get_bias()[0].view(2, 24, 24, 24, 24)[:, 12, 12].detach()  # (head, row_j, col_j) for i = (12, 12)
    dy = 12 - torch.arange(24)[:, None]  # offset = token i - token j
    by_dy, by_dx = bias[0], bias[1].T  # head 0 holds the row offset, head 1 the column offset
    for b in (by_dy, by_dx):
        assert b[12, 12].abs() < 1e-5  # offset 0 keeps its value
        assert torch.allclose(b, b[:, :1].expand(24, 24), atol=1e-5)  # constant along the other axis
        interior = slice(2, 23)  # |offset| <= 10: away from the edges of the table
        stretched = (dy * 13 / 47).expand(24, 24)
        assert (b - stretched)[interior].abs().max() < 0.06  # Keys' a=-0.75 bicubic: nearly linear
        assert (b[interior][:-1, 0] > b[interior][1:, 0]).all()  # monotonic: rows are not flipped


def test_classifier_checkpoint_into_window_24_model(xxtiny):
    """Every table resized, and the stage-3 (stride 32) features at 224x224 stay correlated with the native
    model's. Measured with these synthetic weights: cosine similarity 0.51, relative L2 difference 0.88 (windows
    of 24 pad the 56x56 stage-0 map to 72x72 and the 7x7 stage-3 map to 24x24, without a mask, as the
    reference does: at 224 this is a different function); unrelated weights give ~0."""
    sd, x, _ = xxtiny
    x = x[:1]
    dense = gpvit.create_model('gc_vit_xxtiny', checkpoint={'state_dict': sd}, features_only=True,
                               window_size=24).eval().model
    tables = {k: v for k, v in sd.items() if k.endswith('relative_position_bias_table')}
    assert len(tables) == 12
    for key, table in tables.items():
        new = dense.get_parameter(re.sub(r'levels\.(\d+)\.blocks\.(\d+)\.attn\.', r'stages.\1.blocks.\2.attn.rel_pos.', key))
        assert torch.equal(new, resize_rel_pos_bias_table_simple(table, (24, 24), (47 * 47, table.shape[1])))
    native = gpvit.create_model('gc_vit_xxtiny', checkpoint={'state_dict': sd}).eval()
    control = timm.create_model('gc_vit_xxtiny', window_size=24).eval()
    with torch.no_grad():
        ref, out, unrelated = (m.forward_intermediates(x, indices=[3], intermediates_only=True)[0]
                               for m in (native, dense, control))
    cos = F.cosine_similarity(out.flatten(1), ref.flatten(1)).mean()
    rel = (out - ref).norm() / ref.norm()
    assert cos > 0.45 and rel < 0.95, (cos, rel)
    assert F.cosine_similarity(unrelated.flatten(1), ref.flatten(1)).mean().abs() < 0.1


def test_dense_model_with_classifier_windows_is_exact(xxtiny):
    sd, x, logits = xxtiny
    backbone = gpvit.create_model('gc_vit_xxtiny', checkpoint={'state_dict': sd}, features_only=True).eval()
    native = gpvit.create_model('gc_vit_xxtiny', checkpoint={'state_dict': sd}).eval()
    with torch.no_grad():
        feats = backbone.model.forward_intermediates(x, intermediates_only=True)
        ref = native.forward_intermediates(x, intermediates_only=True)
    assert all(torch.equal(a, b) for a, b in zip(feats, ref))


def test_mmdet_checkpoint_backbone(xxtiny):
    """The reference detection backbone inside an mmdet checkpoint: NVlabs keys under ``backbone.``, tables
    resized to windows of 24, per-level norms ``norm0..3``, no final norm or head; the detector's parts set aside."""
    sd, x, _ = xxtiny
    det = {}
    for k, v in sd.items():
        if k.startswith(('norm.', 'head.')):
            continue
        if k.endswith('relative_position_bias_table'):
            v = resize_rel_pos_bias_table_simple(v, (24, 24), (47 * 47, v.shape[1]))
        det[f'backbone.{k}'] = v
    for i in range(4):
        det[f'backbone.norm{i}.weight'] = 1 + torch.rand(64 * 2 ** i)
        det[f'backbone.norm{i}.bias'] = torch.rand(64 * 2 ** i)
    det['neck.lateral_convs.0.conv.weight'] = torch.zeros(256, 64, 1, 1)
    det['roi_head.bbox_head.fc_cls.weight'] = torch.zeros(81, 1024)
    _, set_aside = to_project_layout(det)
    assert set_aside == ['neck.lateral_convs.0.conv.weight', 'roi_head.bbox_head.fc_cls.weight']
    assert gpvit.identify(det)[:2] == ('gc_vit_xxtiny', dict(num_classes=0, out_norm_indices=(0, 1, 2, 3),
                                                             window_size=(24, 24, 24, 24)))
    backbone = gpvit.create_model('gc_vit_xxtiny', checkpoint={'state_dict': det}, features_only=True, window_size=24)
    model = backbone.model
    assert torch.equal(model.out_norms['2'].bias, det['backbone.norm2.bias'])
    # The same as loading the classifier checkpoint (tables resized on the way), apart from the new norms.
    from_cls = gpvit.create_model('gc_vit_xxtiny', checkpoint=sd, features_only=True, window_size=24)
    own = from_cls.model.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in model.state_dict().items() if not k.startswith('out_norms.'))


# ----------------------------------------------------------------------------------------------------------
# Input errors
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('shape, message', BAD_INPUTS + [((1, 3, 224, 20), 'at least 32x32')])
def test_bad_input_raises_value_error(xxtiny_model, shape, message):
    assert_bad_input_raises(xxtiny_model, shape, message)


def test_input_dtype_is_checked(xxtiny_model):
    assert_input_dtype_checked(xxtiny_model)


def test_bad_constructor_values():
    with pytest.raises(ValueError, match='global_pool'):
        gpvit.create_model('gc_vit_xxtiny', global_pool='max')
    with pytest.raises(ValueError, match='window_size'):
        gpvit.create_model('gc_vit_xxtiny', window_size=(7, 7, 14))
    with pytest.raises(ValueError, match='4 stages'):
        GCViT(depths=(2, 2, 6, 2), num_heads=(2, 4, 8))
    with pytest.raises(ValueError, match='output_fmt'):
        GCViT(depths=(1, 1, 1, 1)).forward_intermediates(torch.randn(1, 3, 64, 64), output_fmt='NLC')


# ----------------------------------------------------------------------------------------------------------
# timm backbone API
# ----------------------------------------------------------------------------------------------------------

def test_registered_in_timm_next_to_timms_own():
    assert set(VARIANTS) <= set(timm.list_models('gc_vit_*'))
    assert gpvit.list_models('gc_vit_*') == sorted(VARIANTS)
    with torch.device('meta'):
        assert type(timm.create_model('gcvit_xxtiny')).__name__ == 'GlobalContextVit'  # timm's, untouched
        model = timm.create_model('gc_vit_xtiny', num_classes=10)
    assert isinstance(model, GCViT) and model.num_classes == 10
    for variant in VARIANTS:
        cfg = timm.models.get_pretrained_cfg(variant)
        assert cfg.crop_pct == CROP_PCT.get(variant, 1.0) and cfg.interpolation == 'bicubic'
        assert cfg.crop_mode == ('squash' if RESOLUTION[variant] > 224 else 'center')
        assert cfg.input_size == (3, RESOLUTION[variant], RESOLUTION[variant])
        assert cfg.license == 'cc-by-nc-sa-4.0' and cfg.first_conv == 'stem.conv1' and cfg.classifier == 'head'


def test_forward_intermediates_and_feature_info(xxtiny_model):
    model = copy.deepcopy(xxtiny_model)
    x = torch.randn(1, 3, 96, 128)
    final, inter = assert_intermediates_match_feature_info(model, x, atol=1e-5)
    assert len(inter) == 4
    with torch.no_grad():
        normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True, output_fmt='NHWC')
        assert torch.allclose(normed[0], final.permute(0, 2, 3, 1), atol=1e-5)
    model.set_grad_checkpointing(True)
    final_ckpt, _ = model.forward_intermediates(x)
    assert torch.allclose(final_ckpt, final, atol=1e-5)


def test_features_only_matches_feature_info():
    backbone = gpvit.create_model('gc_vit_xxtiny', features_only=True, out_indices=(1, 3)).eval()
    assert backbone.feature_info.channels() == [128, 512] and backbone.feature_info.reduction() == [8, 32]
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 128, 8, 12), (1, 512, 2, 3)]
    assert sorted(backbone.model.out_norms) == ['1', '3']


def test_grad_checkpointing_gives_same_gradients():
    model = gpvit.create_model('gc_vit_xxtiny', num_classes=3, drop_path_rate=0.)
    assert_checkpointing_keeps_gradients(model, torch.randn(2, 3, 64, 64))


def test_backward_reaches_every_parameter():
    model = gpvit.create_model('gc_vit_xtiny', num_classes=4)  # has layer-scale-free blocks of every kind
    assert_backward_reaches_every_parameter(model, torch.randn(2, 3, 64, 80))


def test_reset_classifier(xxtiny_model):
    assert_reset_classifier(copy.deepcopy(xxtiny_model), torch.randn(1, 3, 64, 64), (512, 2, 2))


def test_no_weight_decay_and_group_matcher():
    with torch.device('meta'):
        model = timm.create_model('gc_vit_xxtiny')
    nwd = model.no_weight_decay()
    assert len(nwd) == 12 and all(n.endswith('attn.rel_pos.relative_position_bias_table') for n in nwd)
    groups = list(group_parameters(model, model.group_matcher()).values())
    assert len(groups) == 1 + 12 + 1  # stem, 12 blocks (a stage's downsample and query go with its first), head
    assert 'stem.conv1.weight' in groups[0] and 'head.weight' in groups[-1] and 'norm.weight' in groups[-2]
    assert 'stages.1.downsample.reduction.weight' in groups[3] and 'stages.1.blocks.0.attn.qkv.weight' in groups[3]
    coarse = list(group_parameters(model, model.group_matcher(coarse=True)).values())
    assert len(coarse) == 1 + 4 + 1  # stem, stages, then the final norm and the head


def test_bf16_autocast_cpu(xxtiny_model):
    assert_bf16_autocast_close(xxtiny_model, torch.randn(1, 3, 96, 96))


# ----------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------

def test_nvlabs_file_with_ema_and_training_state(xxtiny, tmp_path):
    """A CheckpointSaver file: state_dict + state_dict_ema, optimizer, pickled args, module. prefixes."""
    sd, x, logits = xxtiny
    other = {k: v + 0.01 * torch.randn_like(v) for k, v in sd.items()}
    ckpt = {'epoch': 309, 'arch': 'gc_vit_xxtiny', 'args': argparse.Namespace(lr=5e-3, model_ema=True),
            'state_dict': {f'module.{k}': v for k, v in _with_index_buffers(other).items()},
            'state_dict_ema': _with_index_buffers(sd), 'optimizer': {'state': {}, 'param_groups': []}}
    path = tmp_path / 'gcvit_1k_xxtiny.pth.tar'
    torch.save(ckpt, path)
    ema = gpvit.create_model('gc_vit_xxtiny', checkpoint=path, use_ema=True)
    assert (_logits(ema, x) - logits).abs().max() <= 1e-4
    plain = gpvit.create_model('gc_vit_xxtiny', checkpoint=path)
    expected = gpvit.load_checkpoint(_empty('gc_vit_xxtiny'), other).state_dict()
    assert _same_weights(plain, expected) and not _same_weights(ema, expected)
    with pytest.raises(CheckpointError, match='no EMA'):
        gpvit.create_model('gc_vit_xxtiny', checkpoint={'state_dict': sd}, use_ema=True)
    # pretrained=True from a downloaded release file reads the plain weights (tests/test_hub.py); timm's own
    # file loader (pretrained_cfg file=) prefers the EMA weights, timm's convention, and our filter converts them.
    model = timm.create_model('gc_vit_xxtiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert _same_weights(model, ema.state_dict())


def test_timm_and_project_layouts_round_trip(xxtiny):
    sd, x, logits = xxtiny
    model = gpvit.create_model('gc_vit_xxtiny', checkpoint=sd)
    own = model.state_dict()
    timm_sd = to_timm_layout(own)
    assert 'stages.3.norm.weight' in timm_sd and 'head.fc.weight' in timm_sd
    assert timm_sd['stages.0.global_block.blocks.conv3.se.fc1.weight'].shape == (16, 64, 1, 1)
    timm.create_model('gcvit_xxtiny').load_state_dict(timm_sd)  # strict
    back, set_aside = to_project_layout(timm_sd)
    assert set_aside == [] and back.keys() == own.keys() and all(torch.equal(back[k], own[k]) for k in own)
    for ckpt in (timm_sd, own, {f'module.{k}': v for k, v in own.items()}):
        assert _same_weights(gpvit.load_checkpoint(_empty('gc_vit_xxtiny'), ckpt), own)
    assert (_logits(model, x) - logits).abs().max() <= 1e-4


def test_identify_and_head_size(xxtiny):
    sd, x, _ = xxtiny
    name, kwargs, _ = gpvit.identify(sd)
    assert (name, kwargs) == ('gc_vit_xxtiny', dict(num_classes=1000))
    sd10 = dict(sd, **{'head.weight': torch.randn(10, 512), 'head.bias': torch.zeros(10)})
    assert gpvit.create_model('gc_vit_xxtiny', checkpoint=sd10).num_classes == 10


def test_wrong_variant_names_the_lookalike(xxtiny):
    sd, _, _ = xxtiny
    with pytest.raises(CheckpointError, match='looks like gc_vit_xxtiny'):
        gpvit.create_model('gc_vit_xtiny', checkpoint={'state_dict': sd})
    with pytest.raises(CheckpointError, match='not a GC ViT checkpoint'):
        gpvit.load_checkpoint(timm.create_model('gc_vit_xxtiny'), {'conv.weight': torch.zeros(1)})
    broken = {k: v for k, v in sd.items() if not k.startswith('levels.2.blocks.1.')}
    with pytest.raises(CheckpointError, match='missing keys'):
        gpvit.create_model('gc_vit_xxtiny', checkpoint=broken)
    extra = dict(sd, **{'levels.0.blocks.0.attn.qkv.extra': torch.zeros(1)})
    with pytest.raises(CheckpointError, match='unexpected keys'):
        gpvit.create_model('gc_vit_xxtiny', checkpoint=extra)


def test_head_mismatch_keeps_initialised_head(xxtiny, caplog):
    sd, x, _ = xxtiny
    model = gpvit.create_model('gc_vit_xxtiny', checkpoint=sd, num_classes=10)
    assert model.head.weight.shape == (10, 512)
    assert 'left as initialised' in caplog.text and 'head.weight' in caplog.text
