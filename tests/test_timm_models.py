"""timm's model contract (its ``tests/test_models.py``, timm 1.0.31) for every model this project registers.

The same checks as timm's, written for this project's models and parametrised over ``gpvit.list_models()``:
forward and backward, the default-cfg checks (standard and non-standard variants), the pretrained loader with
``in_chans != 3``, ``features_only`` and ``forward_intermediates``, the pruning contracts, ``head_hidden_size``
and concat pooling, ``reset_classifier``, TorchScript, FX tracing (torchvision's feature extraction with timm's
leaf modules and functions: forward, backward, scripted) and initialisation after ``to_empty``. Nothing is
fetched: "pretrained" weights are given as ``pretrained_cfg_overlay=dict(state_dict=...)``.

Which models. The structure checks run on every model: default cfgs, API contract, concat pooling, pretrained
loading (on the meta device: shapes, nothing allocated) and ``init_weights`` after ``to_empty`` (reduced widths,
as timm's own test). The checks that run real passes at timm's input sizes run on representative variants
(``COMPUTE``): ``gpvit_mini`` (average pool, 6 blocks), ``gpvit_l1`` (attention pool, 12 blocks) and
``gc_vit_xxtiny``; those that prune at every level (``PRUNE``, ~6 passes per level) on ``gpvit_mini`` and
``gc_vit_xxtiny``. The other variants of a family are the same code at other widths, depths and windows (layer
scale: the structure checks and ``test_load_pretrained_adapts_the_stem`` run ``gc_vit_small``); their passes
at timm's sizes cost seconds to minutes each on 2 cores (GPViT-L4 and the 90-200M parameter GC ViT B/L models
most), which would put the module far over its 4-minute budget. ``GPVIT_TIMM_TESTS=all`` runs every check on
every model (an hour or more on 2 cores).
"""
import copy
import fnmatch
import inspect
import math
import os

import pytest
import timm
import torch
from timm import set_scriptable
from timm.layers import get_channel_dim, get_spatial_dim
from timm.models import FeatureInfo, get_notrace_functions, get_notrace_modules
from timm.models._features import FeatureGetterNet
from timm.models._manipulate import group_parameters, reinit_non_persistent_buffers
from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names

import gpvit

# Loading weights into meta-device models is a shape check; torch says each copy is a no-op.
pytestmark = pytest.mark.filterwarnings('ignore:.*copying from a non-meta parameter:UserWarning')

MODELS = gpvit.list_models()
FULL = os.environ.get('GPVIT_TIMM_TESTS') == 'all'
COMPUTE = MODELS if FULL else ['gpvit_mini', 'gpvit_l1', 'gc_vit_xxtiny']
PRUNE = MODELS if FULL else ['gpvit_mini', 'gc_vit_xxtiny']

# timm's input sizes (tests/test_models.py)
TARGET_FWD_SIZE = MAX_FWD_SIZE = 384
TARGET_BWD_SIZE = 128
MAX_BWD_SIZE = 320
MAX_FWD_OUT_SIZE = 448
TARGET_JIT_SIZE = 128
MAX_JIT_SIZE = 320
TARGET_FFEAT_SIZE = 96
MAX_FFEAT_SIZE = 256
TARGET_FWD_FX_SIZE = 128
TARGET_BWD_FX_SIZE = 128


def _input_size(model=None, model_name='', target=None):
    """The input size timm's tests use: the cfg's, each side capped at ``target`` (no fixed sizes here)."""
    cfg = model.pretrained_cfg if model is not None else timm.models.get_pretrained_cfg(model_name).to_dict()
    assert not cfg.get('fixed_input_size') and not cfg.get('min_input_size')
    input_size = cfg['input_size']
    if target and max(input_size) > target:
        input_size = tuple(min(x, target) for x in input_size)
    return input_size


def _meta_state_dict(model_name, **kwargs):
    """The model's state dict on the meta device: a stand-in checkpoint with the shapes only (nothing fetched,
    nothing allocated), for the loading checks on meta-device models."""
    with torch.device('meta'):
        return timm.create_model(model_name, **kwargs).state_dict()


