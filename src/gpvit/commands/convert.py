"""``gpvit convert SRC DST``: any supported checkpoint -> this project's layout, as safetensors or a ``.pth``."""
import argparse
import json
from pathlib import Path

_FORMATS = {'.safetensors': 'safetensors', '.pth': 'torch', '.pt': 'torch'}


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import atomic_save, read_checkpoint_file, save_safetensors
    from ..dense.reference import reference_recipe
    from ..factory import create_model, recipe_model
    from ..models import model_args
    src, dst = Path(args.src), Path(args.dst)
    fmt = _FORMATS.get(dst.suffix)
    if fmt is None:
        raise ValueError(f'DST: {dst} must end in .safetensors, .pth or .pt (the extension chooses the format)')
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise ValueError(f'DST: {dst} is the source file; write the conversion to another file')
    if dst.exists() and not args.force:
        raise ValueError(f'DST: {dst} exists; pass --force to overwrite it')
    ckpt = read_checkpoint_file(src, use_ema=args.use_ema, weights_only=not args.unsafe_pickle)
    recipe = reference_recipe(ckpt.state_dict)
    # a reference segmentor or detector: its recipe's whole model; anything else: the classifier it holds
    name, kwargs = recipe_model(recipe) if recipe is not None else model_args(ckpt)
    model = create_model(name, checkpoint=ckpt, **kwargs)
    # The model's settings travel with the weights, so a model other than a registered variant's defaults (another
    # width or img_size, a trained one) is rebuilt as it is: gpvit.create_model(name, checkpoint=DST).
    spec = {'name': name, 'kwargs': kwargs}
    if fmt == 'safetensors':
        save_safetensors(model.state_dict(), dst, metadata={'architecture': name, 'format': 'gpvit',
                                                            'model_spec': json.dumps(spec)})
    else:  # loadable with torch.load(weights_only=True) and by every loader of this project
        atomic_save({'state_dict': {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                     'model_spec': spec}, dst)
    n = sum(p.numel() for p in model.parameters())
    print(f'{src} -> {dst}: {name} ({n:,} parameters, {len(model.state_dict())} tensors, {fmt})')
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('convert', help="write any supported checkpoint in this project's layout",
                       description='Detects the model family, variant and layout of SRC (reference release, '
                                   'whole reference segmentor/detector, mmpretrain port, timm, training checkpoint), '
                                   'loads it into the matching model to check it, and writes DST: a safetensors '
                                   'file (.safetensors) or a plain state dict (.pth / .pt), by its extension.')
    p.add_argument('src', help='checkpoint to convert')
    p.add_argument('dst', help='output file: .safetensors, .pth or .pt')
    p.add_argument('--force', action='store_true', help='overwrite DST if it exists (never the source)')
    p.add_argument('--use-ema', action='store_true', help='take the EMA weights of a checkpoint that has them')
    p.add_argument('--unsafe-pickle', action='store_true',
                   help='allow arbitrary pickled objects in SRC (only for files you trust)')
    p.set_defaults(func=run)
