"""Whether the forward pass is being traced or compiled, for the eager-only shortcuts that must step aside then."""
import torch

__all__ = ['is_tracing']


def is_tracing() -> bool:
    """True under ``torch.export``, ``torch.compile`` and TorchScript tracing.

    Eager shortcuts that depend on a size (skipping a zero pad, keeping the stored position embedding) are
    taken only when this is False: testing a symbolic size would specialise the graph to the example's size.
    Scripted code (TorchScript) runs its control flow at run time, so it takes the shortcuts like eager code.
    """
    if torch.jit.is_scripting():
        return False
    else:  # not compiled by TorchScript
        exporting = getattr(torch.compiler, 'is_exporting', None)  # torch >= 2.7
        return (torch.jit.is_tracing() or torch.compiler.is_compiling()
                or (exporting is not None and exporting()))
