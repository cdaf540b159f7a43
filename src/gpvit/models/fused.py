"""The CPU inference fast path: fused oneDNN GEMMs in variants of the models' blocks, swapped in for eval.

In float32 inference on the CPU, PyTorch's ``addmm`` copies the broadcast bias into the output before the GEMM,
and a GELU or a residual add after it each read and write the whole output again: at GPViT's sizes these passes
cost up to a third of the GEMM. oneDNN runs them in the GEMM's epilogue instead (the private op
``torch.ops.mkldnn._linear_pointwise``; :func:`fused_linear`), with the same numbers.

The models are built from the plain blocks (:mod:`gpvit.models.gpvit`, :mod:`gpvit.models.gcvit`, timm's
``Mlp``). Each block that benefits has a variant here, a subclass with the same parameters (hence the same state
dict) whose forward passes the residual into the projection GEMMs:

==============================  ======================================================================
plain                           fused variant
==============================  ======================================================================
``timm.layers.Mlp``             :class:`FusedMlp`: fc1 + bias + GELU and fc2 + bias (+ residual), 2 GEMMs
``LePEAttention``               :class:`FusedLePEAttention`: proj + bias + residual, one GEMM
``LePEBlock``                   :class:`FusedLePEBlock`: both residual adds in the GEMMs
``GPBlock``                     :class:`FusedGPBlock`: the MLP's residual add in fc2
``GCViTBlock``                  :class:`FusedGCViTBlock`: the MLP's residual add in fc2 (no layer scale)
==============================  ======================================================================

Selection. :func:`select_fused` swaps the variants in when a model is put in eval mode with CPU float32
parameters on a CPU with AVX-512 (with AVX2 alone oneDNN's GEMMs are slower than ATen's, and so were the
variants), and the plain blocks back for training, other devices and dtypes (a block selector of
``Backbone``, run on ``train()`` and ``.to()``); :func:`use_fused` does it on demand, :func:`set_auto_fuse`
turns the automatic choice off. Even swapped in, a variant runs its fused kernels only in *eager CPU float32 inference*
(:func:`fast_path_applies`); under autograd, autocast, export, compile, TorchScript tracing, FX tracing and
dispatch modes (FLOP counters, fake tensors) it runs the plain block's forward, so those all see the plain ops.
``torch.jit.script`` compiles the plain blocks (a variant turns back into its plain block first).
"""
from typing import Dict, Optional, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .backbone import add_block_selector
from .gcvit import GCViTBlock
from .gpvit import GPBlock, LePEAttention, LePEBlock
from .layers import is_tracing

__all__ = ['fast_path_applies', 'fused_linear', 'FusedMlp', 'FusedLePEAttention', 'FusedLePEBlock', 'FusedGPBlock',
           'FusedGCViTBlock', 'FUSED_VARIANTS', 'use_fused', 'select_fused', 'set_auto_fuse']


def _avx512() -> bool:
    """Whether the CPU has AVX-512 (its own flags, not the ISA ATen was told to use)."""
    return bool(torch.cpu._is_avx512_supported())


class _OneDNN:
    """Whether this PyTorch build runs ``mkldnn._linear_pointwise`` (cleared on the first failure), and whether
    this CPU runs oneDNN's float32 GEMMs fast enough for the variants to win (:func:`select_fused`)."""
    available = torch.backends.mkldnn.is_available()
    #: measured faster with AVX-512 (Intel Xeon with AMX, AMD EPYC); with AVX2 alone (an AMD EPYC) oneDNN's
    #: GEMMs are slower than ATen's and the variants lost 11-17 % (docs/benchmarks.md); elsewhere not measured
    fast_cpu = _avx512()


class _Auto:
    """Whether :func:`select_fused` swaps the variants in (:func:`set_auto_fuse`)."""
    enabled = True


def _eager_inference(x: torch.Tensor) -> bool:
    """Eager float32 CPU computation that autograd, autocast, tracing and dispatch modes do not watch."""
    return (not isinstance(x, torch.fx.Proxy) and not is_tracing()
            and x.device.type == 'cpu' and x.dtype == torch.float32
            and not (torch.is_grad_enabled() and x.requires_grad)
            and not torch.is_autocast_enabled('cpu')
            # FLOP counters, fake-tensor and other dispatch modes see the standard ops
            and _get_current_dispatch_mode() is None)


