"""Building blocks shared by the GPViT and GC ViT families, one concept per module.

* :mod:`.attention`: multi-head attention on channels-last token tensors ``(B, L, C)``, in
  ``scaled_dot_product_attention`` (optionally with an additive bias or a boolean key mask);
* :mod:`.windows`: padding maps to window multiples, window partition and reverse;
* :mod:`.drop_path`: a residual add with stochastic depth on its branch, in one pass, with the branch computed
  for the kept samples only (and the same for a dropped branch that is not added);
* :mod:`.checks`: checks of the input image batch;
* :mod:`.tracing`: whether export / compile / TorchScript tracing is running.

The models otherwise use timm's layers (``Mlp``, ``MixerBlock``, ``LayerScale``, ``RelPosBias``, ``ConvNormAct``).
The CPU inference fast path (fused oneDNN GEMMs) is not here but in :mod:`gpvit.models.fused`.
"""
from .attention import attention, merge_heads, split_heads
from .checks import check_image_input
from .drop_path import DropPathAdd
from .tracing import is_tracing
from .windows import pad_amount, pad_to_multiple, window_partition, window_reverse

__all__ = ['DropPathAdd', 'attention', 'check_image_input', 'is_tracing', 'merge_heads', 'pad_amount',
           'pad_to_multiple', 'split_heads', 'window_partition', 'window_reverse']