def _fx_model(model, train=False):
    """torchvision's feature extractor returning the model's output, traced with timm's leaf modules and
    functions (as timm's ``_create_fx_model``)."""
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    train_return_nodes = [train_nodes[-1]]
    if train:  # the nodes that feed the graph's output
        graph = NodePathTracer(**tracer_kwargs).trace(model)
        nodes = list(reversed(graph.nodes))
        names = [n.name for n in nodes]
        train_return_nodes = [train_nodes[-names.index(n.name)] for n in nodes[0]._input_nodes.keys()]
    return create_feature_extractor(model, train_return_nodes=train_return_nodes, eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=tracer_kwargs)


def _small(model_name):
    """Reduced widths and depths of the model's family (its other settings kept: stem, pooling, windows, layer
    scale), for the checks that need a whole real model but not its size."""
    if model_name.startswith('gpvit_'):
        return dict(embed_dim=48, depth=3, num_heads=4, group_layers=((1, 8),), group_heads=4, stem_width=16)
    return dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2))


# ----------------------------------------------------------------------------------------------------------
# Forward and backward
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('model_name', COMPUTE)
def test_model_forward(model_name):
    """A forward pass at the cfg's size (timm caps it at 384), then the same with gradient checkpointing."""
    model = timm.create_model(model_name).eval()
    inputs = torch.randn(1, *_input_size(model, target=TARGET_FWD_SIZE))
    outputs = model(inputs)
    assert outputs.shape[0] == 1 and not torch.isnan(outputs).any()
    model.set_grad_checkpointing()
    torch.testing.assert_close(model(inputs), outputs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('model_name', COMPUTE)
def test_model_backward(model_name):
    """A training step at 128: every parameter gets a gradient."""
    input_size = _input_size(model_name=model_name, target=TARGET_BWD_SIZE)
    model = timm.create_model(model_name, num_classes=42).train()
    outputs = model(torch.randn(2, *input_size))
    outputs.mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert outputs.shape[-1] == 42 and not torch.isnan(outputs).any()


# ----------------------------------------------------------------------------------------------------------
# Default cfgs and the model API (meta device: no weights are allocated)
# ----------------------------------------------------------------------------------------------------------

def _check_api_contract(model, model_name):
    """What the optimizer factory and model creation rely on (timm's ``_assert_model_api_contract``)."""
    with pytest.raises(TypeError):
        timm.create_model(model_name, device='meta', not_a_model_arg=1)
    assert inspect.signature(model.reset_classifier).parameters['global_pool'].default is None
    param_names = [n for n, _ in model.named_parameters()]
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert len(set(groups.values())) > 1
    for pattern in model.no_weight_decay():
        assert any(fnmatch.fnmatch(n, pattern) for n in param_names), pattern


def _check_reset_classifier_keeps_device_dtype(model):
    model.to(device='meta', dtype=torch.float64)
    training = model.training
    model.reset_classifier(0)
    model.reset_classifier(2)
    params = list(model.get_classifier().parameters())
    assert params and all(p.device.type == 'meta' and p.dtype == torch.float64 for p in params)
    assert all(m.training == training for m in model.modules())


def _check_factory_device_and_frozen(model_name, reset_pool=True):
    model = timm.create_model(model_name, device='meta', dtype=torch.float32)
    assert [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type != 'meta'] == []
    model.requires_grad_(False)
    model.reset_classifier(0)
    if reset_pool:
        model.reset_classifier(0, '')
    assert [n for n, p in model.named_parameters() if p.requires_grad] == []


def _create_meta(model_name, **kwargs):
    with torch.device('meta'):
        return timm.create_model(model_name, device='meta', dtype=torch.float32, **kwargs).eval()


@pytest.mark.parametrize('model_name', MODELS)
def test_model_default_cfgs(model_name):
    """timm's standard cfg checks: feature and head shapes match the cfg, the classifier and first conv exist,
    heads can be removed (pooled features) with the pooling (the map), by reset and at creation."""
    model = _create_meta(model_name)
    _check_api_contract(model, model_name)
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    state_dict = model.state_dict()
    cfg = model.default_cfg
    assert model.in_chans == cfg['input_size'][0]
    pool_size, input_size = cfg['pool_size'], cfg['input_size']
    spatial_axis, feat_axis = get_spatial_dim(model.output_fmt), get_channel_dim(model.output_fmt)
    if all(s <= MAX_FWD_OUT_SIZE for s in input_size):
        x = torch.randn(1, *input_size, device='meta')
        outputs = model.forward_features(x)
        outputs_pre = model.forward_head(outputs, pre_logits=True)
        assert tuple(outputs.shape[a] for a in spatial_axis) == tuple(pool_size)
        assert outputs.shape[feat_axis] == model.num_features
        assert outputs_pre.shape[1] == model.head_hidden_size
        model.to(torch.bfloat16)  # a dtype change after a forward: no stale caches, no upcast
        assert model(x.to(torch.bfloat16)).dtype == torch.bfloat16
        model.to(torch.float32)
        model.reset_classifier(0)
        assert model.num_classes == 0
        outputs = model(x)
        assert outputs.shape == outputs_pre.shape == (1, model.head_hidden_size)
        model.reset_classifier(0, '')
        outputs = model(x)
        assert outputs.ndim == 4 and tuple(outputs.shape[a] for a in spatial_axis) == tuple(pool_size)
        model = _create_meta(model_name, num_classes=0)
        assert model(x).shape == outputs_pre.shape
        model = timm.create_model(model_name, num_classes=0, global_pool='', device='meta', dtype=torch.float32)
        outputs = model.eval()(x)
        assert outputs.ndim == 4 and tuple(outputs.shape[a] for a in spatial_axis) == tuple(pool_size)
    assert cfg['classifier'] + '.weight' in state_dict
    assert cfg['first_conv'] + '.weight' in state_dict
    _check_reset_classifier_keeps_device_dtype(model)
    _check_factory_device_and_frozen(model_name)


@pytest.mark.parametrize('model_name', MODELS)
def test_model_default_cfgs_non_std(model_name):
    """timm's checks for non-standard models (its NON_STD_FILTERS hold timm's own ``gcvit*``): the shapes of
    ``forward_features`` / ``forward_head``, and of the pooled output without a classifier."""
    model = _create_meta(model_name)
    _check_api_contract(model, model_name)
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    assert model.in_chans == model.default_cfg['input_size'][0]
    input_size = _input_size(model)
    if max(input_size) > 320:
        _check_reset_classifier_keeps_device_dtype(model)
        pytest.skip('input size > 320 (timm skips the rest likewise)')
    x = torch.randn(1, *input_size, device='meta')
    outputs = model.forward_features(x)
    outputs_pre = model.forward_head(outputs, pre_logits=True)
    assert outputs.shape[1] == model.num_features and outputs_pre.shape[1] == model.head_hidden_size
    model.to(torch.bfloat16)
    assert model(x.to(torch.bfloat16)).dtype == torch.bfloat16
    model.to(torch.float32)
    model.reset_classifier(0)
    outputs = model(x)
    assert outputs.shape[1] == model.head_hidden_size and outputs.shape == outputs_pre.shape
    model = timm.create_model(model_name, num_classes=0, device='meta', dtype=torch.float32).eval()
    outputs = model(x)
    assert outputs.shape[1] == model.num_features == model.head_hidden_size
    _check_reset_classifier_keeps_device_dtype(model)
    _check_factory_device_and_frozen(model_name, reset_pool=False)


@pytest.mark.parametrize('model_name', MODELS)
def test_catavgmax_unsupported(model_name):
    """Concat pooling is rejected with an AssertionError (as timm's models do; it is also a ValueError, as the
    project's argument errors are), at creation and in ``reset_classifier``."""
    with pytest.raises(AssertionError, match='global_pool'):
        timm.create_model(model_name, global_pool='catavgmax', device='meta')
    model = _create_meta(model_name)
    with pytest.raises(AssertionError):
        model.reset_classifier(7, 'catavgmax')
    with pytest.raises(ValueError, match="got 'catavgmax'"):
        model.reset_classifier(7, 'catavgmax')


# ----------------------------------------------------------------------------------------------------------
# Pretrained loading (a stand-in state dict, nothing fetched)
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('model_name', MODELS)
def test_model_load_pretrained(model_name):
    """timm's ``test_model_load_pretrained``: 3-channel weights load into models with ``in_chans=1`` (5 classes and
    none); the checkpoint filter passes the stem through and timm's loader adapts it after the filter. Loaded
    into meta-device models (strict shape checks, no weights allocated); the values are checked below."""
    sd = _meta_state_dict(model_name)
    for num_classes in (5, 0):
        model = timm.create_model(model_name, pretrained=True, in_chans=1, num_classes=num_classes, device='meta',
                                  pretrained_cfg_overlay=dict(state_dict=sd))
        assert model.in_chans == 1 and model.num_classes == num_classes


@pytest.mark.parametrize('model_name', ['gpvit_l2', 'gc_vit_small'])
@pytest.mark.parametrize('in_chans', [1, 4])
def test_load_pretrained_adapts_the_stem(model_name, in_chans, tmp_path):
    """The stem adaptation of timm's loader (``adapt_input_conv``: summed for 1 channel, repeated and rescaled for
    4), through a state dict, a file and :func:`gpvit.load_checkpoint`; the rest of the weights load unchanged and
    the model runs on ``in_chans`` channels. (Reduced widths: the stem and the loading are the variant's.)"""
    from timm.models import adapt_input_conv
    kwargs = dict(_small(model_name), num_classes=10)
    source = timm.create_model(model_name, **kwargs).eval()
    sd = source.state_dict()
    first_conv = source.pretrained_cfg['first_conv'] + '.weight'
    expected = adapt_input_conv(in_chans, sd[first_conv])
    torch.save(sd, tmp_path / 'weights.pth')
    for overlay in (dict(state_dict=sd), dict(file=str(tmp_path / 'weights.pth'))):
        overlay['num_classes'] = 10  # the checkpoint's classifier is kept
        model = timm.create_model(model_name, pretrained=True, in_chans=in_chans, pretrained_cfg_overlay=overlay,
                                  **kwargs)
        own = model.state_dict()
        torch.testing.assert_close(own[first_conv], expected)
        assert all(torch.equal(own[k], v) for k, v in sd.items() if k != first_conv)
    direct = gpvit.load_checkpoint(timm.create_model(model_name, in_chans=in_chans, **kwargs), tmp_path / 'weights.pth')
    torch.testing.assert_close(direct.get_parameter(first_conv), expected)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, in_chans, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize('model_name', MODELS)
def test_model_features_pretrained(model_name):
    """Weights load when ``features_only=True`` (the out norms the classifier checkpoint lacks stay fresh)."""
    model = timm.create_model(model_name, pretrained=True, features_only=True, device='meta',
                              pretrained_cfg_overlay=dict(state_dict=_meta_state_dict(model_name)))
    assert isinstance(model, FeatureGetterNet)


@pytest.mark.parametrize('model_name', ['gpvit_mini', 'gc_vit_xxtiny'])
def test_headless_checkpoint_reload(model_name):
    """A checkpoint saved without the classifier reloads through the filter to the same function."""
    import importlib
    model = timm.create_model(model_name, num_classes=0).eval()
    filter_fn = importlib.import_module(type(model).__module__).checkpoint_filter_fn
    reloaded = timm.create_model(model_name, num_classes=0).eval()
    reloaded.load_state_dict(filter_fn(dict(sorted(model.state_dict().items())), reloaded))
    x = torch.randn(1, 3, *model.pretrained_cfg['input_size'][-2:])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x), rtol=0, atol=0)


