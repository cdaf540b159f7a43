"""GPViT: a high-resolution non-hierarchical vision transformer with Group Propagation.

Paper: *GPViT: A High Resolution Non-Hierarchical Vision Transformer with Group Propagation*,
Yang, Xu, De Mello, Crowley, Wang, ICLR 2023 (arXiv 2212.06795).

This is an independent implementation of the function computed by the reference code
(github.com/ChenhongyiYang/GPViT @2b8882b), checked against that code's outputs. Its quirks are kept on
purpose, because released weights depend on them:

* the local block ends with a depthwise 3x3 conv over the whole residual stream, with no residual around it;
* the GP block has no outer residual: the identity path runs through ``cat[x, ungroup(x)]`` and a 2C->C
  projection, and the block ends with depthwise conv + BatchNorm + ReLU (its output is non-negative);
* grouping attention projects only the keys; values are the layer-normed image tokens themselves;
* LayerNorm eps is 1e-6 in local blocks and output norms, 1e-5 inside GP blocks and the attention-pool neck.

Layout: the token map stays channels-last ``(B, H, W, C)`` between blocks, so LayerNorm and Linear act on the
last dimension and the depthwise convs see a channels-last NCHW view without copies. The stride is 8.

Any input size: the stem pads bottom/right to a multiple of 8 (as the reference's ``AdaptivePadding``), the
position embedding is resized bicubically to the token grid in every forward (as the reference does), and a
token grid with an odd side is handled in the stripe attention by letting the last stripe be one token wide
(see :class:`LePEAttention`). Sides that are multiples of 16 give exactly the reference's function.

The blocks here are the plain ones (training, export, compile, TorchScript, FX); in eval mode on CPU float32
their fused inference variants in :mod:`gpvit.models.fused` are swapped in (same parameters).
"""
import logging
import math
import re
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (ConvNormAct, Mlp, register_notrace_function, register_notrace_module, to_2tuple,
                         trunc_normal_)
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models._manipulate import checkpoint
from timm.models.mlp_mixer import MixerBlock

from ..checkpoint import CheckpointError, convert_family_checkpoint, reconcile
from .backbone import (MIN_INPUT_SIZE, Backbone, build_backbone, device_dtype,  # noqa: F401 (re-export)
                       init_linear_and_layernorm)
from .layers import DropPathAdd, attention, is_tracing, pad_amount, pad_to_multiple, split_heads, window_partition

_logger = logging.getLogger(__name__)

__all__ = ['GPViT', 'ConvPatchEmbed', 'LePEAttention', 'LePEBlock', 'GroupingAttention', 'UngroupingAttention',
           'GPBlock', 'GroupPool', 'checkpoint_filter_fn']


