"""GC ViT: Global Context Vision Transformers.

Paper: *Global Context Vision Transformers*, Hatamizadeh, Yin, Heinrich, Kautz, Molchanov, ICML 2023
(arXiv 2206.09959).

This is an independent implementation (Apache-2.0) of the function computed by the reference code
(github.com/NVlabs/GCVit @8e1941f, whose code is under a non-commercial licence and was not used), checked
against that code's outputs and against timm's ``timm.models.gcvit``. The released weights are CC-BY-NC-SA-4.0.

Architecture. A stride-4 conv stem, then four stages of windowed attention at strides 4, 8, 16, 32. Inside a
stage, even blocks run local window self-attention and odd blocks *global* window attention, in which the
queries are not projected from the window's tokens but come from a "global query": the stage input run through a
few fused-MBConv blocks and max-pools down to exactly one window of tokens, shared by every window of the image.
Both attentions add a Swin-v1 relative-position bias. Between stages, a fused-MBConv + strided conv halves the
resolution and doubles the width.

Layout. Token maps are channels-last ``(B, H, W, C)`` between and inside blocks, so LayerNorm and Linear act on
the last dimension; the conv parts see ``permute(0, 3, 1, 2)`` views (channels-last memory, no copies).

Any input size. The reference classifier runs only at its training resolution (every stage map must be a
multiple of its window and the pooled global query exactly one window). Here every block zero-pads its map to
window multiples after ``norm1`` (no attention mask, as the reference detection backbone) and crops back, and the
global query is resized bicubically to the window grid when the pooled map is not one window. At the native
resolution neither happens and the function is exactly the reference classifier's. Relative-position tables
trained at one window size are resized bicubically when loaded into a model built for another (e.g. the
reference detection backbone's windows of 24), in :func:`checkpoint_filter_fn`.
"""
import logging
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerScale, Mlp, RelPosBias, calculate_drop_path_rates, register_notrace_function, to_2tuple
from timm.layers.pos_embed_rel import resize_rel_pos_bias_table_simple
from timm.models import generate_default_cfgs, register_model
from timm.models._manipulate import checkpoint

from ..checkpoint import CheckpointError, convert_family_checkpoint, reconcile
from .backbone import MIN_INPUT_SIZE, Backbone, build_backbone, init_linear_and_layernorm  # noqa: F401 (re-export)
from .layers import DropPathAdd, attention, pad_to_multiple, window_partition, window_reverse

_logger = logging.getLogger(__name__)

__all__ = ['GCViT', 'SqueezeExcite', 'MbConvBlock', 'Downsample', 'Stem', 'GlobalQueryGen', 'WindowAttention',
           'GCViTBlock', 'GCViTStage', 'checkpoint_filter_fn', 'to_project_layout', 'to_timm_layout',
           'timm_counterpart']

WINDOW_RATIO = (32, 32, 16, 32)  # reference windows: img_size / ratio, i.e. 7, 7, 14, 7 at 224
QUERY_DEPTHS = (3, 2, 1, 1)  # fused-MBConv blocks of each stage's global query generator
Size2 = Tuple[int, int]