def test_relpos_non_square_checkpoint_reload():
    """GC ViT at a non-square size (non-square windows and tables) reloads unchanged through the filter."""
    from gpvit.models.gcvit import checkpoint_filter_fn
    kwargs = dict(num_classes=5, img_size=(224, 288))
    model = timm.create_model('gc_vit_xxtiny', **kwargs).eval()
    assert model.window_size[0] == (7, 9)
    reloaded = timm.create_model('gc_vit_xxtiny', **kwargs).eval()
    reloaded.load_state_dict(checkpoint_filter_fn(model.state_dict(), reloaded))
    x = torch.randn(1, 3, 224, 288)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x))


# ----------------------------------------------------------------------------------------------------------
# Features: features_only, forward_intermediates, pruning
# ----------------------------------------------------------------------------------------------------------

def _check_feature_maps(outputs, channels, reductions, spatial_size, batch_size=1):
    assert len(outputs) == len(channels)
    for c, r, o in zip(channels, reductions, outputs):
        assert o.shape[0] == batch_size and o.shape[1] == c
        for side, s in zip(o.shape[-2:], spatial_size):
            assert s / (2 * r) < side <= math.ceil(s / r) + 1
        assert not torch.isnan(o).any()


@pytest.mark.parametrize('model_name', COMPUTE)
def test_model_forward_features(model_name):
    """``features_only=True`` (default levels, at least 3) at 96: channels and reductions as ``feature_info``.
    The models' default feature wrapper is timm's ``'getter'`` (over ``forward_intermediates``), so this is also
    timm's ``test_model_forward_intermediates_features``."""
    model = timm.create_model(model_name, features_only=True).eval()
    assert isinstance(model, FeatureGetterNet)
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3
    input_size = _input_size(model, target=TARGET_FFEAT_SIZE)
    _check_feature_maps(model(torch.randn(1, *input_size)), channels, reductions, input_size[-2:])


