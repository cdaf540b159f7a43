"""FLOP counts of attention that do not depend on the torch release (``gpvit.tools.flops``)."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from gpvit.tools.flops import count_flops, register_sdpa_flop_formulas, sdpa_backward_flops, sdpa_flops

# (query, key, value) shapes: self-attention, cross-attention with other lengths and value width, one head
SHAPES = [((2, 3, 16, 8), (2, 3, 16, 8), (2, 3, 16, 8)),
          ((1, 6, 49, 18), (1, 6, 64, 18), (1, 6, 64, 24)),
          ((4, 1, 7, 32), (4, 1, 5, 32), (4, 1, 5, 32))]
MASKS = [None, 'bool', 'float']


def _inputs(shapes, mask, requires_grad=False):
    q, k, v = (torch.randn(s, dtype=torch.float32, requires_grad=requires_grad) for s in shapes)
    lq, lk = shapes[0][-2], shapes[1][-2]
    if mask == 'bool':
        m = torch.rand(lq, lk) > 0.3
        m[:, 0] = True  # every query attends somewhere
    elif mask == 'float':
        m = torch.randn(shapes[0][1], lq, lk)  # a per-head additive bias, as GC ViT's relative positions
    else:
        m = None
    return q, k, v, m


def _analytic(shapes):
    """2 FLOPs per multiply-accumulate of the two products, written out independently of the library."""
    (b, h, lq, d), (_, _, lk, _), (_, _, _, dv) = shapes
    return 2 * b * h * lq * lk * d + 2 * b * h * lq * lk * dv


@pytest.mark.parametrize('mask', MASKS)
@pytest.mark.parametrize('shapes', SHAPES)
def test_sdpa_forward_counts_the_two_products(shapes, mask):
    q, k, v, m = _inputs(shapes, mask)
    with FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    assert counter.get_total_flops() == _analytic(shapes) == sdpa_flops(*shapes)


@pytest.mark.parametrize('backend', ['FLASH_ATTENTION', 'MATH'])
@pytest.mark.parametrize('mask', [None, 'float'])
@pytest.mark.parametrize('shapes', SHAPES)
def test_sdpa_backward_counts_per_kernel(shapes, mask, backend):
    """The fused kernel recomputes the scores in its backward (five products), the math path keeps them (four)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    if backend == 'FLASH_ATTENTION' and shapes[2][-1] != shapes[0][-1]:
        pytest.skip('the CPU flash kernel needs equal query and value widths')
    q, k, v, m = _inputs(shapes, mask, requires_grad=True)
    if m is not None:
        m = m[None]  # (1, heads, Lq, Lk): the mask layout the CPU flash kernel takes
    (b, h, lq, d), (_, _, lk, _), (_, _, _, dv) = shapes
    with sdpa_kernel(getattr(SDPBackend, backend)), FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(q, k, v, attn_mask=m).sum().backward()
    if backend == 'FLASH_ATTENTION':
        # scores recomputed (d), grads of the scores (dv), of v (dv), of q (d) and of k (d)
        backward = 2 * b * h * lq * lk * (3 * d + 2 * dv)
        assert sdpa_backward_flops(*shapes) == backward
    else:
        backward = 2 * b * h * lq * lk * (2 * d + 2 * dv)
    assert counter.get_total_flops() == _analytic(shapes) + backward


def test_model_count_includes_attention():
    """A model whose attention is all SDPA: the count drops by exactly the attention FLOPs without them."""
    class Attn(torch.nn.Module):
        def forward(self, x):
            return F.scaled_dot_product_attention(x, x, x)

    shape = (2, 4, 10, 16)
    assert count_flops(Attn(), shape) == sdpa_flops(shape, shape, shape) == 2 * 2 * 4 * 10 * 10 * 32


def test_registration_is_idempotent_and_keeps_torch_formulas():
    before = dict(flop_registry)
    assert register_sdpa_flop_formulas() == []  # done at import; nothing left to register
    assert flop_registry == before
    # every SDPA kernel of this torch is counted (by torch's formula or ours)
    for name in dir(torch.ops.aten):
        if name.startswith('_scaled_dot_product_') and 'math' not in name:
            assert getattr(torch.ops.aten, name) in flop_registry, name
