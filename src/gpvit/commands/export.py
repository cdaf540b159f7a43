"""``gpvit export --model NAME [--checkpoint CKPT] --format onnx|torchscript|exported-program``."""
import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import CheckpointError, read_checkpoint_file
    from ..factory import create_model, list_models
    from ..models import model_args
    from ..tools.bench import parse_size
    from ..tools.export import ExportError, default_suffix, export_model

    name, kwargs, state_dict = args.model, {}, None
    if args.checkpoint:
        state_dict = read_checkpoint_file(args.checkpoint, use_ema=args.use_ema, weights_only=not args.unsafe_pickle)
        if name is None:
            try:
                name, kwargs = model_args(state_dict)
            except CheckpointError as e:
                raise CheckpointError(f'{args.checkpoint}: cannot tell which model this checkpoint is for ({e}); '
                                      f'name it with --model') from e
    if name is None:
        raise ValueError('give --model, --checkpoint, or both')
    if name not in list_models():
        raise ValueError(f'unknown model {name!r}; registered models: {", ".join(list_models())}')
    model = create_model(name, checkpoint=state_dict, **kwargs)
    size = parse_size(args.input_size) if args.input_size else None
    out = args.output or f'{name}{default_suffix(args.format)}'
    try:
        report = export_model(model, args.format, out, input_size=size, model_name=name,
                              dynamic_size=not args.static_size, check=not args.no_check, opset=args.opset)
    except ExportError as e:
        print(f'gpvit export: error: {e}', file=sys.stderr)
        return 2
    print(report.summary())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ..tools.export import FORMATS
    p = sub.add_parser('export', help='export a model to ONNX, TorchScript or a torch.export program',
                       description='Exports a registered model (optionally with a checkpoint of any supported '
                                   'format) and checks the file against PyTorch at two input shapes, printing the '
                                   'max abs difference. ONNX and exported programs get a dynamic batch, height '
                                   'and width (GPViT: multiples of 16); TorchScript is traced at one image size.')
    p.add_argument('--model', help='registered model name (detected from --checkpoint if omitted)')
    p.add_argument('--checkpoint', help='checkpoint to load, any supported format')
    p.add_argument('--format', required=True, choices=FORMATS, help='output format')
    p.add_argument('-o', '--output', help='output file (default: MODEL.onnx / .pt / .pt2 here)')
    p.add_argument('--input-size', help="example input size, N or HxW (default: the model's input size)")
    p.add_argument('--static-size', action='store_true', help='fixed height and width (only the batch is dynamic)')
    p.add_argument('--no-check', action='store_true', help='skip the comparison with PyTorch')
    p.add_argument('--opset', type=int, help='ONNX opset version (default: the exporter\'s)')
    p.add_argument('--use-ema', action='store_true', help='use the EMA weights of the checkpoint')
    p.add_argument('--unsafe-pickle', action='store_true',
                   help='allow arbitrary pickled objects in the checkpoint (only for files you trust)')
    p.set_defaults(func=run)