@pytest.mark.parametrize('model_name', COMPUTE)
def test_model_forward_intermediates(model_name):
    """``forward_intermediates`` at 96: one map per ``feature_info`` level, final features as
    ``forward_features``, and the same with gradient checkpointing."""
    model = timm.create_model(model_name).eval()
    feature_info = FeatureInfo(model.feature_info, len(model.feature_info))
    assert len(feature_info.channels()) >= 3
    input_size = _input_size(model, target=TARGET_FFEAT_SIZE)
    x = torch.randn(1, *input_size)
    output, intermediates = model.forward_intermediates(x, output_fmt='NCHW')
    _check_feature_maps(intermediates, feature_info.channels(), feature_info.reduction(), input_size[-2:])
    torch.testing.assert_close(output, model.forward_features(x), rtol=1e-5, atol=1e-8)
    model.set_grad_checkpointing()
    output3, _ = model.forward_intermediates(x, output_fmt='NCHW')
    torch.testing.assert_close(output, output3, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('model_name', PRUNE)
def test_prune_intermediate_layers_contract(model_name):
    """Pruned and stop-early taps equal the unpruned model's; pruning with the head kept keeps the output;
    without the norm the features end at the tap; a pruned model trains with every parameter used."""
    model = timm.create_model(model_name).eval()
    x = torch.randn(2, *_input_size(model, target=TARGET_FFEAT_SIZE))
    last = len(model.feature_info) - 1
    with torch.no_grad():
        expected = model(x)
        taps = model.forward_intermediates(x, intermediates_only=True)
        pruned = copy.deepcopy(model)
        pruned.prune_intermediate_layers([last], prune_head=False)
        torch.testing.assert_close(pruned(x), expected)
    for i in range(last + 1):
        with torch.no_grad():
            selected = model.forward_intermediates(x, indices=[i], stop_early=True, intermediates_only=True)
            torch.testing.assert_close(selected[0], taps[i])
            pruned = copy.deepcopy(model)
            take_indices = pruned.prune_intermediate_layers([i])
            selected = pruned.forward_intermediates(x, indices=take_indices, intermediates_only=True)
            torch.testing.assert_close(selected[0], taps[i])
            pruned = copy.deepcopy(model)
            take_indices = pruned.prune_intermediate_layers([i], prune_norm=True)
            features = pruned.forward_features(x)
            if i < last:
                torch.testing.assert_close(features, taps[i])
        pruned.train()
        selected = pruned.forward_intermediates(x, indices=take_indices, intermediates_only=True)
        sum(f.sum() for f in selected + [pruned.forward_features(x)]).backward()
        assert [n for n, p in pruned.named_parameters() if p.requires_grad and p.grad is None] == []


@pytest.mark.parametrize('model_name', PRUNE)
def test_prune_intermediate_layers_params_used(model_name):
    """Pruning as ``FeatureGetterNet`` does leaves no unused parameters (DDP), and an eval model pruned stays
    deterministic (no new module in train mode)."""
    model = timm.create_model(model_name, drop_rate=0.5)
    x = torch.randn(2, *_input_size(model, target=TARGET_FFEAT_SIZE))
    n = len(model.feature_info)
    for indices, prune_norm in (([0], False), ([n - 1], False), (list(range(n)), True)):
        pruned = copy.deepcopy(model).train()
        take_indices = pruned.prune_intermediate_layers(indices, prune_norm=prune_norm)
        features = pruned.forward_intermediates(x, indices=take_indices, norm=not prune_norm, intermediates_only=True)
        sum(f.sum() for f in features).backward()
        assert [n for n, p in pruned.named_parameters() if p.grad is None] == []
        pruned = copy.deepcopy(model).eval()
        pruned.prune_intermediate_layers(indices, prune_norm=prune_norm)
        with torch.no_grad():
            pruned.forward_intermediates(x, indices=take_indices)
            assert torch.equal(pruned(x), pruned(x))


@pytest.mark.parametrize('model_name', COMPUTE)
def test_head_hidden_size(model_name):
    """``head_hidden_size`` is the pre-logits width without a classifier, after ``reset_classifier`` and after
    pruning the last level with the norm (the width of the new last level)."""
    model = timm.create_model(model_name, num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)

    def check_width(num_classes):
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape[1] == model.head_hidden_size
        assert model(x).shape[1] == (num_classes or model.head_hidden_size)

    with torch.no_grad():
        check_width(0)
        for pool in ('avg', 'catavgmax'):
            try:
                model.reset_classifier(7, pool)
            except AssertionError:
                continue  # no concat pooling: test_catavgmax_unsupported
            check_width(7)
        index = len(model.feature_info) - 2
        tap_chs = model.feature_info[index]['num_chs']
        model.prune_intermediate_layers([index], prune_norm=True)
        model.reset_classifier(7, 'avg')
        check_width(7)
        assert model.head_hidden_size == tap_chs


@pytest.mark.parametrize('model_name', ['gpvit_l1', 'gpvit_mini'])
def test_reset_classifier_keeps_pool(model_name):
    """``reset_classifier(n)`` keeps the current pooling (GPViT's attention pool), another one changes it."""
    model = timm.create_model(model_name, global_pool='group').eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model.attn_pool.query.normal_()  # zero at init: the pool would start as the average
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(5)
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), expected)
        assert model(x).shape == (2, 5)
        model.reset_classifier(5, 'avg')
        assert not torch.allclose(model.forward_head(model.forward_features(x), pre_logits=True), expected)


