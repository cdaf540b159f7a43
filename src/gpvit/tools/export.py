"""Export models to ONNX, TorchScript or a ``torch.export`` program, checked against PyTorch.

* ``onnx``: ``torch.export`` with dynamic batch, height and width, translated with
  ``torch.onnx.export(..., dynamo=True)``; the file is then run in onnxruntime at two input shapes (two batch
  sizes, two image sizes) and compared with the PyTorch model (max abs difference reported).
* ``exported-program``: the same dynamic ``torch.export`` program, saved with ``torch.export.save`` (``.pt2``);
  loaded back and compared at the same two shapes.
* ``torchscript``: ``torch.jit.trace``. Tracing records the Python shape arithmetic of the forward pass as
  constants, so the traced module is valid for the traced image size only; it is checked at the traced size
  and at another batch size, and the report says whether the batch size stayed free.

Dynamic image sizes come with the model's size rule: GPViT's stripe attention needs an even token grid, so a
GPViT is exported for heights and widths that are multiples of 16 (the exported graph does not check this,
other sizes give wrong results or fail). Models whose pretrained config says ``fixed_input_size`` are exported
with a fixed image size and a dynamic batch. When a model cannot be exported with dynamic height and width,
the export falls back to a fixed image size and the report says so and why; when it cannot be exported at
all, :class:`ExportError` names the model, the format and the reason.
"""
import contextlib
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn

_logger = logging.getLogger(__name__)

__all__ = ['FORMATS', 'ExportError', 'ExportReport', 'export_model', 'size_multiple', 'native_input_size',
           'default_suffix']

FORMATS = ('onnx', 'torchscript', 'exported-program')
_SUFFIX = {'onnx': '.onnx', 'torchscript': '.pt', 'exported-program': '.pt2'}
_MAX_SIDE = 8192
_MAX_BATCH = 4096
_ONNX_INLINE_LIMIT = 1.8e9  # bytes of weights above which ONNX needs an external data file (2 GB protobuf limit)


class ExportError(RuntimeError):
    """A model that cannot be exported in a format, or whose export does not reproduce the PyTorch outputs."""


@dataclass
class ExportReport:
    """What was exported and how well it agrees with PyTorch.

    Attributes:
        model: model name.
        format: one of :data:`FORMATS`.
        path: the written file.
        dynamic: which input dimensions are free: ``{'batch': ..., 'height': ..., 'width': ...}``.
        checks: ``(input shape, max abs difference to PyTorch)`` of each check.
        seconds: time of the export (without the checks).
        notes: anything the user should know (a fallback to a fixed size, with the reason).
    """
    model: str
    format: str
    path: str
    dynamic: dict
    checks: List[Tuple[Tuple[int, ...], float]] = field(default_factory=list)
    seconds: float = 0.
    notes: List[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f'{self.model} -> {self.path} ({self.format}, exported in {self.seconds:.1f} s)',
                 '  dynamic dims: ' + ', '.join(f'{k} {v}' for k, v in self.dynamic.items())]
        lines += [f'  check {tuple(s)}: max abs diff to PyTorch {d:.3g}' for s, d in self.checks]
        lines += [f'  note: {n}' for n in self.notes]
        return '\n'.join(lines)


def default_suffix(fmt: str) -> str:
    """File suffix of a format: ``.onnx``, ``.pt`` (TorchScript) or ``.pt2`` (exported program)."""
    return _SUFFIX[fmt]


def size_multiple(model: nn.Module) -> int:
    """The image side must be a multiple of this for a dynamic-size export of ``model``.

    Patch size times the least common multiple of the stripe/window widths of its blocks (GPViT: 8 x 2 = 16);
    32 for models that declare no patch size (hierarchical models at stride 32).
    """
    patch = getattr(model, 'patch_size', None)
    if not isinstance(patch, int):
        return 32
    widths = [m.stripe_width for m in model.modules() if isinstance(getattr(m, 'stripe_width', None), int)]
    return patch * math.lcm(*widths) if widths else patch


def _short(e: BaseException, lines: int = 3) -> str:
    text = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return ' '.join(text[:lines]) if text else type(e).__name__


@contextlib.contextmanager
def _exportable(model: nn.Module) -> Iterator[None]:
    """Make ``model`` traceable with symbolic sizes for the duration of an export; undone on exit.

    Parameters stop requiring gradients: what is exported is the inference graph.
    """
    grads = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in grads:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, g in grads:
            p.requires_grad_(g)


def native_input_size(model: nn.Module) -> Tuple[int, int]:
    """``(H, W)`` the model was built for: a GPViT's position-embedding grid times its stride, a GC ViT's
    ``img_size``, else its pretrained config's ``input_size`` (a model trained at 32 px says 32, not its
    registered default)."""
    grid, stride = getattr(model, 'grid_size', None), getattr(model, 'patch_size', None)
    if grid is not None and isinstance(stride, int):
        return tuple(int(g) * stride for g in grid)
    img = getattr(model, 'img_size', None)
    if isinstance(img, int):
        return img, img
    if isinstance(img, (tuple, list)) and len(img) == 2:
        return tuple(int(v) for v in img)
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return tuple(cfg.get('input_size', (3, 224, 224))[1:])


