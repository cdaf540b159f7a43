"""Pure-PyTorch multi-scale deformable attention against a direct per-point computation."""
import math

import pytest
import torch

from gpvit.dense.ms_deform_attn import MSDeformAttn, level_start_index, ms_deform_attn_sample


def _bilinear(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Value of ``img`` (D, H, W) at normalised (x, y): pixel centres at (i + 0.5) / W, zeros outside."""
    D, H, W = img.shape
    px, py = x * W - 0.5, y * H - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(D, dtype=img.dtype)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < H and 0 <= xx < W:
                out += wy * wx * img[:, yy, xx]
    return out


def _direct(value, shapes, locations, weights):
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = locations.shape
    starts = level_start_index(shapes).tolist()
    out = torch.zeros(N, Lq, M, D, dtype=value.dtype)
    for n in range(N):
        for q in range(Lq):
            for m in range(M):
                for lvl in range(L):
                    H, W = shapes[lvl].tolist()
                    img = value[n, starts[lvl]:starts[lvl] + H * W, m].T.reshape(D, H, W)
                    for p in range(P):
                        x, y = locations[n, q, m, lvl, p].tolist()
                        out[n, q, m] += weights[n, q, m, lvl, p] * _bilinear(img, x, y)
    return out.reshape(N, Lq, M * D)


def test_sampling_matches_direct_bilinear():
    g = torch.Generator().manual_seed(1)
    shapes = torch.tensor([[5, 7], [3, 4], [2, 2]])
    N, Lq, M, D, P = 2, 5, 2, 3, 3
    S = int(shapes.prod(1).sum())
    value = torch.randn(N, S, M, D, generator=g, dtype=torch.float64)
    # Locations inside, on the border and outside the maps.
    locations = torch.rand(N, Lq, M, len(shapes), P, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(N, Lq, M, len(shapes), P, generator=g, dtype=torch.float64)
    out = ms_deform_attn_sample(value, shapes, locations, weights)
    ref = _direct(value, shapes, locations, weights)
    assert out.shape == (N, Lq, M * D)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_sampling_exact_at_pixel_centres():
    """At a pixel centre with weight 1, the output is that pixel's value."""
    shapes = torch.tensor([[4, 6]])
    value = torch.randn(1, 24, 1, 2)
    i, j = 2, 5
    loc = torch.tensor([(j + 0.5) / 6, (i + 0.5) / 4]).view(1, 1, 1, 1, 1, 2)
    out = ms_deform_attn_sample(value, shapes, loc, torch.ones(1, 1, 1, 1, 1))
    torch.testing.assert_close(out[0, 0], value[0, i * 6 + j, 0])


def test_module_init_and_forward_match_direct():
    torch.manual_seed(0)
    C, L, M, P = 12, 3, 2, 4
    attn = MSDeformAttn(C, L, M, P, ratio=0.5).double()
    # Reference init: radial grid of offsets, uniform weights.
    bias = attn.sampling_offsets.bias.view(M, L, P, 2)
    torch.testing.assert_close(bias[0, 0, :, 0], torch.arange(1., P + 1, dtype=torch.float64))  # head 0: +x
    torch.testing.assert_close(bias[0, 0, :, 1], torch.zeros(P, dtype=torch.float64))
    assert attn.sampling_offsets.weight.abs().sum() == 0
    assert attn.attention_weights.weight.abs().sum() == 0 and attn.attention_weights.bias.abs().sum() == 0
    assert attn.value_proj.bias.abs().sum() == 0

    with torch.no_grad():  # non-trivial offsets and weights
        attn.sampling_offsets.weight.normal_(0, 0.3)
        attn.attention_weights.weight.normal_(0, 0.3)
    shapes = torch.tensor([[6, 5], [3, 3], [2, 1]])
    S = int(shapes.prod(1).sum())
    N, Lq = 2, 4
    query = torch.randn(N, Lq, C, dtype=torch.float64)
    feature = torch.randn(N, S, C, dtype=torch.float64)
    ref_pts = torch.rand(N, Lq, L, 2, dtype=torch.float64)
    mask = torch.zeros(N, S, dtype=torch.bool)
    mask[1, -3:] = True
    out = attn(query, ref_pts, feature, shapes, padding_mask=mask)

    value = attn.value_proj(feature).masked_fill(mask[..., None], 0).view(N, S, M, -1)
    offsets = attn.sampling_offsets(query).view(N, Lq, M, L, P, 2)
    w = attn.attention_weights(query).view(N, Lq, M, L * P).softmax(-1).view(N, Lq, M, L, P)
    loc = torch.empty_like(offsets)
    for lvl, (H, W) in enumerate(shapes.tolist()):
        loc[:, :, :, lvl, :, 0] = ref_pts[:, :, None, lvl, None, 0] + offsets[:, :, :, lvl, :, 0] / W
        loc[:, :, :, lvl, :, 1] = ref_pts[:, :, None, lvl, None, 1] + offsets[:, :, :, lvl, :, 1] / H
    expected = attn.output_proj(_direct(value.detach(), shapes, loc.detach(), w.detach()))
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)

    out.sum().backward()  # differentiable w.r.t. everything
    for p in attn.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_errors():
    with pytest.raises(ValueError, match='divisible'):
        MSDeformAttn(10, 1, 3, 4)
    attn = MSDeformAttn(8, 2, 2, 2)
    with pytest.raises(ValueError, match='levels'):
        attn(torch.randn(1, 3, 8), torch.rand(1, 3, 2, 2), torch.randn(1, 4, 8), torch.tensor([[2, 2]]))
    with pytest.raises(ValueError, match='positions'):
        ms_deform_attn_sample(torch.randn(1, 5, 1, 2), torch.tensor([[2, 2]]), torch.rand(1, 1, 1, 1, 1, 2),
                              torch.ones(1, 1, 1, 1, 1))
