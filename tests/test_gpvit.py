"""GPViT: exactness against the reference implementation, the timm backbone API, input sizes, errors."""
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from backbonekit import (BAD_INPUTS, assert_backward_reaches_every_parameter, assert_bad_input_raises,
                         assert_bf16_autocast_close, assert_checkpointing_keeps_gradients,
                         assert_input_dtype_checked, assert_intermediates_match_feature_info,
                         assert_reset_classifier)
from fill import fill, load_manifest
from timm.layers import DropPath
from timm.models import group_parameters

import gpvit
from gpvit.models.gpvit import GPBlock, LePEAttention, LePEBlock
from gpvit.models.layers import DropPathAdd, attention, split_heads
from gpvit.tools.flops import count_flops

VARIANTS = ['gpvit_l1', 'gpvit_l2', 'gpvit_l3', 'gpvit_l4']
PARAMS = {'gpvit_l1': 9_589_848, 'gpvit_l2': 24_162_680, 'gpvit_l3': 36_654_056, 'gpvit_l4': 75_484_456}
GFLOPS_224 = {'gpvit_l1': 12.19, 'gpvit_l2': 31.30, 'gpvit_l3': 46.87, 'gpvit_l4': 96.30}
WIDTH = {'gpvit_l1': 216, 'gpvit_l2': 348, 'gpvit_l3': 432, 'gpvit_l4': 624}


def _golden(golden_dir, variant):
    return torch.load(golden_dir / f'{variant}_seed0.pt')


def _reference_sd(golden_dir, variant, kind='cls'):
    return fill(load_manifest(golden_dir / f'{variant}_{kind}_manifest.json'), seed=0)


# ----------------------------------------------------------------------------------------------------------
# Exactness
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('variant', VARIANTS)
def test_golden_classifier(golden_dir, variant):
    """Reference release format ({'meta', 'state_dict'}) -> logits at 224 and at 256x320 (pos-embed resized)."""
    ref = _golden(golden_dir, variant)
    model = gpvit.create_model(variant, checkpoint={'meta': {'epoch': 300}, 'state_dict': _reference_sd(golden_dir, variant)})
    model.eval()
    with torch.no_grad():
        assert (model(ref['input0']) - ref['logits0']).abs().max() <= 1e-4
        assert (model(ref['input1']) - ref['logits1']).abs().max() <= 1e-4


@pytest.mark.parametrize('variant', VARIANTS)
def test_golden_segmentation_features(golden_dir, variant):
    """Backbone of a reference segmentor checkpoint -> the four normed stride-8 maps at 128x192."""
    ref = _golden(golden_dir, variant)
    sd = {f'backbone.{k[len("backbone."):]}': v for k, v in _reference_sd(golden_dir, variant, 'seg').items()}
    sd['decode_head.conv_seg.weight'] = torch.zeros(150, 512, 1, 1)  # a segmentor's head is set aside
    backbone = gpvit.create_model(variant, checkpoint={'state_dict': sd}, features_only=True,
                                  out_indices=(2, 5, 8, 11)).eval()
    with torch.no_grad():
        feats = backbone(ref['seg_input'])
    assert len(feats) == 4
    for ours, theirs in zip(feats, ref['seg_features']):
        assert ours.shape == theirs.shape == (1, WIDTH[variant], 16, 24)
        assert (ours - theirs).abs().max() <= 1e-4


@pytest.mark.parametrize('variant', VARIANTS)
def test_param_count_and_flops(variant):
    model = timm.create_model(variant)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[variant]
    gflops = count_flops(model, (1, 3, 224, 224)) / 1e9
    assert abs(gflops - GFLOPS_224[variant]) / GFLOPS_224[variant] < 0.01