class SqueezeExcite(nn.Module):
    """Squeeze-excitation without biases: ``x * sigmoid(fc2(GELU(fc1(mean_hw(x)))))``, reduced to ``int(C / 4)``.

    The math of timm's ``SEModule(bias=False)``, with ``nn.Linear`` on the pooled ``(B, C)`` vector instead of
    1x1 convolutions on a 1x1 map: a matrix-vector product should not go through the convolution backend (on a
    busy 2-core CPU its thread synchronisation made each call cost milliseconds). The weights are
    ``(out, in)``, as in the reference; timm's ``(out, in, 1, 1)`` ones are reshaped when loaded.
    ``(B, C, H, W)`` -> ``(B, C, H, W)``.
    """

    def __init__(self, dim: int, rd_ratio: float = 0.25, act_layer: type = nn.GELU, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        rd = int(dim * rd_ratio)
        self.fc1 = nn.Linear(dim, rd, bias=False, **dd)
        self.act = act_layer()
        self.fc2 = nn.Linear(rd, dim, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(self.act(self.fc1(x.mean(dim=(2, 3)))))
        return x * s.sigmoid()[:, :, None, None]


class MbConvBlock(nn.Module):
    """The reference's "modified fused-MBConv": ``x + pw1x1(SE(GELU(dw3x3(x))))``.

    No expansion, normalisation or bias; the squeeze-excitation reduces to ``int(C / 4)`` channels (no bias,
    GELU, sigmoid gate). ``(B, C, H, W)`` -> ``(B, C, H, W)``; channels-last memory in gives channels-last out.
    """

    def __init__(self, dim: int, act_layer: type = nn.GELU, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False, **dd)
        self.act = act_layer()
        self.se = SqueezeExcite(dim, 0.25, act_layer, **dd)
        self.conv_pw = nn.Conv2d(dim, dim, 1, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_pw(self.se(self.act(self.conv_dw(x))))


class Downsample(nn.Module):
    """The reference's ``ReduceSize``: LayerNorm, fused-MBConv, 3x3/2 conv to ``dim_out``, LayerNorm.

    ``(B, H, W, dim)`` -> ``(B, ceil(H / 2), ceil(W / 2), dim_out)``, channels-last in and out. Used in the stem
    (``dim_out == dim``) and ahead of stages 1-3 (``dim_out == 2 * dim``).
    """

    def __init__(
            self,
            dim: int,
            dim_out: Optional[int] = None,
            act_layer: type = nn.GELU,
            norm_layer: type = nn.LayerNorm,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        dim_out = dim_out or dim
        self.norm1 = norm_layer(dim, **dd)
        self.conv_block = MbConvBlock(dim, act_layer, **dd)
        self.reduction = nn.Conv2d(dim, dim_out, 3, stride=2, padding=1, bias=False, **dd)
        self.norm2 = norm_layer(dim_out, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x).permute(0, 3, 1, 2)
        x = self.reduction(self.conv_block(x))
        return self.norm2(x.permute(0, 2, 3, 1))


class Stem(nn.Module):
    """3x3/2 conv (with bias) then a same-width :class:`Downsample`: ``(B, 3, H, W)`` -> ``(B, H/4, W/4, C)``."""

    def __init__(
            self,
            in_chans: int = 3,
            dim: int = 64,
            act_layer: type = nn.GELU,
            norm_layer: type = nn.LayerNorm,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim, 3, stride=2, padding=1, **dd)
        self.down = Downsample(dim, dim, act_layer, norm_layer, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A channels-last image makes conv1's output channels-last, so the permute below is free; the alternative
        # copies the 5x larger output map for the LayerNorm.
        x = self.conv1(x.contiguous(memory_format=torch.channels_last))
        return self.down(x.permute(0, 2, 3, 1))


@register_notrace_function  # size-dependent: FX records the call
def resize_to_window(x: torch.Tensor, window_size: Size2) -> torch.Tensor:
    """``(B, C, h, w)`` -> ``(B, C, wh, ww)``: bicubic resize, unless the map already is one window."""
    if x.shape[-2] == window_size[0] and x.shape[-1] == window_size[1]:
        return x
    return F.interpolate(x, size=[window_size[0], window_size[1]], mode='bicubic', align_corners=False)


class GlobalQueryGen(nn.Module):
    """The global query of one stage: ``depth`` fused-MBConv blocks, each followed by a 3x3/2 max-pool if
    ``pool``, so that the stage map shrinks to one window (56 -> 7 in stage 0 at 224).

    The reference computes it once per stage from the stage input and shares it among the stage's global blocks
    and all windows of an image. When the pooled map is not exactly one window (inputs other than the training
    size, dense models with other windows) it is resized bicubically to the window grid, as the reference
    detection backbone does. ``(B, H, W, C)`` -> ``(B, wh * ww, C)``.
    """

    def __init__(
            self,
            dim: int,
            depth: int,
            pool: bool,
            window_size: Size2,
            act_layer: type = nn.GELU,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.blocks = nn.ModuleList([MbConvBlock(dim, act_layer, **dd) for _ in range(depth)])
        self.pool = pool
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        for blk in self.blocks:
            x = blk(x)
            if self.pool:
                x = F.max_pool2d(x, 3, stride=2, padding=1)
        return resize_to_window(x, self.window_size).flatten(2).transpose(1, 2)


class RelPosBiasGather(RelPosBias):
    """timm's ``RelPosBias`` (same table, index and ``(1, heads, N, N)`` bias), gathered head-major.

    timm indexes the ``(T, heads)`` table with ``table[index]`` and permutes the ``(N * N, heads)`` result to
    heads-first, a copy. Here ``index_select`` along the table's transposed view writes ``(heads, N * N)``
    directly. The same values; what changes is the backward. That of ``table[index]`` is an accumulating
    ``index_put``, an element-wise scatter that costs GC ViT-T's 14x14 windows 3.2 ms per block, 10 % of the
    attention's forward + backward; that of ``index_select`` adds rows and takes 0.33 ms (2 threads).
    """

    def get_bias(self) -> torch.Tensor:
        n = self.window_area + self.prefix_tokens
        bias = self.relative_position_bias_table.t().index_select(1, self.relative_position_index)
        return bias.view(1, -1, n, n)


class WindowAttention(nn.Module):
    """Window attention with a relative-position bias, local or global.

    Local: ``q, k, v = Linear(x)``. Global: ``k, v = Linear(x)`` and ``q`` is the image's global query (not
    projected), the same for every window of that image. Both scale by ``head_dim ** -0.5`` and add the learned
    Swin-v1 bias (:class:`RelPosBiasGather`, ``(1, heads, N, N)``), which runs in ``scaled_dot_product_attention`` as
    an additive mask.

    ``(B * nW, N, C)`` windows, image-major (all windows of image 0 first), and for global attention the
    ``(B, N, C)`` global queries -> ``(B * nW, N, C)``.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: Size2,
            use_global: bool = False,
            qkv_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'WindowAttention: dim {dim} is not a multiple of num_heads {num_heads}')
        self.num_heads = num_heads
        self.window_size = window_size
        self.use_global = use_global
        self.qkv = nn.Linear(dim, dim * (2 if use_global else 3), bias=qkv_bias, **dd)
        self.rel_pos = RelPosBiasGather(window_size, num_heads, **dd)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, q_global: Optional[torch.Tensor] = None) -> torch.Tensor:
        qkv = self.qkv(x)
        if self.use_global:
            if q_global is None:
                raise ValueError('global window attention needs the stage\'s global query')
            k, v = qkv.chunk(2, dim=-1)
            BW, B = x.shape[0], q_global.shape[0]
            # One query per image, repeated for its nW windows (image-major, like the windows). A view for B == 1.
            q = q_global.to(k.dtype).unsqueeze(1).expand(B, BW // B, -1, -1).flatten(0, 1)
        else:
            q, k, v = qkv.chunk(3, dim=-1)
        bias = self.rel_pos.get_bias().to(q.dtype)  # contiguous (a strided mask slows the SDPA kernel)
        x = attention(q, k, v, self.num_heads, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0.)
        return self.proj_drop(self.proj(x))


class GCViTBlock(nn.Module):
    """Pre-norm transformer block on ``(B, H, W, C)`` maps.

    ``x = x + drop_path(gamma1 * attn(LN(x)))``, ``x = x + drop_path(gamma2 * mlp(LN(x)))``, with learnable layer
    scales ``gamma`` only in the S/B/L variants. The attention runs on non-overlapping windows (no shift, no mask);
    a map that the windows do not tile is zero-padded bottom/right after the norm and cropped back afterwards.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: Size2,
            use_global: bool = False,
            mlp_ratio: float = 3.,
            qkv_bias: bool = True,
            layer_scale: Optional[float] = None,
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
        self.window_size = window_size
        self.norm1 = norm_layer(dim, **dd)
        self.attn = WindowAttention(dim, num_heads, window_size, use_global, qkv_bias, attn_drop, proj_drop, **dd)
        self.ls1 = LayerScale(dim, layer_scale, **dd) if layer_scale is not None else nn.Identity()
        self.drop_path1 = DropPathAdd(drop_path)
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.ls2 = LayerScale(dim, layer_scale, **dd) if layer_scale is not None else nn.Identity()
        self.drop_path2 = DropPathAdd(drop_path)

    def _window_attn(self, x: torch.Tensor, q_global: Optional[torch.Tensor]) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``: zero-pad to window multiples, attend per window, crop back."""
        H, W = x.shape[1], x.shape[2]
        x = pad_to_multiple(x, self.window_size, channels_last=True)
        windows = window_partition(x, self.window_size).flatten(1, 2)  # (B * nW, wh * ww, C)
        out = self.attn(windows, q_global).unflatten(1, self.window_size)
        return window_reverse(out, self.window_size, x.shape[1:3])[:, :H, :W]

    def _attn_branch(self, x: torch.Tensor, q_global: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._window_attn(self.norm1(x), q_global)

    def _mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor, q_global: Optional[torch.Tensor] = None) -> torch.Tensor:
        # x + DropPath(gamma * branch) in one pass each: the layer scale's gamma goes into the residual add
        # (``hasattr`` is resolved when TorchScript compiles, so the Identity of T and smaller is never asked for it)
        gamma1: Optional[torch.Tensor] = None
        gamma2: Optional[torch.Tensor] = None
        if hasattr(self.ls1, 'gamma'):
            gamma1, gamma2 = self.ls1.gamma, self.ls2.gamma
        if not torch.jit.is_scripting():  # in training only the kept samples' branches are computed
            # the global queries are per image: taken with the samples (local attention ignores them)
            queries = (q_global,) if q_global is not None and self.attn.use_global else ()
            x = self.drop_path1.add_branch(self._attn_branch, x, *queries, scale=gamma1)
            return self.drop_path2.add_branch(self._mlp_branch, x, scale=gamma2)
        x = self.drop_path1(x, self._attn_branch(x, q_global), gamma1)
        return self.drop_path2(x, self._mlp_branch(x), gamma2)


class GCViTStage(nn.Module):
    """Optional :class:`Downsample`, the global query generator, then ``depth`` blocks alternating local (even)
    and global (odd) attention. ``(B, H, W, C_in)`` -> ``(B, H', W', C)``, ``H' = ceil(H / 2)`` after a downsample.
    """

    def __init__(
            self,
            dim: int,
            depth: int,
            num_heads: int,
            window_size: Size2,
            query_depth: int,
            query_pool: bool,
            downsample_from: Optional[int] = None,
            mlp_ratio: float = 3.,
            qkv_bias: bool = True,
            layer_scale: Optional[float] = None,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: Sequence[float] = (),
            act_layer: type = nn.GELU,
            norm_layer: type = nn.LayerNorm,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.downsample = (Downsample(downsample_from, dim, act_layer, norm_layer, **dd) if downsample_from
                           else nn.Identity())
        self.global_block = GlobalQueryGen(dim, query_depth, query_pool, window_size, act_layer, **dd)
        self.blocks = nn.ModuleList([
            GCViTBlock(
                dim, num_heads, window_size, use_global=i % 2 == 1, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                layer_scale=layer_scale, proj_drop=proj_drop, attn_drop=attn_drop,
                drop_path=drop_path[i] if drop_path else 0., act_layer=act_layer, norm_layer=norm_layer, **dd)
            for i in range(depth)])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        q_global = self.global_block(x)
        for blk in self.blocks:  # not timm's checkpoint_seq: the blocks take the global query as well
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = checkpoint(blk, x, q_global, use_reentrant=False)
            else:
                x = blk(x, q_global)
        return x


def _per_stage_windows(
        window_size: Optional[Union[int, Sequence[int]]],
        img_size: Size2,
        num_stages: int,
) -> Tuple[Size2, ...]:
    if window_size is None:
        return tuple((max(img_size[0] // r, 1), max(img_size[1] // r, 1)) for r in WINDOW_RATIO)
    if isinstance(window_size, int):
        window_size = (window_size,) * num_stages
    if len(window_size) != num_stages or any(not isinstance(w, int) or w < 1 for w in window_size):
        raise ValueError(f'window_size must be a positive int or {num_stages} positive ints, got {window_size!r}')
    return tuple((w, w) for w in window_size)


class GCViT(Backbone):
    """GC ViT backbone and classifier.

    ``forward_features`` returns the final map ``(B, 8C, H/32, W/32)`` after the final LayerNorm; the head
    average-pools it and applies a Linear classifier. Dense models (``features_only=True``) return the four stage
    maps through LayerNorms of their own, as the reference detection backbone does. The timm API
    (:class:`~gpvit.models.backbone.Backbone`) runs the stages as its levels; their widths differ, so only the last
    stage falls back to the final norm.
    """

    level_attr = 'stages'
    family = 'GCViT'
    global_pools = ('avg', '')
    final_norm_on_all_levels = False

    def __init__(
            self,
            img_size: Union[int, Size2] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 64,
            depths: Sequence[int] = (3, 4, 19, 5),
            num_heads: Sequence[int] = (2, 4, 8, 16),
            window_size: Optional[Union[int, Sequence[int]]] = None,
            mlp_ratio: float = 3.,
            qkv_bias: bool = True,
            layer_scale: Optional[float] = None,
            drop_rate: float = 0.,
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
            img_size: training resolution. With ``window_size=None`` it sets the windows (``img_size / (32, 32,
                16, 32)``: 7, 7, 14, 7 at 224); it also decides whether stage 2's global query pools (below). Any
                input size >= 32 runs.
            in_chans: input channels.
            num_classes: classifier outputs; 0 for no classifier.
            global_pool: ``'avg'`` or ``''`` (no pooling, the head sees the map).
            embed_dim: width C of stage 0; stage i has ``C * 2**i`` channels.
            depths: blocks per stage.
            num_heads: attention heads per stage.
            window_size: attention window per stage (an int for all stages), e.g. 24 for the reference detection
                backbone. Stage 2's global query max-pools once unless its window equals the stage-2 map at
                ``img_size`` (the reference's rule: no pool in the classifiers, a pool with windows of 24).
            mlp_ratio: MLP hidden size / width.
            qkv_bias: bias of the q/k/v projections.
            layer_scale: initial value of the learnable per-channel residual scales (1e-5 in S/B/L), None for none.
            drop_rate: dropout before the classifier.
            proj_drop_rate: dropout after projections and in MLPs.
            attn_drop_rate: attention dropout.
            drop_path_rate: stochastic depth of the last block, linear from 0 over all blocks.
            out_norm_indices: stages whose intermediate outputs get a LayerNorm of their own in
                ``forward_intermediates(norm=True)`` (the reference detection backbone's ``norm0..norm3``).
            weight_init: ``'reference'`` reproduces the reference initialisation; ``'skip'`` leaves PyTorch's.
            device: where the parameters are created (timm's factory kwargs).
            dtype: their dtype.
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self._check_global_pool(global_pool)
        num_stages = len(depths)
        if num_stages != 4 or len(num_heads) != 4:
            raise ValueError(f'GC ViT has 4 stages: depths {tuple(depths)} and num_heads {tuple(num_heads)} must give '
                             f'4 values each')
        img_size = to_2tuple(img_size)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.img_size = img_size
        self.output_fmt = 'NCHW'
        self.window_size = _per_stage_windows(window_size, img_size, num_stages)
        dims = [embed_dim * 2 ** i for i in range(num_stages)]
        self.num_features = self.head_hidden_size = dims[-1]

        self.stem = Stem(in_chans, embed_dim, **dd)
        dpr = calculate_drop_path_rates(drop_path_rate, sum(depths))  # linear over all blocks
        stages = []
        for i in range(num_stages):
            feat = (img_size[0] // 2 ** (i + 2), img_size[1] // 2 ** (i + 2))
            stages.append(GCViTStage(
                dims[i], depths[i], num_heads[i], self.window_size[i],
                query_depth=QUERY_DEPTHS[i],
                query_pool=i < 2 or (i == 2 and self.window_size[i] != feat),
                downsample_from=dims[i - 1] if i else None,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, layer_scale=layer_scale, proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate, drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])], **dd,
            ))
        self.stages = nn.Sequential(*stages)
        self.feature_info = [dict(num_chs=dims[i], reduction=2 ** (i + 2), module=f'stages.{i}')
                             for i in range(num_stages)]
        self.norm = nn.LayerNorm(dims[-1], **dd)
        self.out_norms = nn.ModuleDict({
            str(i): nn.LayerNorm(dims[i], **dd) for i in sorted({i % num_stages for i in out_norm_indices})})
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes, **dd) if num_classes > 0 else nn.Identity()
        self._apply_weight_init(weight_init)

    @torch.no_grad()
    def _init_reference(self) -> None:
        """The reference initialisation: every Linear truncated normal (std 0.02) with zero bias, LayerNorms
        1 / 0, relative-position tables truncated normal 0.02 (done by ``RelPosBias``); convs keep PyTorch's."""
        init_linear_and_layernorm(self)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """The relative-position tables (biases, norms and layer scales are 1-D and excluded by timm anyway)."""
        return {n for n, _ in self.named_parameters() if n.endswith('relative_position_bias_table')}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.(?:downsample|global_block)', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm|^out_norms', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (non-reentrant, so it works under DDP); the stages do it,
        as their blocks share the stage's global query."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def _input_weight(self) -> torch.Tensor:
        return self.stem.conv1.weight

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """The stride-4 conv stem: ``(B, 3, H, W)`` -> ``(B, H/4, W/4, C)`` (sizes rounded up at each stride)."""
        return self.stem(x)

    def _forward_levels(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)  # the stages checkpoint their blocks


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------

# Reference (NVlabs) fused-MBConv Sequential indices -> project names.
_MBCONV = {'0': 'conv_dw', '2.fc.0': 'se.fc1', '2.fc.2': 'se.fc2', '3': 'conv_pw'}
_MBCONV_RE = r'conv\.(0|2\.fc\.0|2\.fc\.2|3)\.weight$'
# Reference names -> project names. First match wins; None drops the key (computed buffers).
_REFERENCE_RULES = [
    (r'^(?:levels\.\d+\.blocks\.\d+\.attn\.)relative_position_index$', None),
    (r'^patch_embed\.proj\.', lambda m: 'stem.conv1.'),
    (r'^patch_embed\.conv_down\.' + _MBCONV_RE, lambda m: f'stem.down.conv_block.{_MBCONV[m[1]]}.weight'),
    (r'^patch_embed\.conv_down\.(norm1|norm2|reduction)\.', lambda m: f'stem.down.{m[1]}.'),
    (r'^levels\.(\d+)\.downsample\.' + _MBCONV_RE,
     lambda m: f'stages.{int(m[1]) + 1}.downsample.conv_block.{_MBCONV[m[2]]}.weight'),
    (r'^levels\.(\d+)\.downsample\.(norm1|norm2|reduction)\.', lambda m: f'stages.{int(m[1]) + 1}.downsample.{m[2]}.'),
    (r'^levels\.(\d+)\.q_global_gen\.to_q_global\.(\d+)\.' + _MBCONV_RE,
     lambda m: f'stages.{m[1]}.global_block.blocks.{m[2]}.{_MBCONV[m[3]]}.weight'),
    (r'^levels\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table$',
     lambda m: f'stages.{m[1]}.blocks.{m[2]}.attn.rel_pos.relative_position_bias_table'),
    (r'^levels\.(\d+)\.blocks\.(\d+)\.gamma([12])$', lambda m: f'stages.{m[1]}.blocks.{m[2]}.ls{m[3]}.gamma'),
    (r'^levels\.(\d+)\.blocks\.(\d+)\.((?:norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(?:weight|bias))$',
     lambda m: f'stages.{m[1]}.blocks.{m[2]}.{m[3]}'),
    (r'^norm\.', lambda m: 'norm.'),
    (r'^norm(\d)\.', lambda m: f'out_norms.{m[1]}.'),  # reference detection backbone's per-level norms
    (r'^head\.', lambda m: 'head.'),
]
_REFERENCE_RULES = [(re.compile(p), r) for p, r in _REFERENCE_RULES]
# timm gcvit names -> project names (everything else is the same).
_TIMM_RULES = [
    (re.compile(r'^stages\.(\d+)\.global_block\.blocks\.conv(\d+)\.'),
     lambda m: f'stages.{m[1]}.global_block.blocks.{int(m[2]) - 1}.'),
    (re.compile(r'^stages\.\d+\.norm\.'), lambda m: 'norm.'),
    (re.compile(r'^head\.fc\.'), lambda m: 'head.'),
]
# Top-level prefixes of detector / segmentor checkpoints (mmdet, mmseg) whose weights are not the backbone's.
_DENSE_PREFIXES = ('neck.', 'rpn_head.', 'roi_head.', 'bbox_head.', 'mask_head.', 'decode_head.', 'auxiliary_head.')


def _rename(key: str, rules) -> Tuple[bool, Optional[str]]:
    for pattern, repl in rules:
        m = pattern.search(key)
        if m:
            return True, None if repl is None else repl(m) + key[m.end():]
    return False, key


def to_project_layout(state_dict: Dict[str, torch.Tensor]) -> Optional[Tuple[Dict[str, torch.Tensor], List[str]]]:
    """Convert a GC ViT state dict of any supported layout to this project's layout.

    Recognised: the project's own layout; the reference (NVlabs) classifier layout (``patch_embed``, ``levels``,
    persistent ``relative_position_index`` buffers, which are dropped); the reference detection backbone
    (``norm0..3``), also inside an mmdet checkpoint (``backbone.`` prefix, the detector's other parts set aside);
    timm's ``gcvit`` layout (``stages.3.norm``, ``head.fc``, ``global_block.blocks.conv{k}``, SE weights shaped as
    1x1 convs, which are flattened to the project's Linear shape).

    Returns:
        ``(state_dict, set_aside)`` with the keys set aside as belonging to another model part, or None if this
        is not a GC ViT checkpoint.
    """
    set_aside = []
    if any(k.startswith('backbone.') for k in state_dict):
        set_aside = [k for k in state_dict if not k.startswith('backbone.')]
        state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
    if 'patch_embed.proj.weight' in state_dict and any(k.startswith('levels.') for k in state_dict):
        out = {}
        for k, v in state_dict.items():
            matched, new = _rename(k, _REFERENCE_RULES)
            if not matched:
                set_aside.append(k)
            elif new is not None:
                out[new] = v
        return out, set_aside
    if 'stem.conv1.weight' in state_dict and any(k.startswith('stages.') for k in state_dict):
        out = {}
        for k, v in state_dict.items():
            k = _rename(k, _TIMM_RULES)[1]
            out[k] = v.flatten(1) if k.endswith(('se.fc1.weight', 'se.fc2.weight')) and v.ndim == 4 else v
        return out, set_aside
    return None


# Reference architectures by (embed_dim, depths, MLP hidden / width, layer scale).
_ARCHS = {
    (64, (2, 2, 6, 2), 3, False): 'gc_vit_xxtiny',
    (64, (3, 4, 6, 5), 3, False): 'gc_vit_xtiny',
    (64, (3, 4, 19, 5), 3, False): 'gc_vit_tiny',
    (64, (3, 4, 29, 5), 3, False): 'gc_vit_tiny2',
    (96, (3, 4, 19, 5), 2, True): 'gc_vit_small',
    (96, (3, 4, 23, 5), 3, True): 'gc_vit_small2',
    (128, (3, 4, 19, 5), 2, True): 'gc_vit_base',
    (192, (3, 4, 19, 5), 2, True): 'gc_vit_large',
}
# The large architecture was released at three resolutions, told apart by the windows of their tables.
_LARGE_BY_WINDOWS = {(12, 12, 24, 12): 'gc_vit_large_384_21k', (16, 16, 32, 16): 'gc_vit_large_512_21k'}


def _architecture(state_dict: Dict[str, torch.Tensor]) -> Optional[Tuple[Tuple, Tuple[int, ...]]]:
    """``((embed_dim, depths, mlp_ratio, layer_scale), windows)`` of a project-layout state dict."""
    stem = state_dict.get('stem.conv1.weight')
    fc1 = state_dict.get('stages.0.blocks.0.mlp.fc1.weight')
    if stem is None or fc1 is None:
        return None
    depths, windows = [], []
    for i in range(8):
        blocks = {int(k.split('.')[3]) for k in state_dict if k.startswith(f'stages.{i}.blocks.')}
        if not blocks:
            break
        depths.append(max(blocks) + 1)
        table = state_dict.get(f'stages.{i}.blocks.0.attn.rel_pos.relative_position_bias_table')
        windows.append(0 if table is None else (round(table.shape[0] ** 0.5) + 1) // 2)
    layer_scale = 'stages.0.blocks.0.ls1.gamma' in state_dict
    return (stem.shape[0], tuple(depths), fc1.shape[0] // fc1.shape[1], layer_scale), tuple(windows)


def _variant_windows(name: str) -> Tuple[int, ...]:
    img_size = _VARIANTS[name].get('img_size', 224)
    return tuple(img_size // r for r in WINDOW_RATIO)


def _identify(state_dict: Dict[str, torch.Tensor]) -> Tuple[Optional[str], str]:
    """``(registered variant or None, description)`` of a project-layout state dict, for loading and errors."""
    found = _architecture(state_dict)
    if found is None:
        return None, 'not a GC ViT'
    arch, windows = found
    name = _ARCHS.get(arch)
    if name is None:
        dim, depths, ratio, ls = arch
        return None, f'a GC ViT of width {dim}, depths {depths}, MLP ratio {ratio}, {"with" if ls else "no"} layer scale'
    if name == 'gc_vit_large':
        name = _LARGE_BY_WINDOWS.get(windows, name)
    if windows == _variant_windows(name):
        return name, name
    return name, f'{name} with windows {windows}'


def _looks_like(state_dict: Dict[str, torch.Tensor]) -> str:
    return _identify(state_dict)[1]


def checkpoint_model_args(state_dict: Dict[str, torch.Tensor]) -> Tuple[str, Dict]:
    """The registered variant and constructor arguments a project-layout state dict fits exactly."""
    name, description = _identify(state_dict)
    if name is None:
        raise CheckpointError(f'not a known GC ViT variant: {description}')
    head = state_dict.get('head.weight')
    kwargs = dict(num_classes=0 if head is None else head.shape[0])
    out_norms = tuple(sorted({int(k.split('.')[1]) for k in state_dict if k.startswith('out_norms.')}))
    if out_norms:
        kwargs['out_norm_indices'] = out_norms
    windows = _architecture(state_dict)[1]
    if windows != _variant_windows(name):
        kwargs['window_size'] = windows
    return name, kwargs


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: GCViT) -> Dict[str, torch.Tensor]:
    """Convert any supported GC ViT checkpoint to ``model``'s layout and check that it fits.

    Relative-position tables of another window size are resized bicubically to the model's windows (a classifier
    checkpoint into a dense model with windows of 24, as the reference detection backbone does). A classifier
    head or out norms the checkpoint lacks (and the final norm, in dense models) stay as initialised, with a
    warning; weights the model has no place for by construction (no head, pruned stages, no final norm) are
    dropped; anything else that does not fit raises a :class:`CheckpointError` naming the variant the checkpoint
    looks like.
    """
    state_dict, _ = convert_family_checkpoint(
        state_dict, to_project_layout, _DENSE_PREFIXES, family='GC ViT', layouts='reference NVlabs, timm gcvit, gpvit',
        unexpected_in='GC ViT', logger=_logger)
    looks_like = _looks_like(state_dict)

    own = model.state_dict()
    for key, table in state_dict.items():
        if key.endswith('relative_position_bias_table') and key in own:
            target = own[key]
            if table.shape != target.shape and table.ndim == 2 and table.shape[1] == target.shape[1]:
                module = model.get_submodule(key.rsplit('.', 1)[0])
                state_dict[key] = resize_rel_pos_bias_table_simple(table, module.window_size, tuple(target.shape))

    # The final norm is optional where no output uses it (a dense model's last stage has its own out norm; the
    # reference detection backbone has no final norm), as are the head and the out norms of dense models.
    optional = ('head.', 'out_norms.') + (('norm.',) if str(len(model.stages) - 1) in model.out_norms else ())
    return reconcile(state_dict, model, looks_like, optional=lambda k: k.startswith(optional),
                     unused=model._no_place_for, input_conv='stem.conv1.weight')



def to_timm_layout(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """This project's layout -> timm's ``GlobalContextVit`` layout (the inverse of the timm branch of
    :func:`to_project_layout`): the final norm goes into the last stage, the head under ``head.fc``, the global
    query blocks are named ``conv{k}`` from 1, and the SE weights become 1x1 convs. Dense models' out norms
    have no place in timm's model and are left out."""
    last = max(int(k.split('.')[1]) for k in state_dict if k.startswith('stages.'))
    out = {}
    for k, v in state_dict.items():
        if k.startswith('out_norms.'):
            continue
        k = re.sub(r'^(stages\.\d+\.global_block\.blocks\.)(\d+)\.', lambda m: f'{m[1]}conv{int(m[2]) + 1}.', k)
        k = re.sub(r'^norm\.', f'stages.{last}.norm.', k)
        k = re.sub(r'^head\.', 'head.fc.', k)
        out[k] = v[:, :, None, None] if k.endswith(('se.fc1.weight', 'se.fc2.weight')) and v.ndim == 2 else v
    return out


# The variants timm registers (under its own names); the others are built from timm's GlobalContextVit class.
TIMM_NAMES = {'gc_vit_xxtiny': 'gcvit_xxtiny', 'gc_vit_xtiny': 'gcvit_xtiny', 'gc_vit_tiny': 'gcvit_tiny',
              'gc_vit_small': 'gcvit_small', 'gc_vit_base': 'gcvit_base'}


def timm_counterpart(name: str, model: Optional[GCViT] = None, **kwargs) -> nn.Module:
    """timm's implementation of the GC ViT variant ``name`` (``timm.models.gcvit``), in eval mode.

    With ``model`` (a classifier of that variant, as built by this project), timm's model gets its weights
    through :func:`to_timm_layout`, so both compute the same function. ``kwargs`` go to timm's constructor (e.g.
    ``drop_path_rate``, which timm spreads over the blocks as this project does). For comparisons and
    benchmarks; note that timm <= 1.0.30 mixes the images of a batch in global attention (fixed in 1.0.31).
    """
    import timm
    from timm.models.gcvit import GlobalContextVit
    if name not in _VARIANTS:
        raise ValueError(f'unknown GC ViT variant {name!r}; known: {sorted(_VARIANTS)}')
    args = {k: v for k, v in _VARIANTS[name].items() if k != 'drop_path_rate'}
    num_classes = 1000 if model is None else model.num_classes
    if model is not None and model.window_size != _per_stage_windows(None, model.img_size, len(model.stages)):
        raise ValueError(f'timm has no counterpart of a GC ViT with windows {model.window_size} (dense model)')
    if name in TIMM_NAMES:
        twin = timm.create_model(TIMM_NAMES[name], num_classes=num_classes, **kwargs)
    else:
        twin = GlobalContextVit(num_classes=num_classes, **{**args, **kwargs})
    if model is not None:
        twin.load_state_dict(to_timm_layout(model.state_dict()))
    return twin.eval()


# ---------------------------------------------------------------------------------------------------------------
# Model cfgs and registrations
# ---------------------------------------------------------------------------------------------------------------

def _cfg(**kwargs) -> Dict:
    return {
        'url': '',
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'crop_pct': 1.0,
        'crop_mode': 'center',
        'interpolation': 'bicubic',
        'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv1',
        'classifier': 'head',
        'license': 'cc-by-nc-sa-4.0',  # the weights; the code is Apache-2.0
        'paper_ids': 'arXiv:2206.09959',
        'paper_name': 'Global Context Vision Transformers',
        'origin_url': 'https://github.com/NVlabs/GCVit',
        **kwargs,
    }


_HF = 'https://huggingface.co/nvidia/GCViT/resolve/main/'

# The reference's crop_pct / interpolation per variant. The 384 / 512 models resize without cropping ('squash').
default_cfgs = generate_default_cfgs({
    'gc_vit_xxtiny.in1k': _cfg(url=_HF + 'gcvit_1k_xxtiny.pth.tar', crop_pct=1.0),
    'gc_vit_xtiny.in1k': _cfg(url=_HF + 'gcvit_1k_xtiny.pth.tar', crop_pct=0.875),
    'gc_vit_tiny.in1k': _cfg(url=_HF + 'gcvit_1k_tiny.pth.tar', crop_pct=1.0),
    'gc_vit_tiny2.in1k': _cfg(url=_HF + 'gcvit_1k_tiny2.pth.tar', crop_pct=0.875),
    'gc_vit_small.in1k': _cfg(url=_HF + 'gcvit_1k_small.pth.tar', crop_pct=0.875),
    'gc_vit_small2.in1k': _cfg(url=_HF + 'gcvit_1k_small2.pth.tar', crop_pct=0.875),
    'gc_vit_base.in1k': _cfg(url=_HF + 'gcvit_1k_base.pth.tar', crop_pct=1.0),
    'gc_vit_large.in1k': _cfg(url=_HF + 'gcvit_1k_large.pth.tar', crop_pct=1.0),
    # Released on Google Drive only (see the NVlabs README); load the downloaded file with create_model(checkpoint=).
    'gc_vit_large_224_21k.in21k_ft_in1k': _cfg(crop_pct=1.0),
    'gc_vit_large_384_21k.in21k_ft_in1k': _cfg(
        url=_HF + 'gcvit_21k_large_384.pth.tar', input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0,
        crop_mode='squash'),
    'gc_vit_large_512_21k.in21k_ft_in1k': _cfg(
        url=_HF + 'gcvit_21k_large_512.pth.tar', input_size=(3, 512, 512), pool_size=(16, 16), crop_pct=1.0,
        crop_mode='squash'),
})

# The eleven reference variants: architecture and ImageNet drop-path rate. Windows follow img_size (7, 7, 14, 7 at
# 224; 12, 12, 24, 12 at 384; 16, 16, 32, 16 at 512); head_dim is 32 everywhere.
_T = dict(embed_dim=64, num_heads=(2, 4, 8, 16), mlp_ratio=3.)
_L = dict(embed_dim=192, depths=(3, 4, 19, 5), num_heads=(6, 12, 24, 48), mlp_ratio=2., layer_scale=1e-5)
_VARIANTS = {
    'gc_vit_xxtiny': dict(_T, depths=(2, 2, 6, 2), drop_path_rate=0.2),
    'gc_vit_xtiny': dict(_T, depths=(3, 4, 6, 5), drop_path_rate=0.2),
    'gc_vit_tiny': dict(_T, depths=(3, 4, 19, 5), drop_path_rate=0.2),
    'gc_vit_tiny2': dict(_T, depths=(3, 4, 29, 5), drop_path_rate=0.25),
    'gc_vit_small': dict(embed_dim=96, depths=(3, 4, 19, 5), num_heads=(3, 6, 12, 24), mlp_ratio=2., layer_scale=1e-5,
                         drop_path_rate=0.3),
    'gc_vit_small2': dict(embed_dim=96, depths=(3, 4, 23, 5), num_heads=(3, 6, 12, 24), mlp_ratio=3., layer_scale=1e-5,
                          drop_path_rate=0.35),
    'gc_vit_base': dict(embed_dim=128, depths=(3, 4, 19, 5), num_heads=(4, 8, 16, 32), mlp_ratio=2., layer_scale=1e-5,
                        drop_path_rate=0.5),
    'gc_vit_large': dict(_L, drop_path_rate=0.5),
    'gc_vit_large_224_21k': dict(_L, drop_path_rate=0.5),
    'gc_vit_large_384_21k': dict(_L, img_size=384, drop_path_rate=0.1),
    'gc_vit_large_512_21k': dict(_L, img_size=512, drop_path_rate=0.1),
}


def _create_gcvit(variant: str, pretrained: bool = False, **kwargs) -> GCViT:
    # Dense-task features: each requested stage output through a LayerNorm of its own (reference detection
    # backbone's norm0..norm3); the final norm and the head go.
    return build_backbone(GCViT, variant, pretrained, checkpoint_filter_fn, len(kwargs.get('depths', (0,) * 4)),
                          (0, 1, 2, 3), **kwargs)


@register_model
def gc_vit_xxtiny(pretrained: bool = False, **kwargs) -> GCViT:
    """GC ViT-XXT: width 64, depths 2-2-6-2, 12.00M parameters, 2.12 GMACs at 224x224."""
    return _create_gcvit('gc_vit_xxtiny', pretrained, **{**_VARIANTS['gc_vit_xxtiny'], **kwargs})


@register_model
def gc_vit_xtiny(pretrained: bool = False, **kwargs) -> GCViT:
    """GC ViT-XT: width 64, depths 3-4-6-5, 19.98M parameters, 2.91 GMACs at 224x224."""
    return _create_gcvit('gc_vit_xtiny', pretrained, **{**_VARIANTS['gc_vit_xtiny'], **kwargs})


@register_model
def gc_vit_tiny(pretrained: bool = False, **kwargs) -> GCViT:
    """GC ViT-T: width 64, depths 3-4-19-5, 28.22M parameters, 4.76 GMACs at 224x224."""
    return _create_gcvit('gc_vit_tiny', pretrained, **{**_VARIANTS['gc_vit_tiny'], **kwargs})


@register_model
def gc_vit_tiny2(pretrained: bool = False, **kwargs) -> GCViT:
    """GC ViT-T2: width 64, depths 3-4-29-5, 34.54M parameters, 6.18 GMACs at 224x224."""
    return _create_gcvit('gc_vit_tiny2', pretrained, **{**_VARIANTS['gc_vit_tiny2'], **kwargs})


@register_model
def gc_vit_small(pretrained: bool = False, **kwargs) -> GCViT:
    """GC ViT-S: width 96, depths 3-4-19-5, MLP ratio 2, layer scale, 51.09M parameters, 8.53 GMACs at 224x224."""
    return _create_gcvit('gc_vit_small', pretrained, **{**_VARIANTS['gc_vit_small'], **kwargs})


@register_model
def gc_vit_small2(pretrained: bool = False, **kwargs) -> GCViT:
    """GC ViT-S2: width 96, depths 3-4-23-5, MLP ratio 3, layer scale, 68.62M parameters, 11.54 GMACs at 224x224."""
    return _create_gcvit('gc_vit_small2', pretrained, **{**_VARIANTS['gc_vit_small2'], **kwargs})


@register_model
def gc_vit_base(pretrained: bool = False, **kwargs) -> GCViT:
    """GC ViT-B: width 128, depths 3-4-19-5, MLP ratio 2, layer scale, 90.32M parameters, 14.82 GMACs at 224x224."""
    return _create_gcvit('gc_vit_base', pretrained, **{**_VARIANTS['gc_vit_base'], **kwargs})


@register_model
def gc_vit_large(pretrained: bool = False, **kwargs) -> GCViT:
    """GC ViT-L: width 192, depths 3-4-19-5, MLP ratio 2, layer scale, 202.08M parameters, 32.56 GMACs at 224."""
    return _create_gcvit('gc_vit_large', pretrained, **{**_VARIANTS['gc_vit_large'], **kwargs})


@register_model
def gc_vit_large_224_21k(pretrained: bool = False, **kwargs) -> GCViT:
    """GC ViT-L pretrained on ImageNet-21K, fine-tuned on 1K at 224: the architecture of :func:`gc_vit_large`."""
    return _create_gcvit('gc_vit_large_224_21k', pretrained, **{**_VARIANTS['gc_vit_large_224_21k'], **kwargs})


@register_model
def gc_vit_large_384_21k(pretrained: bool = False, **kwargs) -> GCViT:
    """GC ViT-L (21K -> 1K) at 384, windows 12-12-24-12: 202.86M parameters, 103.94 GMACs."""
    return _create_gcvit('gc_vit_large_384_21k', pretrained, **{**_VARIANTS['gc_vit_large_384_21k'], **kwargs})


@register_model
def gc_vit_large_512_21k(pretrained: bool = False, **kwargs) -> GCViT:
    """GC ViT-L (21K -> 1K) at 512, windows 16-16-32-16: 203.80M parameters, 202.14 GMACs."""
    return _create_gcvit('gc_vit_large_512_21k', pretrained, **{**_VARIANTS['gc_vit_large_512_21k'], **kwargs})