@pytest.mark.parametrize('model_name', ['gpvit_mini', 'gc_vit_xxtiny'])
def test_features_only_grad_checkpointing_backward(model_name):
    """Dense-task backbones train with gradient checkpointing: the same gradients as without. (Reduced widths.)"""
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for grad_checkpointing in (False, True):
        torch.manual_seed(0)
        model = timm.create_model(model_name, features_only=True, drop_path_rate=0., **_small(model_name)).train()
        model.model.set_grad_checkpointing(grad_checkpointing)  # timm's FeatureGetterNet does not forward it
        sum(f.pow(2).mean() for f in model(x)).backward()
        grads.append([p.grad for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1])
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g1, g0)


# ----------------------------------------------------------------------------------------------------------
# TorchScript and FX
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('model_name', COMPUTE)
def test_model_forward_torchscript(model_name):
    """``torch.jit.script`` of the eval model (built under ``set_scriptable``) runs at 128 and gives the eager
    output; the input check still raises its one-line error."""
    input_size = _input_size(model_name=model_name, target=TARGET_JIT_SIZE)
    with set_scriptable(True):
        model = timm.create_model(model_name)
    model.eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, *input_size)
    with torch.no_grad():
        outputs = scripted(x)
        assert outputs.shape[0] == 1 and not torch.isnan(outputs).any()
        torch.testing.assert_close(outputs, model(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(Exception, match='input channels'):
        scripted(torch.randn(1, 1, 64, 64))


@pytest.mark.parametrize('model_name', COMPUTE)
def test_model_forward_fx(model_name):
    """FX symbolic tracing (torchvision's feature extraction, timm's leaf modules and functions) of the eval
    model: the traced module's output equals the model's at 128."""
    model = timm.create_model(model_name).eval()
    x = torch.randn(1, *_input_size(model, target=TARGET_FWD_FX_SIZE))
    with torch.inference_mode():
        outputs = model(x)
        fx_outputs = torch.cat(tuple(_fx_model(model)(x).values()))
    torch.testing.assert_close(fx_outputs, outputs, rtol=1e-4, atol=1e-5)
    assert not torch.isnan(outputs).any()


@pytest.mark.parametrize('model_name', COMPUTE)
def test_model_backward_fx(model_name):
    """The FX-traced training model: a backward pass reaches every parameter."""
    input_size = _input_size(model_name=model_name, target=TARGET_BWD_FX_SIZE)
    model = timm.create_model(model_name, num_classes=42).train()
    num_params = sum(p.numel() for p in model.parameters())
    model = _fx_model(model, train=True)
    outputs = torch.cat(tuple(model(torch.randn(2, *input_size)).values()))
    outputs.mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert sum(p.grad.numel() for p in model.parameters()) == num_params
    assert outputs.shape[-1] == 42 and not torch.isnan(outputs).any()


@pytest.mark.parametrize('model_name', COMPUTE)
def test_model_forward_fx_torchscript(model_name):
    """The FX-traced eval model, scripted, runs at 128."""
    input_size = _input_size(model_name=model_name, target=TARGET_JIT_SIZE)
    with set_scriptable(True):
        model = timm.create_model(model_name)
    model = torch.jit.script(_fx_model(model.eval()))
    with torch.inference_mode():
        outputs = torch.cat(tuple(model(torch.randn(1, *input_size)).values()))
    assert outputs.shape[0] == 1 and not torch.isnan(outputs).any()


# ----------------------------------------------------------------------------------------------------------
# Initialisation after to_empty
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('model_name', MODELS)
def test_model_init_weights_after_to_empty(model_name):
    """Built on the meta device in float64 and materialised with ``to_empty``, ``init_weights()`` initialises every
    parameter and buffer (all poisoned with NaN first), and the model runs. Reduced widths and depths of the
    model's family (as timm's test passes), the variant's other settings (windows, layer scale, pooling) kept."""
    model = timm.create_model(model_name, device='meta', dtype=torch.float64, num_classes=5, **_small(model_name))
    assert all(p.device.type == 'meta' and p.dtype == torch.float64 for p in model.parameters())
    model = model.to_empty(device='cpu').eval()
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.fill_(float('nan'))
    model.init_weights()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        assert torch.isfinite(t).all(), name
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 64, 64, dtype=torch.float64))).all()


@pytest.mark.parametrize('model_name', ['gpvit_mini', 'gc_vit_xxtiny'])
def test_reinit_non_persistent_buffers_after_to_empty(model_name):
    """A model materialised with ``to_empty`` gets its non-persistent buffers (GC ViT's relative-position
    indices) back from timm's ``reinit_non_persistent_buffers`` after loading a state dict."""
    model = timm.create_model(model_name, num_classes=5).eval()
    meta_model = timm.create_model(model_name, num_classes=5, device='meta').to_empty(device='cpu').eval()
    with torch.no_grad():
        for t in meta_model.buffers():
            if t.is_floating_point():
                t.fill_(float('nan'))
            else:
                t.fill_(-1)
    meta_model.load_state_dict(model.state_dict())
    reinit_non_persistent_buffers(meta_model)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(meta_model(x), model(x))