def _dynamic_spec(model: nn.Module, input_size: Tuple[int, int], allow_dynamic_size: bool):
    """``(dynamic_shapes for torch.export, description dict)``."""
    from torch.export import Dim
    batch = Dim('batch', min=1, max=_MAX_BATCH)
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if not allow_dynamic_size or cfg.get('fixed_input_size'):
        why = 'fixed input size of the model' if cfg.get('fixed_input_size') else 'fixed, as asked'
        return {'x': {0: batch}}, {'batch': 'dynamic', 'height': f'{input_size[0]} ({why})',
                                    'width': f'{input_size[1]} ({why})'}
    m = size_multiple(model)
    H, W = input_size
    if H % m or W % m:
        raise ExportError(f'a dynamic-size export needs a height and width that are multiples of {m}, got {H}x{W} '
                          f'(choose another input size, or export with a fixed size)')
    lo = max(2, math.ceil(32 / m))
    h = Dim('height_blocks', min=lo, max=_MAX_SIDE // m)
    w = Dim('width_blocks', min=lo, max=_MAX_SIDE // m)
    spec = {'x': {0: batch, 2: m * h, 3: m * w}}
    desc = {'batch': 'dynamic', 'height': f'dynamic (multiple of {m}, {lo * m}..{_MAX_SIDE})',
            'width': f'dynamic (multiple of {m}, {lo * m}..{_MAX_SIDE})'}
    return spec, desc


def _check_shapes(input_size: Tuple[int, int], dynamic_size: bool, multiple: int) -> List[Tuple[int, ...]]:
    H, W = input_size
    if dynamic_size:
        return [(1, 3, H, W), (2, 3, H + 2 * multiple, W + 4 * multiple)]
    return [(1, 3, H, W), (3, 3, H, W)]


def _max_diff(run: Callable[[torch.Tensor], torch.Tensor], model: nn.Module,
              shape: Tuple[int, ...]) -> Tuple[float, float]:
    """Max abs difference of ``run`` to ``model`` on a random input, and the largest PyTorch output (>= 1)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    with torch.no_grad():
        ref = model(x)
    out = run(x)
    if tuple(out.shape) != tuple(ref.shape):
        raise ExportError(f'output shape {tuple(out.shape)} != PyTorch {tuple(ref.shape)}')
    return (out.float() - ref.float()).abs().max().item(), max(1., ref.abs().max().item())


def _torch_export(model: nn.Module, example: torch.Tensor, spec) -> torch.export.ExportedProgram:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return torch.export.export(model, (example,), dynamic_shapes=spec)


def export_model(
        model: nn.Module,
        fmt: str,
        path,
        input_size: Optional[Tuple[int, int]] = None,
        model_name: Optional[str] = None,
        dynamic_size: bool = True,
        check: bool = True,
        tolerance: float = 1e-3,
        opset: Optional[int] = None,
) -> ExportReport:
    """Export ``model`` (put in eval mode) to ``path`` and check the file against PyTorch.

    Args:
        model: the model (CPU, float32).
        fmt: ``'onnx'``, ``'torchscript'`` or ``'exported-program'``.
        path: output file.
        input_size: ``(H, W)`` of the example input; default: the model's pretrained-config input size.
        model_name: for messages; default: the pretrained-config architecture.
        dynamic_size: export height and width as dynamic dimensions where the model allows it (not for
            TorchScript); a failed dynamic export falls back to a fixed size with a note.
        check: run the exported file at two input shapes and compare with PyTorch.
        tolerance: largest max-abs difference accepted, relative to the largest PyTorch output magnitude
            (at least 1).
        opset: ONNX opset (default: the exporter's).

    Raises:
        ExportError: ``cannot export <model> to <format>: <reason>``: the model cannot be exported in this
            format, or the exported file does not reproduce the PyTorch outputs.
    """
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    name = model_name or cfg.get('architecture') or type(model).__name__
    if fmt not in FORMATS:
        raise ExportError(f'cannot export {name} to {fmt!r}: unsupported format; choose from {", ".join(FORMATS)}')
    if input_size is None:
        input_size = native_input_size(model)
    input_size = tuple(int(s) for s in input_size)
    path = Path(path)
    if fmt == 'exported-program' and path.suffix != '.pt2':
        raise ExportError(f'cannot export {name} to {fmt}: torch.export.save writes .pt2 files, got {path}')
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    report = ExportReport(name, fmt, str(path), {})
    try:
        with _exportable(model):
            _export_and_check(model, fmt, path, input_size, dynamic_size, check, tolerance, opset, report)
    except ExportError as e:
        raise ExportError(f'cannot export {name} to {fmt}: {e}') from e
    except Exception as e:  # noqa: BLE001 - whatever the exporter raises becomes a one-paragraph error
        raise ExportError(f'cannot export {name} to {fmt}: {type(e).__name__}: {_short(e)}') from e
    return report


def _export_and_check(model: nn.Module, fmt: str, path: Path, input_size: Tuple[int, int], dynamic_size: bool,
                      check: bool, tolerance: float, opset: Optional[int], report: ExportReport) -> None:
    example = torch.randn(2, 3, *input_size)  # batch 2: a batch of 1 would be specialised as a constant
    t0 = time.perf_counter()
    if fmt == 'torchscript':
        run = _export_torchscript(model, example, path, report)
        shapes = [(2, 3, *input_size), (1, 3, *input_size)]
    else:
        ep = _export_dynamic(model, example, input_size, dynamic_size, report)
        if fmt == 'exported-program':
            torch.export.save(ep, str(path))
            loaded = torch.export.load(str(path)).module()
            run = lambda x: loaded(x)  # noqa: E731
        else:
            run = _export_onnx(ep, example, path, opset, model)
        dyn = report.dynamic['height'].startswith('dynamic')
        shapes = _check_shapes(input_size, dyn, size_multiple(model))
    report.seconds = time.perf_counter() - t0
    if not check:
        return
    for i, shape in enumerate(shapes):
        try:
            diff, scale = _max_diff(run, model, shape)
            problem = None if diff <= tolerance * scale else f'differs from PyTorch by {diff:.3g} (max abs)'
        except Exception as e:  # noqa: BLE001
            diff, problem = None, f'fails: {_short(e)}'
        if problem and fmt == 'torchscript' and i > 0:  # the traced batch size is baked in
            report.dynamic['batch'] = f'fixed to {example.shape[0]} (the traced batch)'
            report.notes.append(f'the traced module {problem} at batch {shape[0]}')
            continue
        if problem:
            hint = ''
            if report.dynamic.get('height', '').startswith('dynamic') and tuple(shape[2:]) != tuple(input_size):
                hint = ' (it works only at the example size? export with a fixed size: --static-size)'
            raise ExportError(f'the exported file {problem} at input {shape}{hint}')
        report.checks.append((shape, diff))
        if fmt == 'torchscript' and i > 0:
            report.dynamic['batch'] = 'dynamic (checked at two batch sizes)'


def _export_dynamic(model: nn.Module, example: torch.Tensor, input_size: Tuple[int, int], dynamic_size: bool,
                    report: ExportReport) -> torch.export.ExportedProgram:
    spec, desc = _dynamic_spec(model, input_size, dynamic_size)
    reason = None
    try:
        ep = _torch_export(model, example, spec)
        fixed = [name for dim, (name, size) in enumerate(zip(('batch', '', 'height', 'width'), _input_shape(ep)))
                 if dim in spec['x'] and isinstance(size, int)]
        if fixed:  # the exporter specialised a dimension instead of failing: the graph would reject other sizes
            if 'batch' in fixed:
                raise ExportError('the exported graph has a fixed batch size')
            reason = 'the exporter fixed them to the example size'
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001
        if 2 not in spec['x']:
            raise
        _logger.info('dynamic-size export failed: %s', e)
        reason = f'the export with dynamic height and width failed: {_short(e, 2)}'
    if reason is not None:
        spec, desc = _dynamic_spec(model, input_size, False)
        for k in ('height', 'width'):
            desc[k] = f'{input_size[0 if k == "height" else 1]} (fixed: see note)'
        report.notes.append(f'height and width are fixed to {input_size[0]}x{input_size[1]}: {reason}')
        ep = _torch_export(model, example, spec)
    report.dynamic = desc
    return ep


def _input_shape(ep: torch.export.ExportedProgram) -> Tuple:
    """Shape of the exported program's image input: ints where static, SymInts where dynamic."""
    user_inputs = set(ep.graph_signature.user_inputs)
    for node in ep.graph.nodes:
        if node.op == 'placeholder' and node.name in user_inputs:
            return tuple(node.meta['val'].shape)
    raise ExportError('the exported program has no input')


def _export_onnx(ep, example: torch.Tensor, path: Path, opset: Optional[int], model: nn.Module):
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ExportError(f'ONNX export needs onnx, onnxscript and onnxruntime ({e}): '
                          f'pip install "gpvit[export]"') from e
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(ep, (example,), str(path), dynamo=True, input_names=['images'], output_names=['output'],
                          opset_version=opset, external_data=weight_bytes > _ONNX_INLINE_LIMIT, verbose=False)
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    input_name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {input_name: x.numpy()})[0])

    return run


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, report: ExportReport):
    with warnings.catch_warnings():
        # TracerWarnings about shape arithmetic (the reason for the fixed size); torch.jit's deprecation notice
        warnings.simplefilter('ignore')
        with torch.no_grad():
            traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path))
    H, W = example.shape[-2:]
    report.dynamic = {'batch': 'not checked', 'height': f'{H} (traced)', 'width': f'{W} (traced)'}
    report.notes.append('torch.jit.trace records shape arithmetic as constants: use the traced image size')

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return loaded(x)

    return run
