"""Exit 1 unless torchvision's compiled ops run with the installed torch (a mismatched pair imports, then fails at
the first op with ``operator torchvision::nms does not exist``); see docs/install.md."""
import sys

try:
    import torch
    import torchvision
    from torchvision.ops import nms, roi_align

    nms(torch.rand(3, 4) * 10, torch.rand(3), 0.5)
    roi_align(torch.rand(1, 2, 8, 8), [torch.tensor([[0., 0., 4., 4.]])], 2)
except Exception as e:  # noqa: BLE001  (any failure here is the same finding)
    print(f"FATAL: torchvision's ops cannot run with the installed torch ({type(e).__name__}: {e}); "
          f'see docs/install.md, "torchvision\'s ops do not load". Not running the tests.', file=sys.stderr)
    sys.exit(1)
print(f'{sys.executable}: Python {sys.version.split()[0]}, torch {torch.__version__}, '
      f'torchvision {torchvision.__version__}: ops run')