def fast_path_applies(x: torch.Tensor, module: nn.Module) -> bool:
    """Whether ``module`` (in eval mode) may run its fused kernels on the input ``x``: eager CPU float32
    inference, and no parameter of ``module`` that autograd would need a gradient for."""
    return (_OneDNN.available and not module.training and _eager_inference(x)
            and not (torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters())))


def fused_linear(
        x: torch.Tensor,
        fc: nn.Linear,
        gelu: bool = False,
        residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``fc(x)``, then an exact GELU if ``gelu``, then ``+ residual``: in CPU float32 inference, one GEMM.

    The bias, the GELU and the residual add run in the epilogue of a oneDNN GEMM (``mkldnn._linear_pointwise``)
    instead of as separate passes over the output; the numbers are the same. Training, other devices and dtypes,
    autocast, export, compile and dispatch modes (FLOP counters, fake tensors) take the standard ops; so does
    everything if the build lacks the op.

    Args:
        x: ``(..., in_features)``.
        fc: the Linear layer.
        gelu: apply the exact (erf) GELU to ``fc(x)``; cannot be combined with ``residual``.
        residual: ``(..., out_features)`` added to the result.
    """
    if gelu and residual is not None:
        raise ValueError('fused_linear: gelu and residual cannot be combined')
    if (_OneDNN.available and _eager_inference(x)
            and fc.weight.dtype == torch.float32 and fc.weight.device.type == 'cpu'
            and not (torch.is_grad_enabled() and fc.weight.requires_grad)
            and (residual is None or residual.dtype == torch.float32)):
        out_shape = (*x.shape[:-1], fc.out_features)
        x2d = x.reshape(-1, fc.in_features)  # shape errors surface here, outside the try
        res2d = None if residual is None else residual.expand(out_shape).reshape(-1, fc.out_features)
        try:
            if res2d is None:
                y = torch.ops.mkldnn._linear_pointwise(x2d, fc.weight, fc.bias, 'gelu' if gelu else 'none', [], 'none')
            else:
                y = torch.ops.mkldnn._linear_pointwise.binary(x2d, res2d, fc.weight, fc.bias, 'add')
        except (RuntimeError, AttributeError, NotImplementedError):
            _OneDNN.available = False  # not in this build: the standard ops from now on
        else:
            return y.view(out_shape)
    y = fc(x)
    if gelu:
        y = F.gelu(y)
    return y if residual is None else residual + y


def _add(y: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.Tensor:
    return y if residual is None else residual + y


class _ScriptsAsPlain:
    """``torch.jit.script`` compiles the plain block: a variant turns back into it (in place) first."""

    def __prepare_scriptable__(self) -> nn.Module:
        self.__class__ = _PLAIN[type(self)]
        return self


class FusedMlp(_ScriptsAsPlain, Mlp):
    """timm's ``Mlp`` whose ``forward(x, residual)`` returns ``residual + mlp(x)``, fused in CPU inference.

    With the exact GELU and no norm between the layers, fc1 + bias + GELU and fc2 + bias + residual each run as
    one oneDNN GEMM (:func:`fused_linear`; eval mode, so dropout is the identity): 1.05x-1.4x faster than timm's
    path at GPViT's sizes, most where every fresh ``4C``-wide activation costs page faults (glibc's default
    malloc, large inputs). Otherwise timm's forward, plus the residual.
    """

    def _fusable(self) -> bool:
        return type(self.act) is nn.GELU and self.act.approximate == 'none' and isinstance(self.norm, nn.Identity)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self._fusable() and fast_path_applies(x, self):
            return fused_linear(fused_linear(x, self.fc1, gelu=True), self.fc2, residual=residual)
        return _add(super().forward(x), residual)


class FusedLePEAttention(_ScriptsAsPlain, LePEAttention):
    """GPViT's stripe attention whose ``forward(x, residual)`` returns ``residual + attn(x)``; in CPU inference
    the residual add runs in the projection GEMM and each branch's attention + LePE sum is written straight into
    the output map (``torch.add(..., out=)``, one pass instead of a sum and a concatenation)."""

    def _merge(self, a_v: torch.Tensor, pe_v: torch.Tensor, a_h: torch.Tensor, pe_h: torch.Tensor) -> torch.Tensor:
        if not _eager_inference(pe_v) or self.training:  # autograd, export, compile: the plain concatenation
            return super()._merge(a_v, pe_v, a_h, pe_h)
        out = a_h.new_empty(*a_h.shape[:-1], 2, a_h.shape[-1])  # (B, nh, sw, nv, sw, 2, D)
        torch.add(a_v, pe_v, out=out[..., 0, :])
        torch.add(a_h, pe_h, out=out[..., 1, :])
        return out.flatten(-2)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        if residual is None or not fast_path_applies(x, self):
            return _add(super().forward(x), residual)
        return fused_linear(self.stripe_attention(x), self.proj, residual=residual)


class FusedLePEBlock(_ScriptsAsPlain, LePEBlock):
    """GPViT's local block with both residual adds in the projection GEMMs (:class:`FusedLePEAttention`,
    :class:`FusedMlp`); drop path is the identity in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not fast_path_applies(x, self):
            return super().forward(x)
        x = self.attn(self.norm1(x), residual=x)
        x = self.mlp(self.norm2(x), residual=x)
        return self.dw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class FusedGPBlock(_ScriptsAsPlain, GPBlock):
    """GPViT's GP block with the MLP's residual add in fc2 (:class:`FusedMlp`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not fast_path_applies(x, self):
            return super().forward(x)
        y = self.propagate(x.flatten(1, 2))
        y = self.mlp(self.norm2(y), residual=y)
        return self.conv(y.view(x.shape).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class FusedGCViTBlock(_ScriptsAsPlain, GCViTBlock):
    """GC ViT's block with the MLP's residual add in fc2 (:class:`FusedMlp`), where there is no layer scale
    (XXT-T2); with layer scale (S, B, L) the plain forward, whose MLP still fuses fc1 + GELU."""

    def forward(self, x: torch.Tensor, q_global: Optional[torch.Tensor] = None) -> torch.Tensor:
        if hasattr(self.ls2, 'gamma') or not fast_path_applies(x, self):
            return super().forward(x, q_global)
        x = x + self.ls1(self._window_attn(self.norm1(x), q_global))
        return self.mlp(self.norm2(x), residual=x)


#: Plain block class -> its fused variant (exact types: subclasses of the plain blocks are left alone).
FUSED_VARIANTS: Dict[Type[nn.Module], Type[nn.Module]] = {
    Mlp: FusedMlp,
    LePEAttention: FusedLePEAttention,
    LePEBlock: FusedLePEBlock,
    GPBlock: FusedGPBlock,
    GCViTBlock: FusedGCViTBlock,
}
_PLAIN = {fused: plain for plain, fused in FUSED_VARIANTS.items()}


def use_fused(model: nn.Module, enable: bool = True) -> nn.Module:
    """Swap the fused variants in (``enable``) or the plain blocks back, in place, and return ``model``.

    Only the classes change (``module.__class__``): parameters, buffers, hooks and state-dict keys stay. The next
    ``train()`` / ``eval()`` / ``.to()`` of a GPViT or GC ViT model selects again (:func:`select_fused`), unless
    :func:`set_auto_fuse` turned that off.
    """
    table = FUSED_VARIANTS if enable else _PLAIN
    for m in model.modules():
        cls = table.get(type(m))
        if cls is not None:
            m.__class__ = cls
    return model


def select_fused(model: nn.Module) -> nn.Module:
    """The automatic choice: the fused variants for a model in eval mode whose parameters are all CPU float32,
    on a CPU with AVX-512 (and a PyTorch build with the oneDNN op), the plain blocks otherwise. Returns
    ``model``."""
    if not _Auto.enabled:
        return model
    params = list(model.parameters())
    eligible = (_OneDNN.available and _OneDNN.fast_cpu and not model.training and bool(params)
                and all(p.device.type == 'cpu' and p.dtype == torch.float32 for p in params))
    return use_fused(model, eligible)


add_block_selector(select_fused)  # every model runs the automatic choice on train() / eval() / .to()


def set_auto_fuse(enable: bool) -> None:
    """Turn the automatic choice of :func:`select_fused` on (the default) or off (models keep the blocks they
    have; :func:`use_fused` still swaps on demand)."""
    _Auto.enabled = enable
