"""Quickstart: the GPViT models at work (a showcase until the training quickstart lands)."""
import time

import torch

import gpvit
from gpvit.tools.flops import count_flops


def main() -> None:
    torch.manual_seed(0)
    print(f'gpvit {gpvit.__version__}: registered models {gpvit.list_models()}')
    model = gpvit.create_model('gpvit_l1').eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f'gpvit_l1: {n_params:,} parameters, {count_flops(model, (1, 3, 224, 224)) / 1e9:.2f} GFLOPs at 224x224')
    with torch.no_grad():
        for size in [(224, 224), (256, 320), (200, 296)]:
            x = torch.randn(2, 3, *size)
            t = time.perf_counter()
            logits = model(x)
            print(f'  classify {tuple(x.shape)} -> {tuple(logits.shape)} in {time.perf_counter() - t:.2f}s')
        backbone = gpvit.create_model('gpvit_l1', features_only=True, out_indices=(2, 5, 8, 11)).eval()
        feats = backbone(torch.randn(1, 3, 512, 640))
        print('  dense features at 512x640:', [tuple(f.shape) for f in feats])


if __name__ == '__main__':
    main()