def resize_pos_grid(pos: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``(1, h, w, C)`` position embedding -> ``(1, H, W, C)``: the reference's ``resize_pos_embed`` (bicubic,
    ``align_corners=False``, no antialiasing, in float32).

    Written out rather than timm's ``resample_abs_pos_embed``, which returns early when the token counts match: under
    ``torch.export`` that test on symbolic sizes fixes the exported graph to the example's size (seen on torch 2.9).
    """
    out = F.interpolate(pos.permute(0, 3, 1, 2).float(), size=size, mode='bicubic', align_corners=False)
    return out.permute(0, 2, 3, 1).to(pos.dtype)


class ConvPatchEmbed(nn.Module):
    """Convolutional stem, total stride 8.

    7x7/2 conv-BN-ReLU, ``num_convs`` 3x3 conv-BN-ReLU, zero padding of the bottom/right edge to a multiple of
    4, then a 4x4/4 projection to ``embed_dim``. ``(B, 3, H, W)`` -> ``(B, ceil(H/8), ceil(W/8), embed_dim)``.
    """

    def __init__(
            self,
            in_chans: int = 3,
            embed_dim: int = 216,
            stem_width: int = 64,
            num_convs: int = 0,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.stem = ConvNormAct(in_chans, stem_width, 7, stride=2, padding=3, **dd)
        self.convs = nn.Sequential(*[ConvNormAct(stem_width, stem_width, 3, padding=1, **dd)
                                     for _ in range(num_convs)])
        self.proj = nn.Conv2d(stem_width, embed_dim, 4, stride=4, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last convs: oneDNN (and cuDNN) run them without layout reorders, up to 1.6x faster here, and
        # the projection's output is then already the (B, H, W, C) token map.
        x = self.convs(self.stem(x.contiguous(memory_format=torch.channels_last)))
        return self.proj(pad_to_multiple(x, (4, 4))).permute(0, 2, 3, 1)


@register_notrace_module  # size-dependent stripe layout: FX records the call (as for timm's windowed attentions)
class LePEAttention(nn.Module):
    """Cross-shaped stripe attention with locally-enhanced positional encoding (CSWin), as in GPViT.

    One ``qkv`` projection feeds two branches of ``num_heads // 2`` heads each: the first half of the channels
    attends within vertical stripes (full height, ``stripe_width`` columns), the second half within horizontal
    stripes (``stripe_width`` rows, full width). Each branch adds LePE: a depthwise 3x3 conv of V applied to
    every stripe as an image of its own, so it zero-pads at stripe borders. The two branches are concatenated
    and projected.

    A token grid whose side is not a multiple of ``stripe_width`` is zero-padded after the qkv projection and
    the padded keys are masked out. For the real tokens this is exactly a tiling in which the last stripe is
    narrower (zero V in the padding equals the conv's zero padding at a stripe border); it changes nothing on
    grids the stripes tile.

    ``(B, H, W, C)`` -> ``(B, H, W, C)``.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 12,
            stripe_width: int = 2,
            qkv_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if dim % 2 or num_heads % 2 or (dim // 2) % (num_heads // 2):
            raise ValueError(f'LePEAttention: dim {dim} must split into 2 branches of num_heads/2 = '
                             f'{num_heads // 2} equal heads')
        self.num_heads = num_heads
        self.stripe_width = stripe_width
        half = dim // 2
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.lepe = nn.ModuleList([nn.Conv2d(half, half, 3, padding=1, groups=half, **dd) for _ in range(2)])
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def _qkv(self, x: torch.Tensor, pad_h: int, pad_w: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(B, H, W, C)`` -> each branch's q, k and v ``(B, Hp, Wp, 3, D)``, zero-padded to whole stripes.

        ``qkv``'s output channels are laid out ``(q|k|v, branch, D)``. Under autograd each branch runs its own GEMM
        on its rows of the weight: indexing one (3C)-wide output would make autograd fill a zero gradient of the
        whole output per index and add them up. Without autograd one GEMM and two strided views do it.
        """
        B, H, W, C = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        D = C // 2
        pad = [0, 0, 0, pad_w, 0, pad_h]
        padded = pad_h > 0 or pad_w > 0
        if not (torch.is_grad_enabled() and (x.requires_grad or self.qkv.weight.requires_grad)):
            qkv = self.qkv(x)
            qkv = (F.pad(qkv, pad) if padded else qkv).view(B, H + pad_h, W + pad_w, 3, 2, D)
            return qkv[..., 0, :], qkv[..., 1, :]
        weight = self.qkv.weight.unflatten(0, (3, 2, D))
        bias = None if self.qkv.bias is None else self.qkv.bias.view(3, 2, D)
        branches: List[torch.Tensor] = []
        for branch in range(2):
            qkv = F.linear(x, weight[:, branch].flatten(0, 1), None if bias is None else bias[:, branch].flatten())
            branches.append((F.pad(qkv, pad) if padded else qkv).view(B, H + pad_h, W + pad_w, 3, D))
        return branches[0], branches[1]

    def _attend(
            self,
            q: torch.Tensor,
            k: torch.Tensor,
            v: torch.Tensor,
            key_mask: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """One branch's attention on its stripes: ``(B * nS, sh, sw, D)`` q, k, v (any strides) ->
        ``(B * nS, sh * sw, D)``. ``key_mask``: ``(B * nS, 1, 1, sh * sw)``, True for real tokens; None when the
        stripes tile the map."""
        return attention(q.flatten(1, 2), k.flatten(1, 2), v.flatten(1, 2), self.num_heads // 2, attn_mask=key_mask,
                         dropout_p=self.attn_drop if self.training else 0.)

    def _lepe_rows(self, v: torch.Tensor) -> torch.Tensor:
        """The horizontal branch's LePE: each stripe's V ``(N, sw, Wp, D)`` (any strides) -> ``(N, sw, Wp, D)``.

        When the conv's weight needs a gradient on the CPU, the conv runs on the transposed stripes, ``(Wp, sw)``
        images, with the kernel transposed: the same sums, but oneDNN's depthwise weight gradient is slow on
        images of few rows. Forward + backward of GPViT-L1's (batch 8 at 224: 112 stripes of 2 x 28, 108
        channels, 2 threads) took 4.4-4.9 ms in float32 and 10.4-10.7 in bfloat16 on the view as it is, 2.6-2.7
        and 2.1-2.5 on the transposed copy; L2-L4's channels and 800x1280's 160-wide stripes alike (1.6-2.1x in
        float32, 3-5x in bfloat16). The result is then a strided view, which :meth:`_merge`'s shape takes
        without a copy. Without a weight gradient (inference, frozen LePE) or off the CPU the conv takes the
        view as it is.
        """
        conv = self.lepe[1]
        if v.device.type == 'cpu' and torch.is_grad_enabled() and conv.weight.requires_grad:
            rows_t = v.transpose(1, 2).contiguous().permute(0, 3, 1, 2)  # (N, D, Wp, sw), channels-last
            padding = (conv.padding[1], conv.padding[0])  # the conv's padding, transposed with it
            out = F.conv2d(rows_t, conv.weight.transpose(-2, -1), conv.bias, padding=padding, groups=conv.groups)
            return out.permute(0, 3, 2, 1)
        return conv(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def _merge(self, a_v: torch.Tensor, pe_v: torch.Tensor, a_h: torch.Tensor, pe_h: torch.Tensor) -> torch.Tensor:
        """Both branches' attention + LePE, concatenated: ``(B, nh, sw, nv, sw, D)`` views each (token
        ``(i * sw + s, j * sw + t)`` of the padded map at ``[b, i, s, j, t]``) -> ``(B, nh, sw, nv, sw, C)``.

        The vertical branch's views are in stripe order; the sums are taken in their own layouts and one
        concatenation writes the map (the window reverse and the branch concatenation at once).
        """
        return torch.cat([a_v + pe_v, a_h + pe_h], dim=-1)

    def stripe_attention(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``: both branches with their LePE, before the output projection."""
        B, H, W, C = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        sw, D = self.stripe_width, C // 2
        pad_h, pad_w = pad_amount(H, sw), pad_amount(W, sw)
        Hp, Wp = H + pad_h, W + pad_w
        padded = pad_h > 0 or pad_w > 0
        mask_v: Optional[torch.Tensor] = None
        mask_h: Optional[torch.Tensor] = None
        if padded:
            valid = torch.zeros(1, Hp, Wp, 1, dtype=torch.bool, device=x.device)
            valid[:, :H, :W] = True
            mask_v = window_partition(valid, (Hp, sw)).flatten(1).repeat(B, 1)[:, None, None, :]
            mask_h = window_partition(valid, (sw, Wp)).flatten(1).repeat(B, 1)[:, None, None, :]
        nv, nh = Wp // sw, Hp // sw

        # ``unbind`` rather than indexing q, k and v: its backward stacks their gradients into one tensor, where
        # each index would fill a zero gradient of the whole qkv tensor.
        # Vertical stripes (Hp x sw): one copy gathers each stripe's q, k, v, each contiguous (the LePE conv and
        # SDPA run fastest on those). LePE: the stripes' V as a batch of (D, sh, sw) images, so the conv
        # zero-pads at stripe borders.
        qkv_v, qkv_h = self._qkv(x, pad_h, pad_w)
        q, k, v = qkv_v.unflatten(2, (nv, sw)).permute(4, 0, 2, 1, 3, 5).reshape(3, B * nv, Hp, sw, D).unbind(0)
        a_v = self._attend(q, k, v, mask_v)
        pe_v = self.lepe[0](v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        # Horizontal stripes (sw x Wp): views of the branch's projection, no copy.
        q, k, v = qkv_h.reshape(B * nh, sw, Wp, 3, D).unbind(3)
        a_h = self._attend(q, k, v, mask_h)
        pe_h = self._lepe_rows(v)

        # All four as (B, nh, sw, nv, sw, D) views: the shape in which both branches' layouts are views.
        stripes, grid = (B, nv, Hp, sw, D), (B, nh, sw, nv, sw, D)
        x = self._merge(a_v.reshape(stripes).transpose(1, 2).reshape(grid),
                        pe_v.reshape(stripes).transpose(1, 2).reshape(grid),
                        a_h.reshape(grid), pe_h.reshape(grid)).view(B, Hp, Wp, C)
        if padded:
            x = x[:, :H, :W]
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_drop(self.proj(self.stripe_attention(x)))


class LePEBlock(nn.Module):
    """GPViT local block (reference ``LePEAttnSimpleDWBlock``).

    ``x = x + attn(LN(x)); x = x + mlp(LN(x)); x = dwconv3x3(x)``. The final depthwise conv (no bias) has no
    residual, norm or activation: every local block filters the whole stream.
    ``(B, H, W, C)`` -> ``(B, H, W, C)``.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 12,
            stripe_width: int = 2,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            act_layer: type = nn.GELU,
            norm_layer: type = partial(nn.LayerNorm, eps=1e-6),
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.norm1 = norm_layer(dim, **dd)
        self.attn = LePEAttention(dim, num_heads, stripe_width, qkv_bias, attn_drop, proj_drop, **dd)
        self.drop_path1 = DropPathAdd(drop_path)
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.drop_path2 = DropPathAdd(drop_path)
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False, **dd)

    def _attn_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.norm1(x))

    def _mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x + DropPath(branch(x)) in one pass; in training only the kept samples' branches are computed
        if not torch.jit.is_scripting():
            x = self.drop_path1.add_branch(self._attn_branch, x)
            x = self.drop_path2.add_branch(self._mlp_branch, x)
        else:
            x = self.drop_path1(x, self._attn_branch(x))
            x = self.drop_path2(x, self._mlp_branch(x))
        return self.dw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class GroupingAttention(nn.Module):
    """Group tokens gather the image tokens (reference ``LightGroupAttnBlock``).

    ``q = LN(group tokens)``, ``k = Linear(LN(x))``, ``v = LN(x)``: only the keys are projected, and there is
    no output projection, residual or FFN, so each head's output is a convex combination of normalised image
    tokens. ``(1, n, C)``, ``(B, N, C)`` -> ``(B, n, C)``.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 6,
            qkv_bias: bool = True,
            attn_drop: float = 0.,
            norm_layer: type = nn.LayerNorm,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.num_heads = num_heads
        self.norm_q = norm_layer(dim, **dd)
        self.norm_kv = norm_layer(dim, **dd)
        self.k = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.attn_drop = attn_drop

    def forward(self, group_tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(x)
        return attention(self.norm_q(group_tokens), self.k(kv), kv, self.num_heads,
                         dropout_p=self.attn_drop if self.training else 0.)

    @torch.jit.ignore
    def attention_map(self, group_tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The grouping weights ``(B, heads, n, N)``: how much each group gathers from each image token.

        Computed explicitly (the forward pass's fused attention does not return them); for visualisation.
        """
        q = split_heads(self.norm_q(group_tokens), self.num_heads)
        k = split_heads(self.k(self.norm_kv(x)), self.num_heads)
        return (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1)


class UngroupingAttention(nn.Module):
    """Image tokens read back from the propagated group tokens (attention of reference ``FullAttnCatBlock``).

    ``q = Wq LN(x)``, ``k = Wk LN(g)``, ``v = Wv LN(g)``, softmax over the groups, output projection.
    ``(B, N, C)``, ``(B, n, C)`` -> ``(B, N, C)``.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 6,
            qkv_bias: bool = True,
            attn_drop: float = 0.,
            norm_layer: type = nn.LayerNorm,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.num_heads = num_heads
        self.norm_q = norm_layer(dim, **dd)
        self.norm_kv = norm_layer(dim, **dd)
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.k = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.v = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.attn_drop = attn_drop

    def forward(self, x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        g = self.norm_kv(groups)
        out = attention(self.q(self.norm_q(x)), self.k(g), self.v(g), self.num_heads,
                        dropout_p=self.attn_drop if self.training else 0.)
        return self.proj(out)


class GPBlock(nn.Module):
    """Group Propagation block: grouping, MLP-Mixer propagation over the groups, ungrouping.

    ::

        g = GroupingAttention(group_tokens, x)                 # (B, n, C)
        g = MixerBlock(g)                                      # token mixing (hidden C/2) + channel mixing
        y = Linear(2C -> C)(cat[x, DropPath(Ungrouping(x, g))])
        y = y + DropPath(mlp(LN(y)))                           # one addcmul (DropPathAdd)
        out = ReLU(BN(dwconv3x3(y)))

    There is no residual around the block: ``x`` reaches the output only through the concatenation.
    ``(B, H, W, C)`` -> ``(B, H, W, C)``, non-negative.
    """

    def __init__(
            self,
            dim: int,
            num_group_tokens: int,
            num_heads: int = 6,
            mlp_ratio: float = 4.,
            mixer_ratio: Tuple[float, float] = (0.5, 4.),
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            act_layer: type = nn.GELU,
            norm_layer: type = nn.LayerNorm,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.group_token = nn.Parameter(torch.zeros(1, num_group_tokens, dim, **dd))
        self.group = GroupingAttention(dim, num_heads, qkv_bias, attn_drop, norm_layer, **dd)
        self.mixer = MixerBlock(dim, num_group_tokens, mixer_ratio, mlp_layer=Mlp, norm_layer=norm_layer,
                                act_layer=act_layer, drop=proj_drop, drop_path=drop_path, **dd)
        self.ungroup = UngroupingAttention(dim, num_heads, qkv_bias, attn_drop, norm_layer, **dd)
        self.drop_path1 = DropPathAdd(drop_path)  # DropPath of the ungrouping, which is concatenated
        self.proj = nn.Linear(2 * dim, dim, **dd)
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.drop_path2 = DropPathAdd(drop_path)
        self.conv = ConvNormAct(dim, dim, 3, padding=1, groups=dim, **dd)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The group tokens: truncated normal, std 0.02 (the submodules have their own)."""
        trunc_normal_(self.group_token, std=.02)

    @torch.jit.ignore
    def group_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Grouping weights of this block for its input ``x`` ``(B, H, W, C)``: ``(B, heads, n, H, W)``."""
        B, H, W, C = x.shape
        return self.group.attention_map(self.group_token, x.reshape(B, H * W, C)).unflatten(-1, (H, W))

    def propagate(self, x: torch.Tensor) -> torch.Tensor:
        """Grouping, propagation, ungrouping and the 2C -> C projection: ``(B, N, C)`` -> ``(B, N, C)``."""
        g = self.mixer(self.group(self.group_token, x))
        if not torch.jit.is_scripting():  # the kept samples' ungrouping only, in training
            u = self.drop_path1.drop_branch(self.ungroup, x, g)
        else:
            u = self.drop_path1.drop(self.ungroup(x, g))
        return self.proj(torch.cat([x, u], dim=-1))

    def _mlp_branch(self, y: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm2(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.propagate(x.flatten(1, 2))
        if not torch.jit.is_scripting():  # the MLP of the kept samples only, in training
            y = self.drop_path2.add_branch(self._mlp_branch, y)
        else:
            y = self.drop_path2(y, self._mlp_branch(y))
        return self.conv(y.view(x.shape).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class GroupPool(nn.Module):
    """Attention pooling with one learnable query (reference ``GroupNeck``, used by L1 and L2).

    ``q = LN(query)``, ``k = Linear(x)`` (no bias), ``v = x``; no output projection. The query starts at zero,
    so the pool starts as global average pooling. ``(B, N, C)`` -> ``(B, C)``.
    """

    def __init__(self, dim: int, num_heads: int = 6, norm_layer: type = nn.LayerNorm, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.zeros(1, 1, dim, **dd))
        self.norm = norm_layer(dim, **dd)
        self.k = nn.Linear(dim, dim, bias=False, **dd)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The query: zeros (the submodules have their own)."""
        nn.init.zeros_(self.query)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return attention(self.norm(self.query), self.k(x), x, self.num_heads).squeeze(1)


@register_notrace_function  # size-dependent: FX records the call
def grid_pos_embed(pos_embed: torch.Tensor, grid_size: Tuple[int, int], size: List[int]) -> torch.Tensor:
    """The position embedding ``(1, gh * gw, C)`` stored for ``grid_size``, for a token map of ``size = (H, W)``:
    ``(1, H, W, C)``, resized bicubically (the reference's ``resize_pos_embed``: ``align_corners=False``, no
    antialiasing) unless the map has the stored grid.

    Under export and compile it always resamples (the identity at the stored grid), and tests that first:
    comparing symbolic sizes with the stored grid would specialise the graph to the example's size.
    """
    H, W = size[0], size[1]
    if not is_tracing() and H == grid_size[0] and W == grid_size[1]:
        return pos_embed.view(1, H, W, -1)
    return resize_pos_grid(pos_embed.view(1, grid_size[0], grid_size[1], -1), (H, W))


class GPViT(Backbone):
    """GPViT backbone and classifier.

    Twelve blocks at stride 8: local stripe-attention blocks everywhere except the GP blocks named in
    ``group_layers``. ``forward_features`` returns the final map ``(B, C, H/8, W/8)`` (after the final
    LayerNorm); the head pools it (attention pool ``'group'`` or ``'avg'``) and applies a Linear classifier.
    The timm API (:class:`~gpvit.models.backbone.Backbone`) runs the blocks as its levels; every block has the
    final norm's width, so ``forward_intermediates(norm=True)`` passes a block without an out norm of its own
    through the final norm.
    """

    level_attr = 'blocks'
    family = 'GPViT'
    global_pools = ('group', 'avg', '')
    final_norm_on_all_levels = True

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 216,
            depth: int = 12,
            num_heads: int = 12,
            stripe_width: int = 2,
            group_layers: Sequence[Tuple[int, int]] = ((1, 64), (4, 32), (7, 32), (10, 16)),
            group_heads: int = 6,
            mlp_ratio: float = 4.,
            mixer_ratio: Tuple[float, float] = (0.5, 4.),
            stem_convs: int = 0,
            stem_width: int = 64,
            qkv_bias: bool = True,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            out_norm_indices: Sequence[int] = (),
            weight_init: str = 'reference',
            device=None,
            dtype=None,
    ):
        """
        Args:
            img_size: training resolution; sets the grid of the stored position embedding (``img_size / 8``).
                Any input size >= 32 runs; the embedding is resized to the input's token grid on the fly.
            in_chans: input channels.
            num_classes: classifier outputs; 0 for no classifier.
            global_pool: ``'group'`` (attention pool, L1/L2), ``'avg'`` (L3/L4) or ``''`` (no pooling).
            embed_dim: width C.
            depth: number of blocks.
            num_heads: heads of the stripe attention (half per stripe direction).
            stripe_width: width of the LePE stripes in tokens.
            group_layers: ``(block index, number of group tokens)`` of the GP blocks.
            group_heads: heads of grouping, ungrouping and the attention pool.
            mlp_ratio: FFN hidden size / C.
            mixer_ratio: token- and channel-mixing hidden sizes of the MLP-Mixer, as multiples of C.
            stem_convs: extra 3x3 convs in the stem (0 for L1, 1 for L2/L3, 2 for L4).
            stem_width: channels of the stem convs.
            qkv_bias: bias of the q/k/v projections.
            drop_rate: dropout before the classifier.
            pos_drop_rate: dropout after adding the position embedding.
            proj_drop_rate: dropout after projections and in MLPs.
            attn_drop_rate: attention dropout.
            drop_path_rate: stochastic depth of the last block; block i gets ``i / (depth - 1)`` of it.
            out_norm_indices: blocks whose intermediate outputs get a LayerNorm of their own in
                ``forward_intermediates(norm=True)`` (the reference segmentation backbone's ``norm{i}``); the
                last block always uses the final norm.
            weight_init: ``'reference'`` reproduces the reference initialisation; ``'skip'`` leaves PyTorch's.
            device: where the parameters are created (timm's factory kwargs).
            dtype: their dtype.
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self._check_global_pool(global_pool)
        group_layers = dict(group_layers)
        if any(not 0 <= i < depth for i in group_layers):
            raise ValueError(f'group_layers {sorted(group_layers)} must index blocks 0..{depth - 1}')
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.in_chans = in_chans
        self.patch_size = 8
        self.group_heads = group_heads
        self.grad_checkpointing = False
        self.output_fmt = 'NCHW'
        img_size = to_2tuple(img_size)
        self.grid_size = (math.ceil(img_size[0] / 8), math.ceil(img_size[1] / 8))

        self.patch_embed = ConvPatchEmbed(in_chans, embed_dim, stem_width, stem_convs, **dd)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)

        # np.linspace(0, rate, depth) in float64 as the reference; timm's calculate_drop_path_rates is float32
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        blocks = []
        for i in range(depth):
            if i in group_layers:
                blocks.append(GPBlock(
                    embed_dim, group_layers[i], group_heads, mlp_ratio, mixer_ratio, qkv_bias,
                    proj_drop_rate, attn_drop_rate, dpr[i], **dd))
            else:
                blocks.append(LePEBlock(
                    embed_dim, num_heads, stripe_width, mlp_ratio, qkv_bias, proj_drop_rate, attn_drop_rate,
                    dpr[i], **dd))
        self.blocks = nn.Sequential(*blocks)
        self.feature_info = [dict(num_chs=embed_dim, reduction=8, module=f'blocks.{i}') for i in range(depth)]
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6, **dd)
        self.out_norms = nn.ModuleDict({
            str(i): nn.LayerNorm(embed_dim, eps=1e-6, **dd)
            for i in sorted({i % depth for i in out_norm_indices}) if i != depth - 1})

        self.attn_pool = GroupPool(embed_dim, group_heads, **dd) if global_pool == 'group' else None
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self._apply_weight_init(weight_init)

    @torch.no_grad()
    def _init_reference(self) -> None:
        """The reference initialisation (mmcls ``init_weights``).

        Every Linear: truncated normal (std 0.02, cut at +-2), bias 0; every LayerNorm: 1 / 0; position
        embedding and group tokens: truncated normal 0.02; classifier: normal (std 0.01), bias 0. Convolutions
        keep PyTorch's default, BatchNorm 1 / 0, the attention-pool query zeros.
        """
        init_linear_and_layernorm(self)
        trunc_normal_(self.pos_embed, std=.02)
        if isinstance(self.head, nn.Linear):
            nn.init.normal_(self.head.weight, std=.01)
            nn.init.zeros_(self.head.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        names = {'pos_embed'} | {n for n, _ in self.named_parameters() if n.endswith('group_token')}
        if self.attn_pool is not None:
            names.add('attn_pool.query')
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r'^pos_embed|^patch_embed',
            blocks=[(r'^blocks\.(\d+)', None), (r'^norm|^out_norms', (99999,))],
        )

    def _set_global_pool(self, global_pool: str) -> None:
        """``'group'`` builds the attention pool if there is none; ``'avg'`` and ``''`` drop it."""
        if global_pool == 'group' and self.attn_pool is None:
            self.attn_pool = GroupPool(self.embed_dim, self.group_heads, **device_dtype(self)).train(self.training)
        elif global_pool != 'group':
            self.attn_pool = None
        self.global_pool = global_pool

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> ``(B, C)``: the attention pool with ``global_pool='group'``, else as the base."""
        if self.attn_pool is not None:  # present exactly when global_pool == 'group'
            return self.attn_pool(x.flatten(2).transpose(1, 2))
        return x.mean(dim=(2, 3)) if self.global_pool == 'avg' else x  # as the base (TorchScript has no super())

    def _input_weight(self) -> torch.Tensor:
        return self.patch_embed.stem.conv.weight

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Conv stem, then the position embedding: ``(B, 3, H, W)`` -> ``(B, ceil(H/8), ceil(W/8), C)``."""
        x = self.patch_embed(x)
        return self.pos_drop(x + grid_pos_embed(self.pos_embed, self.grid_size, x.shape[1:3]))

    def _forward_levels(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x, use_reentrant=False)
        return self.blocks(x)

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One block, recomputed in the backward pass with gradient checkpointing (the ViT-Adapter runs the
        blocks through this too)."""
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    _run_level = _run_block

    def _no_place_for(self, key: str) -> bool:
        """As the base, and the attention pool's keys when the model pools otherwise."""
        if key.split('.')[0] == 'attn_pool':
            return self.attn_pool is None
        return super()._no_place_for(key)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------

_WIDTH_TO_VARIANT = {216: 'gpvit_l1', 348: 'gpvit_l2', 432: 'gpvit_l3', 624: 'gpvit_l4', 96: 'gpvit_mini'}

# mmpretrain PR #1303 names -> reference names (substring replacements on backbone keys).
_MMPRETRAIN_RENAMES = [
    ('patch_embed.stem.conv.', 'patch_embed.stem.0.'),
    ('patch_embed.stem.bn.', 'patch_embed.stem.1.'),
    ('group_layer.norm_group_token.', 'group_layer.norm_query.'),
    ('group_layer.norm_x.', 'group_layer.norm_key.'),
    ('un_group_layer.norm_x.', 'un_group_layer.norm_query.'),
    ('un_group_layer.norm_group_token.', 'un_group_layer.norm_key.'),
    ('token_mix.layers.0.0.', 'patch_mixer.0.'),
    ('token_mix.layers.1.', 'patch_mixer.3.'),
    ('channel_mix.layers.0.0.', 'channel_mixer.0.'),
    ('channel_mix.layers.1.', 'channel_mixer.3.'),
    ('.ln1.', '.norm1.'),
    ('.ln2.', '.norm2.'),
    ('dwconv.conv.', 'dwconv.0.'),
    ('dwconv.bn.', 'dwconv.1.'),
]

# Reference (mmcls) names, without the 'backbone.' prefix -> project names. First match wins.
_B = r'^layers\.(\d+)\.'
_REFERENCE_RULES = [
    (r'^patch_embed\.stem\.0\.', 'patch_embed.stem.conv.'),
    (r'^patch_embed\.stem\.1\.', 'patch_embed.stem.bn.'),
    (r'^patch_embed\.convs\.(\d+)\.',
     lambda m: f'patch_embed.convs.{int(m[1]) // 3}.{("conv", "bn")[int(m[1]) % 3]}.'),
    (r'^patch_embed\.projection\.', 'patch_embed.proj.'),
    (r'^pos_embed$', 'pos_embed'),
    (_B + r'qkv\.', r'blocks.\1.attn.qkv.'),
    (_B + r'proj\.', r'blocks.\1.attn.proj.'),
    (_B + r'attns\.(\d)\.get_v\.', r'blocks.\1.attn.lepe.\2.'),
    (_B + r'(?:un_group_layer\.)?ffn\.layers\.0\.0\.', r'blocks.\1.mlp.fc1.'),
    (_B + r'(?:un_group_layer\.)?ffn\.layers\.1\.', r'blocks.\1.mlp.fc2.'),
    (_B + r'(?:un_group_layer\.)?norm2\.', r'blocks.\1.norm2.'),
    (_B + r'(norm1|dw)\.', r'blocks.\1.\2.'),
    (_B + r'group_token$', r'blocks.\1.group_token'),
    (_B + r'group_layer\.norm_query\.', r'blocks.\1.group.norm_q.'),
    (_B + r'group_layer\.norm_key\.', r'blocks.\1.group.norm_kv.'),
    (_B + r'group_layer\.attn\.k_proj\.', r'blocks.\1.group.k.'),
    (_B + r'mixer\.layers\.0\.patch_mixer\.0\.', r'blocks.\1.mixer.mlp_tokens.fc1.'),
    (_B + r'mixer\.layers\.0\.patch_mixer\.3\.', r'blocks.\1.mixer.mlp_tokens.fc2.'),
    (_B + r'mixer\.layers\.0\.channel_mixer\.0\.', r'blocks.\1.mixer.mlp_channels.fc1.'),
    (_B + r'mixer\.layers\.0\.channel_mixer\.3\.', r'blocks.\1.mixer.mlp_channels.fc2.'),
    (_B + r'mixer\.layers\.0\.(norm1|norm2)\.', r'blocks.\1.mixer.\2.'),
    (_B + r'un_group_layer\.norm_query\.', r'blocks.\1.ungroup.norm_q.'),
    (_B + r'un_group_layer\.norm_key\.', r'blocks.\1.ungroup.norm_kv.'),
    (_B + r'un_group_layer\.attn\.(q|k|v)_proj\.', r'blocks.\1.ungroup.\2.'),
    (_B + r'un_group_layer\.attn\.proj\.(?:0\.)?', r'blocks.\1.ungroup.proj.'),
    (_B + r'un_group_layer\.proj\.', r'blocks.\1.proj.'),
    (_B + r'dwconv\.0\.', r'blocks.\1.conv.conv.'),
    (_B + r'dwconv\.1\.', r'blocks.\1.conv.bn.'),
    (r'^ln1\.', 'norm.'),
    (r'^norm(\d+)\.', r'out_norms.\1.'),
]
_REFERENCE_RULES = [(re.compile(p), r) for p, r in _REFERENCE_RULES]
# Top-level prefixes of reference detector / segmentor checkpoints whose weights are not the backbone's.
_DENSE_PREFIXES = ('decode_head.', 'auxiliary_head.', 'rpn_head.', 'roi_head.', 'bbox_head.', 'mask_head.')
_NECK_RULES = {'neck.group_token': 'attn_pool.query', 'neck.norm_query.weight': 'attn_pool.norm.weight',
               'neck.norm_query.bias': 'attn_pool.norm.bias', 'neck.attn.k_proj.weight': 'attn_pool.k.weight',
               'head.fc.weight': 'head.weight', 'head.fc.bias': 'head.bias'}


def _rename_reference_backbone(key: str) -> Optional[str]:
    for pattern, repl in _REFERENCE_RULES:
        if pattern.search(key):
            return pattern.sub(repl, key, count=1)
    return None


def to_project_layout(state_dict: Dict[str, torch.Tensor]) -> Optional[Tuple[Dict[str, torch.Tensor], List[str]]]:
    """Convert a GPViT state dict of any supported layout to this project's layout.

    Recognised: the project's own layout; reference classifier checkpoints (``backbone.`` / ``neck.`` /
    ``head.fc.``); the backbone of reference detector and segmentor checkpoints (their heads and the
    ViT-Adapter modules are set aside); bare reference backbone state dicts; the mmpretrain port (PR #1303).

    Returns:
        ``(state_dict, set_aside)`` with the keys set aside as belonging to another model part, or None if this
        is not a GPViT checkpoint.
    """
    if 'patch_embed.proj.weight' in state_dict and any(k.startswith('blocks.') for k in state_dict):
        return dict(state_dict), []
    prefixed = any(k.startswith('backbone.') for k in state_dict)
    backbone = {k[len('backbone.'):] if prefixed else k: v for k, v in state_dict.items()
                if k.startswith('backbone.') or not prefixed}
    if not ('patch_embed.projection.weight' in backbone or 'patch_embed.stem.conv.weight' in backbone):
        return None
    if any('lastnorm' in k or 'norm_group_token' in k for k in backbone):  # mmpretrain port
        renamed = {}
        for k, v in backbone.items():
            k = k.replace('lastnorm.', 'ln1.')
            k = re.sub(r'^patch_embed\.convs\.(\d+)\.(conv|bn)\.',
                       lambda m: f'patch_embed.convs.{3 * int(m[1]) + (m[2] == "bn")}.', k)
            for old, new in _MMPRETRAIN_RENAMES:
                k = k.replace(old, new)
            renamed[k] = v
        backbone = renamed
    out, set_aside = {}, []
    for k, v in backbone.items():
        new = _rename_reference_backbone(k)
        if new is None:
            set_aside.append('backbone.' + k if prefixed else k)
        else:
            out[new] = v
    if prefixed:
        for k, v in state_dict.items():
            if k in _NECK_RULES:
                out[_NECK_RULES[k]] = v
            elif not k.startswith('backbone.'):
                set_aside.append(k)
    return out, set_aside


def _looks_like(state_dict: Dict[str, torch.Tensor]) -> Optional[str]:
    pos = state_dict.get('pos_embed')
    return None if pos is None else _WIDTH_TO_VARIANT.get(pos.shape[-1], f'a GPViT of width {pos.shape[-1]}')


def checkpoint_model_args(state_dict: Dict[str, torch.Tensor]) -> Tuple[str, Dict]:
    """The registered variant and constructor arguments a project-layout state dict fits exactly."""
    name = _looks_like(state_dict)
    if name not in _WIDTH_TO_VARIANT.values():
        raise CheckpointError(f'not a known GPViT variant: {name}')
    head = state_dict.get('head.weight')
    n = state_dict['pos_embed'].shape[1]
    grid = math.isqrt(n)
    size = dict(img_size=grid * 8) if grid * grid == n else {}  # the resolution it was trained at
    return name, dict(
        **size,
        num_classes=0 if head is None else head.shape[0],
        global_pool='group' if 'attn_pool.query' in state_dict else 'avg',
        out_norm_indices=tuple(sorted({int(k.split('.')[1]) for k in state_dict if k.startswith('out_norms.')})),
    )


def _resample_pos_embed(pos: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    n = pos.shape[1]
    side = math.isqrt(n)
    if side * side != n:
        raise CheckpointError(f'pos_embed with {n} positions is not a square grid and cannot be resampled to {grid}')
    return resize_pos_grid(pos.view(1, side, side, -1), grid).flatten(1, 2)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: 'GPViT') -> Dict[str, torch.Tensor]:
    """Convert any supported GPViT checkpoint to ``model``'s layout and check that it fits.

    The position embedding is resampled to the model's grid. A classifier head or attention pool the
    checkpoint lacks (backbone-only checkpoints), per-block output norms a classifier checkpoint lacks, or the
    final norm a detector checkpoint lacks stay as initialised, with a warning; weights the model has
    no place for by construction (no head, other pool, pruned blocks) are dropped; anything else that does not
    fit raises a :class:`CheckpointError` naming the variant the checkpoint looks like.
    """
    state_dict, dense = convert_family_checkpoint(
        state_dict, to_project_layout, _DENSE_PREFIXES, family='GPViT',
        layouts='reference mmcls/mmdet/mmseg, mmpretrain, gpvit', unexpected_in='GPViT classifier', logger=_logger)
    pos = state_dict.get('pos_embed')
    if pos is not None and pos.shape != model.pos_embed.shape and pos.shape[-1] == model.pos_embed.shape[-1]:
        state_dict['pos_embed'] = _resample_pos_embed(pos, model.grid_size)

    # Optional: a classifier head (backbone-only checkpoints); per-block output norms, which a classifier
    # checkpoint does not have (the reference's segmentation backbone starts them fresh); and the final norm
    # of a detector checkpoint, whose ViT-Adapter backbone runs without it (final_norm=False).
    optional = ('head.', 'attn_pool.', 'out_norms.') + (('norm.',) if dense else ())
    return reconcile(state_dict, model, _looks_like(state_dict), optional=lambda k: k.startswith(optional),
                     unused=model._no_place_for, input_conv='patch_embed.stem.conv.weight')



# ---------------------------------------------------------------------------------------------------------------
# Model cfgs and registrations
# ---------------------------------------------------------------------------------------------------------------

def default_out_indices(depth: int) -> Tuple[int, ...]:
    """The blocks ``features_only`` returns by default: four, evenly spaced, ending with the last (the reference
    segmentation backbone's 2, 5, 8, 11 of 12 blocks; 0, 2, 3, 5 of gpvit_mini's 6)."""
    return tuple(sorted({(i + 1) * depth // 4 - 1 for i in range(4)} - {-1}))


def _create_gpvit(variant: str, pretrained: bool = False, **kwargs) -> GPViT:
    # Dense-task features: each requested block output through a LayerNorm of its own (reference GPViTSeg).
    depth = kwargs.get('depth', 12)
    return build_backbone(GPViT, variant, pretrained, checkpoint_filter_fn, depth, default_out_indices(depth),
                          **kwargs)


def _cfg(**kwargs) -> Dict:
    return {
        'url': '',
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (28, 28),
        'crop_pct': 224 / 256,  # reference test pipeline: resize the short side to 256, centre crop 224
        'crop_mode': 'center',
        'interpolation': 'bicubic',
        'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.stem.conv',
        'classifier': 'head',
        'license': 'apache-2.0',
        'paper_ids': 'arXiv:2212.06795',
        'paper_name': 'GPViT: A High Resolution Non-Hierarchical Vision Transformer with Group Propagation',
        'origin_url': 'https://github.com/ChenhongyiYang/GPViT',
        **kwargs,
    }


# The reference release (GitHub release v0.0.1 of ChenhongyiYang/GPViT): mmcls checkpoints, 300 ImageNet epochs.
_RELEASE = 'https://github.com/ChenhongyiYang/GPViT/releases/download/v0.0.1/'

default_cfgs = generate_default_cfgs({
    'gpvit_l1.in1k': _cfg(url=_RELEASE + 'gpvit_l1_in1k_300e.pth'),
    'gpvit_l2.in1k': _cfg(url=_RELEASE + 'gpvit_l2_in1k_300e.pth'),
    'gpvit_l3.in1k': _cfg(url=_RELEASE + 'gpvit_l3_in1k_300e.pth'),
    'gpvit_l4.in1k': _cfg(url=_RELEASE + 'gpvit_l4_in1k_300e.pth'),
    'gpvit_mini': _cfg(input_size=(3, 64, 64), pool_size=(8, 8), crop_pct=1.0),
})

# The four reference variants: width, extra stem convs, pooling (GroupNeck for L1/L2), ImageNet drop-path.
_VARIANTS = {
    'gpvit_l1': dict(embed_dim=216, stem_convs=0, global_pool='group', drop_path_rate=0.2),
    'gpvit_l2': dict(embed_dim=348, stem_convs=1, global_pool='group', drop_path_rate=0.2),
    'gpvit_l3': dict(embed_dim=432, stem_convs=1, global_pool='avg', drop_path_rate=0.3),
    'gpvit_l4': dict(embed_dim=624, stem_convs=2, global_pool='avg', drop_path_rate=0.3),
}


@register_model
def gpvit_l1(pretrained: bool = False, **kwargs) -> GPViT:
    """GPViT-L1: width 216, 9.59M parameters, 6.10 GMACs at 224x224."""
    return _create_gpvit('gpvit_l1', pretrained, **{**_VARIANTS['gpvit_l1'], **kwargs})


@register_model
def gpvit_l2(pretrained: bool = False, **kwargs) -> GPViT:
    """GPViT-L2: width 348, 24.16M parameters, 15.65 GMACs at 224x224."""
    return _create_gpvit('gpvit_l2', pretrained, **{**_VARIANTS['gpvit_l2'], **kwargs})


@register_model
def gpvit_l3(pretrained: bool = False, **kwargs) -> GPViT:
    """GPViT-L3: width 432, 36.65M parameters, 23.44 GMACs at 224x224."""
    return _create_gpvit('gpvit_l3', pretrained, **{**_VARIANTS['gpvit_l3'], **kwargs})


@register_model
def gpvit_l4(pretrained: bool = False, **kwargs) -> GPViT:
    """GPViT-L4: width 624, 75.48M parameters, 48.15 GMACs at 224x224."""
    return _create_gpvit('gpvit_l4', pretrained, **{**_VARIANTS['gpvit_l4'], **kwargs})


@register_model
def gpvit_mini(pretrained: bool = False, **kwargs) -> GPViT:
    """A reduced GPViT for quick experiments and the quickstart; not a paper variant.

    Width 96, 6 blocks with GP blocks at 1 and 4 (16 and 8 group tokens), 6 stripe heads, plain stem,
    average pooling, no drop-path: about 1.0M parameters (10 classes). The architecture is the L-variants' in miniature.
    """
    args = dict(embed_dim=96, depth=6, num_heads=6, group_layers=((1, 16), (4, 8)), group_heads=6,
                global_pool='avg', img_size=64)
    return _create_gpvit('gpvit_mini', pretrained, **{**args, **kwargs})