def _naive_stripe_attention(attn: LePEAttention, x: torch.Tensor) -> torch.Tensor:
    """Direct per-stripe CSWin computation: stripes tile the map, the last one may be narrower."""
    B, H, W, C = x.shape
    D, heads, sw = C // 2, attn.num_heads // 2, attn.stripe_width
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    out = x.new_zeros(B, H, W, C)
    for branch, vertical in ((0, True), (1, False)):
        ch = slice(branch * D, (branch + 1) * D)
        starts = range(0, W if vertical else H, sw)
        for s in starts:
            rows = slice(0, H) if vertical else slice(s, min(s + sw, H))
            cols = slice(s, min(s + sw, W)) if vertical else slice(0, W)
            qs, ks, vs = (t[:, rows, cols, ch] for t in (q, k, v))
            h, w = qs.shape[1:3]
            lepe = attn.lepe[branch](vs.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # stripe as its own image
            qh, kh, vh = (t.reshape(B, h * w, heads, D // heads).transpose(1, 2) for t in (qs, ks, vs))
            a = (qh @ kh.transpose(-2, -1) * (D // heads) ** -0.5).softmax(-1) @ vh
            out[:, rows, cols, ch] = a.transpose(1, 2).reshape(B, h, w, D) + lepe
    return attn.proj(out)


@pytest.mark.parametrize('size', [(6, 8), (7, 8), (6, 9), (5, 7)])
def test_stripe_attention_matches_direct_computation(size):
    """Even grids are the reference's tiling; odd sides are a tiling whose last stripe is one token wide."""
    attn = LePEAttention(48, num_heads=6, stripe_width=2).eval()
    x = torch.randn(2, *size, 48)
    with torch.no_grad():
        assert (attn(x) - _naive_stripe_attention(attn, x)).abs().max() < 1e-5


@pytest.mark.parametrize('p', [0., 0.4, 1.])
def test_drop_path_add_is_the_residual_add_of_timms_drop_path(p):
    """``DropPathAdd(p)(x, y)`` == ``x + DropPath(p)(y)``: same samples dropped under the same seed, same
    output and gradients (float64); the plain sum in eval mode. Shared by both families' blocks."""
    x = torch.randn(16, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(16, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(16, 5, 4, 3, dtype=torch.float64)
    torch.manual_seed(3)
    out = DropPathAdd(p).train()(x, y)
    gx, gy = torch.autograd.grad(out, (x, y), g)
    torch.manual_seed(3)
    ref = x + DropPath(p).train()(y)
    rx, ry = torch.autograd.grad(ref, (x, y), g)
    torch.testing.assert_close(out, ref, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(gx, rx, rtol=0, atol=0)
    torch.testing.assert_close(gy, ry, rtol=1e-15, atol=1e-15)
    kept = (out - x).flatten(1).abs().amax(1) > 0
    if p == 0.4:  # 16 samples at this seed: some of each, the kept ones scaled by 1 / 0.6
        assert 0 < int(kept.sum()) < 16
        torch.testing.assert_close((out - x)[kept], y[kept] / 0.6)
    assert int(kept.sum()) == {0.: 16, 1.: 0}.get(p, int(kept.sum()))
    assert torch.equal(DropPathAdd(p).eval()(x, y), x + y)
    # with a layer scale (C,) in the same pass: x + DropPath(y * gamma), gamma's gradient included
    gamma = torch.randn(3, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(3)
    out = DropPathAdd(p).train()(x, y, gamma)
    grads = torch.autograd.grad(out, (x, y, gamma), g)
    torch.manual_seed(3)
    ref = x + DropPath(p).train()(y * gamma)
    for a, b in zip((out,) + grads, (ref,) + torch.autograd.grad(ref, (x, y, gamma), g)):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(DropPathAdd(p).eval()(x, y, gamma), x + y * gamma, rtol=1e-15, atol=1e-15)
    with pytest.raises(ValueError, match=r'drop_prob must lie in \[0, 1\], got 1.5'):
        DropPathAdd(1.5)


@pytest.mark.parametrize('size', [(6, 8), (7, 9)])
def test_stripe_attention_gradients_match_direct_computation(size):
    """Training path in float64: the per-branch qkv GEMMs, unbind and concatenation give the direct computation's
    output and its gradients for the input and every parameter (LePE biases made non-zero)."""
    torch.manual_seed(0)
    attn = LePEAttention(48, num_heads=6, stripe_width=2).double().train()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(2, *size, 48, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, *size, 48, dtype=torch.float64)
    inputs = [x] + list(attn.parameters())
    ours = torch.autograd.grad(attn(x), inputs, grad)
    direct = torch.autograd.grad(_naive_stripe_attention(attn, x), inputs, grad)
    assert torch.allclose(attn(x), _naive_stripe_attention(attn, x), rtol=0, atol=1e-12)
    for name, a, b in zip(['input'] + [n for n, _ in attn.named_parameters()], ours, direct):
        assert torch.allclose(a, b, rtol=0, atol=1e-11), name


def test_horizontal_lepe_on_transposed_stripes_is_the_conv_of_the_stripes():
    """With a weight gradient on the CPU the horizontal LePE runs on the transposed stripes with the kernel
    transposed: the conv of the (sw, Wp) stripes' output and its input / weight / bias gradients (float64; V a
    strided view of qkv, as in the block; a kernel without symmetry). Inference convolves the view itself."""
    torch.manual_seed(0)
    attn = LePEAttention(24, num_heads=4, stripe_width=2).double().train()
    conv = attn.lepe[1]
    assert not torch.allclose(conv.weight, conv.weight.transpose(-2, -1))
    qkv = torch.randn(6, 2, 9, 3, 12, dtype=torch.float64, requires_grad=True)
    v = qkv.unbind(3)[2]  # (N, sw, Wp, D)
    grad = torch.randn(6, 2, 9, 12, dtype=torch.float64)
    inputs = [qkv, conv.weight, conv.bias]
    ours = attn._lepe_rows(v)
    ref = conv(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-13)
    for a, b in zip(torch.autograd.grad(ours, inputs, grad), torch.autograd.grad(ref, inputs, grad)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    with torch.no_grad():
        assert torch.equal(attn._lepe_rows(v), conv(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('masked', [False, True])
def test_half_precision_attention_trains_in_float32_on_cpu(dtype, masked):
    """Under autograd on the CPU, half-precision attention is SDPA on float32 copies (its half-precision backward
    is several times slower there), cast back: the same output and gradients bit for bit, inside bf16 autocast
    too; inference keeps the half-precision kernel."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(4, 10, 24).to(dtype).requires_grad_() for _ in range(3))
    mask = (torch.rand(4, 1, 1, 10) > 0.3) if masked else None
    grad = torch.randn(4, 10, 24).to(dtype)

    def split(t, dt):
        return split_heads(t.to(dt), 3)

    ours = attention(q, k, v, 3, attn_mask=mask)
    ref = F.scaled_dot_product_attention(split(q, torch.float32), split(k, torch.float32), split(v, torch.float32),
                                         attn_mask=mask).to(dtype).transpose(1, 2).flatten(2)
    assert ours.dtype == dtype and torch.equal(ours, ref)
    for a, b in zip(torch.autograd.grad(ours, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        assert a.dtype == dtype and torch.equal(a, b)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch.equal(attention(q, k, v, 3, attn_mask=mask), ours)
    with torch.no_grad():
        half = F.scaled_dot_product_attention(split(q, dtype), split(k, dtype), split(v, dtype), attn_mask=mask)
        assert torch.equal(attention(q, k, v, 3, attn_mask=mask), half.transpose(1, 2).flatten(2))


# ----------------------------------------------------------------------------------------------------------
# Input sizes and errors
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('size', [(32, 32), (100, 100), (200, 296), (96, 168), (64, 250)])
def test_any_input_size(size):
    model = gpvit.create_model('gpvit_mini', num_classes=5).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, *size))
        logits = model.forward_head(feats)
    assert feats.shape == (2, 96, math.ceil(size[0] / 8), math.ceil(size[1] / 8))
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()


def test_padding_rule_is_local():
    """A batch does not mix images, and an odd-size image gives the same output alone or in a batch."""
    model = gpvit.create_model('gpvit_mini').eval()
    x = torch.randn(3, 3, 72, 88)  # 9 x 11 tokens: both sides odd
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(3)])
    assert (batched - single).abs().max() < 1e-5


@pytest.mark.parametrize('shape, message', BAD_INPUTS + [((1, 3, 16, 224), 'at least 32x32')])
def test_bad_input_raises_value_error(shape, message):
    assert_bad_input_raises(gpvit.create_model('gpvit_mini').eval(), shape, message)


def test_input_dtype_is_checked():
    assert_input_dtype_checked(gpvit.create_model('gpvit_mini').eval())


def test_bad_constructor_values():
    with pytest.raises(ValueError, match='global_pool'):
        gpvit.create_model('gpvit_mini', global_pool='max')
    with pytest.raises(ValueError, match='group_layers'):
        gpvit.create_model('gpvit_mini', group_layers=((7, 16),))


# ----------------------------------------------------------------------------------------------------------
# timm backbone API
# ----------------------------------------------------------------------------------------------------------

def test_registered_in_timm():
    assert set(VARIANTS) <= set(timm.list_models('gpvit_*'))
    model = timm.create_model('gpvit_l1', num_classes=10)
    assert isinstance(model, gpvit.GPViT) and model.num_classes == 10
    cfg = model.pretrained_cfg
    assert cfg['input_size'] == (3, 224, 224) and cfg['crop_pct'] == 0.875 and cfg['interpolation'] == 'bicubic'
    assert cfg['mean'] == (0.485, 0.456, 0.406) and cfg['license'] == 'apache-2.0'
    assert gpvit.list_models('gpvit_l*') == VARIANTS


def test_reference_quirks():
    model = timm.create_model('gpvit_l1')
    assert isinstance(model.attn_pool, gpvit.models.gpvit.GroupPool) and (model.attn_pool.query == 0).all()
    assert timm.create_model('gpvit_l3').attn_pool is None
    kinds = [type(b).__name__ for b in model.blocks]
    assert kinds == ['LePEBlock', 'GPBlock', 'LePEBlock', 'LePEBlock', 'GPBlock', 'LePEBlock', 'LePEBlock',
                     'GPBlock', 'LePEBlock', 'LePEBlock', 'GPBlock', 'LePEBlock']
    assert [model.blocks[i].group_token.shape[1] for i in (1, 4, 7, 10)] == [64, 32, 32, 16]
    assert model.blocks[0].norm1.eps == 1e-6 and model.blocks[1].norm2.eps == 1e-5 and model.norm.eps == 1e-6
    assert model.blocks[0].dw.bias is None
    # No residual around a GP block and BN + ReLU at its end: its output is non-negative.
    with torch.no_grad():
        assert (model.blocks[1](torch.randn(1, 4, 4, 216)) >= 0).all()
    dpr = [b.drop_path2.drop_prob for b in model.blocks]
    assert dpr[0] == 0 and abs(dpr[-1] - 0.2) < 1e-6


def test_forward_intermediates_and_feature_info():
    model = gpvit.create_model('gpvit_mini').eval()
    x = torch.randn(2, 3, 64, 96)
    final, inter = assert_intermediates_match_feature_info(model, x, atol=1e-6)
    assert len(inter) == len(model.blocks)
    with torch.no_grad():
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True, output_fmt='NHWC')
        assert [f.shape for f in last2] == [(2, 8, 12, 96)] * 2
        assert torch.equal(last2[1], inter[-1].permute(0, 2, 3, 1))
    final_autograd, _ = model.forward_intermediates(x)  # autograd runs the standard kernels, no fused paths
    assert torch.allclose(final_autograd, final, atol=1e-5)
    model.set_grad_checkpointing(True)
    final_ckpt, _ = model.forward_intermediates(x)
    assert torch.allclose(final_ckpt, final_autograd, atol=1e-6)


def test_grad_checkpointing_gives_same_gradients():
    assert_checkpointing_keeps_gradients(gpvit.create_model('gpvit_mini', num_classes=3), torch.randn(2, 3, 64, 64))


def test_backward_reaches_every_parameter():
    model = gpvit.create_model('gpvit_mini', num_classes=4, global_pool='group')
    with torch.no_grad():
        model.attn_pool.query.normal_()  # zero at init (as the reference), which blocks its norm's gradient
    # Provably inert (golden README): a key bias under softmax, a token-mixing bias ahead of a LayerNorm.
    inert = ('group.k.bias', 'ungroup.k.bias', 'mlp_tokens.fc2.bias')
    assert_backward_reaches_every_parameter(model, torch.randn(2, 3, 48, 64), inert)


def test_reset_classifier_and_pooling():
    model = gpvit.create_model('gpvit_l1').eval()
    x = torch.randn(1, 3, 64, 64)
    assert_reset_classifier(model, x, (216, 8, 8))
    assert model.attn_pool is None  # 'avg' dropped it
    model.reset_classifier(7, 'group')
    assert model.attn_pool is not None and model(x).shape == (1, 7)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (1, 216)


def test_no_weight_decay_and_group_matcher():
    model = timm.create_model('gpvit_l1')
    nwd = model.no_weight_decay()
    assert nwd == {'pos_embed', 'attn_pool.query'} | {f'blocks.{i}.group_token' for i in (1, 4, 7, 10)}
    groups = list(group_parameters(model, model.group_matcher()).values())
    assert len(groups) == 14  # stem, 12 blocks, then the final norm and the head
    assert 'pos_embed' in groups[0] and 'blocks.11.dw.weight' in groups[12] and 'head.weight' in groups[-1]


def test_features_only():
    backbone = gpvit.create_model('gpvit_mini', features_only=True, out_indices=(1, 3, 5))
    assert backbone.feature_info.channels() == [96, 96, 96] and backbone.feature_info.reduction() == [8, 8, 8]
    feats = backbone(torch.randn(1, 3, 64, 80))
    assert [f.shape for f in feats] == [(1, 96, 8, 10)] * 3
    model = backbone.model
    assert sorted(model.out_norms) == ['1', '3'] and isinstance(model.head, torch.nn.Identity)
    default = gpvit.create_model('gpvit_l1', features_only=True)
    assert default.feature_info.out_indices == (2, 5, 8, 11)


def test_bf16_autocast_cpu():
    assert_bf16_autocast_close(gpvit.create_model('gpvit_mini').eval(), torch.randn(2, 3, 64, 64))


def test_group_attention_map():
    model = gpvit.create_model('gpvit_mini').eval()
    block = model.blocks[1]
    assert isinstance(block, GPBlock) and isinstance(model.blocks[0], LePEBlock)
    w = block.group_attention(torch.randn(2, 6, 7, 96))
    assert w.shape == (2, 6, 16, 6, 7)
    assert torch.allclose(w.sum(dim=(-2, -1)), torch.ones(2, 6, 16))


def _ran_op(fn, name: str) -> bool:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return any(e.name == name for e in prof.events())


def test_fused_linear_paths_are_exact():
    """CPU float32 inference runs bias + GELU / bias + residual in the GEMM's epilogue; same numbers."""
    from gpvit.models.fused import FusedMlp, fused_linear
    fc = torch.nn.Linear(48, 192)
    x, res = torch.randn(2, 5, 7, 48), torch.randn(2, 5, 7, 192)
    with torch.no_grad():
        assert torch.allclose(fused_linear(x, fc), fc(x), atol=1e-5)
        assert torch.allclose(fused_linear(x, fc, gelu=True), F.gelu(fc(x)), atol=1e-5)
        assert torch.allclose(fused_linear(x, fc, residual=res), fc(x) + res, atol=1e-5)
        assert torch.allclose(fused_linear(x, fc, residual=res[:1]), fc(x) + res[:1], atol=1e-5)  # broadcast
        if torch.backends.mkldnn.is_available():
            assert _ran_op(lambda: fused_linear(x, fc, residual=res), 'mkldnn::_linear_pointwise')
    with pytest.raises(ValueError, match='cannot be combined'):
        fused_linear(x, fc, gelu=True, residual=res)
    mlp = FusedMlp(48, 192).eval()
    with torch.no_grad():
        reference = timm.layers.Mlp.forward(mlp, x)
        assert torch.allclose(mlp(x), reference, atol=1e-5)
        assert torch.allclose(mlp(x, residual=x), reference + x, atol=1e-5)
        if torch.backends.mkldnn.is_available():
            assert _ran_op(lambda: mlp(x), 'mkldnn::_linear_pointwise')
    out = mlp(x.requires_grad_())  # with autograd: timm's path, with gradients
    out.sum().backward()
    assert x.grad is not None and mlp.fc1.weight.grad is not None
    assert not _ran_op(lambda: mlp(x), 'mkldnn::_linear_pointwise')


def test_inference_fast_paths_match_autograd_paths():
    """The whole model: no-grad inference (fused GEMMs, zero-pad skip) equals the standard kernels that
    autograd runs."""
    model = gpvit.create_model('gpvit_mini', num_classes=5).eval()
    x = torch.randn(2, 3, 72, 88)
    with torch.no_grad():
        fast = model(x)
    assert torch.allclose(model(x), fast, atol=1e-5)


def test_fused_variants_are_not_selected_without_avx512(monkeypatch):
    """With AVX2 alone oneDNN's float32 GEMMs lose to ATen's: eval() keeps the plain blocks there, and
    use_fused still swaps the variants in on demand."""
    from gpvit.models import fused
    monkeypatch.setattr(fused._OneDNN, 'fast_cpu', False)
    model = gpvit.create_model('gpvit_mini', num_classes=5).eval()
    assert {type(b) for b in model.blocks} == {LePEBlock, GPBlock}
    assert type(fused.use_fused(model).blocks[0]) is fused.FusedLePEBlock
    monkeypatch.setattr(fused._OneDNN, 'fast_cpu', True)
    assert type(model.train().eval().blocks[0]) is fused.FusedLePEBlock
    cpuinfo = Path('/proc/cpuinfo')
    if cpuinfo.exists():  # the gate reads the CPU's own flags
        assert fused._avx512() == ('avx512f' in cpuinfo.read_text().split())


def test_fused_variants_are_selected_for_cpu_float32_eval(monkeypatch):
    """eval() on CPU float32 (with AVX-512) swaps the fused variants in, train() / other dtypes the plain blocks
    back; the state dict, hooks and outputs stay; FLOP counting and autograd in eval mode run the plain ops."""
    from torch.utils.flop_counter import FlopCounterMode

    from gpvit.models import fused
    monkeypatch.setattr(fused._OneDNN, 'fast_cpu', True)  # as on a CPU with AVX-512
    model = gpvit.create_model('gpvit_mini', num_classes=5)
    plain_types = [type(m) for m in model.modules()]
    assert fused.FusedLePEBlock not in plain_types and LePEBlock in plain_types
    keys = list(model.state_dict())
    calls = []
    model.blocks[0].mlp.register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        plain = model.eval().blocks[0].__class__.__name__, fused.use_fused(model, False)(x)
    assert plain[0] == 'FusedLePEBlock'
    model.eval()
    assert {type(b).__name__ for b in model.blocks} == {'FusedLePEBlock', 'FusedGPBlock'}
    assert type(model.blocks[1].mixer.mlp_tokens) is fused.FusedMlp and list(model.state_dict()) == keys
    with torch.no_grad():
        out = model(x)
        assert torch.allclose(out, plain[1], atol=1e-5)
        if torch.backends.mkldnn.is_available():
            assert _ran_op(lambda: model(x), 'mkldnn::_linear_pointwise')
        with FlopCounterMode(display=False):
            assert not _ran_op(lambda: model(x), 'mkldnn::_linear_pointwise')
    assert not _ran_op(lambda: model(x), 'mkldnn::_linear_pointwise')  # autograd on: the plain ops
    assert len(calls) == 5  # the hook stayed on the swapped module
    assert type(model.train().blocks[0]) is LePEBlock
    assert type(model.eval().double().blocks[0]) is LePEBlock
    assert type(model.float().blocks[0]) is fused.FusedLePEBlock
    fused.set_auto_fuse(False)  # models keep the blocks they have
    try:
        assert type(fused.use_fused(model, False).train().eval().blocks[0]) is LePEBlock
    finally:
        fused.set_auto_fuse(True)
