"""Helpers of the model tests (test_gpvit.py, test_gcvit.py): checks of the timm backbone API and of training
behaviour that GPViT and GC ViT must pass in the same way (their shared code is gpvit.models.backbone)."""
from typing import List, Sequence, Tuple

import pytest
import torch
import torch.nn as nn

# Bad image batches every model rejects with a ValueError matching the message; each test adds a too-small image.
BAD_INPUTS = [
    ((3, 224, 224), '4-D'),
    ((1, 1, 224, 224), '3 input channels'),
    ((1, 224, 224, 3), 'channels-last'),
    ((0, 3, 224, 224), 'empty batch'),
]


def assert_bad_input_raises(model: nn.Module, shape: Sequence[int], message: str) -> None:
    """Both ``forward`` and ``forward_intermediates`` raise a ValueError matching ``message``."""
    for run in (model, model.forward_intermediates):
        with pytest.raises(ValueError, match=message):
            run(torch.randn(*shape))


def assert_input_dtype_checked(model: nn.Module) -> None:
    """Integer images, and float images of another dtype than the (float32) weights, raise a ValueError naming
    the fix in ``forward`` and ``forward_intermediates``; under autocast a bfloat16 batch runs."""
    x = torch.rand(1, 3, 64, 64)
    bad = [(x.mul(255).to(torch.uint8), r'floating-point images, got torch.uint8: convert them \(x.float\(\) / 255\)'),
           (x.half(), r'float32 weights, got torch.float16 images: cast the images \(x.to\(torch.float32\)\)'),
           (x.bfloat16(), r'float32 weights, got torch.bfloat16 images'),
           (x.double(), r'float32 weights, got torch.float64 images')]
    for images, message in bad:
        for run in (model, model.forward_intermediates):
            with pytest.raises(ValueError, match=message):
                run(images)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch.isfinite(model(x.bfloat16()).float()).all()


def assert_intermediates_match_feature_info(model: nn.Module, x: torch.Tensor,
                                            atol: float) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """``forward_intermediates(x)`` without autograd: the final features equal ``forward_features`` (to ``atol``),
    one NCHW map per ``feature_info`` entry with its channels and reduction, and ``stop_early`` gives the same
    maps. Returns ``(final, intermediates)``."""
    B, _, H, W = x.shape
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert torch.allclose(final, model.forward_features(x), atol=atol)
        assert len(inter) == len(model.feature_info)
        for info, feat in zip(model.feature_info, inter):
            assert feat.shape == (B, info['num_chs'], H // info['reduction'], W // info['reduction'])
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        assert torch.equal(early[0], inter[1])
    return final, inter


def assert_reset_classifier(model: nn.Module, x: torch.Tensor, feature_shape: Tuple[int, int, int]) -> None:
    """``reset_classifier``: 0 classes give the pooled ``(B, C)`` features, 0 and ``global_pool=''`` the map
    ``(B, *feature_shape)``, 7 classes with ``'avg'`` 7 logits (``pre_logits``: the features); an unknown
    ``global_pool`` raises. Leaves the model with 7 classes and average pooling."""
    B, C = x.shape[0], feature_shape[0]
    with torch.no_grad():
        model.reset_classifier(0)
        assert model(x).shape == (B, C)
        model.reset_classifier(0, '')
        assert model(x).shape == (B, *feature_shape)
        model.reset_classifier(7, 'avg')
        assert model(x).shape == (B, 7)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (B, C)
    with pytest.raises(ValueError, match='global_pool'):
        model.reset_classifier(7, 'token')


def assert_checkpointing_keeps_gradients(model: nn.Module, x: torch.Tensor) -> None:
    """``set_grad_checkpointing(True)`` gives the gradients of the plain backward pass."""
    model(x).square().sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).square().sum().backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, plain[n], atol=1e-5, rtol=1e-4), n


def assert_backward_reaches_every_parameter(model: nn.Module, x: torch.Tensor, inert: Tuple[str, ...] = ()) -> None:
    """Every parameter gets a nonzero gradient, except those whose names end with one of ``inert``."""
    model(x).logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    dead = [n for n, p in model.named_parameters() if not n.endswith(inert) and not p.grad.abs().sum() > 0]
    assert dead == []


def assert_bf16_autocast_close(model: nn.Module, x: torch.Tensor) -> None:
    """Inference under CPU bfloat16 autocast returns bfloat16 within 10 % (of the largest output) of float32."""
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(x)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()
