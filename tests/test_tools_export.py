"""``gpvit export``: ONNX (dynamic batch/height/width, checked in onnxruntime), TorchScript, exported programs."""
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import gpvit
from gpvit.cli import main
from gpvit.tools.export import ExportError, export_model, size_multiple


def _small_gpvit():
    """gpvit_mini cut to one local and one GP block: the dynamic-shape export costs the same per op type."""
    torch.manual_seed(0)
    return gpvit.create_model('gpvit_mini', depth=2, group_layers=((1, 8),)).eval()


def test_onnx_dynamic_batch_height_width_agrees_with_pytorch(tmp_path):
    model = _small_gpvit()
    path = tmp_path / 'mini.onnx'
    report = export_model(model, 'onnx', path, model_name='gpvit_mini-2')
    assert report.dynamic['batch'] == 'dynamic'
    assert report.dynamic['height'].startswith('dynamic (multiple of 16')
    assert report.dynamic['width'].startswith('dynamic (multiple of 16')
    # checked at two shapes, the default size and another size with another batch
    assert [s for s, _ in report.checks] == [(1, 3, 64, 64), (2, 3, 96, 128)]
    assert all(d < 1e-4 for _, d in report.checks)
    graph_input = onnx.load(str(path)).graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]  # batch, 3, height, width
    # an independent run at a third shape, in onnxruntime, against PyTorch
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    x = torch.randn(3, 3, 48, 80)
    (out,) = session.run(None, {graph_input.name: x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    assert out.shape == ref.shape == (3, 1000)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
    assert 'max abs diff to PyTorch' in report.summary()


def test_exported_program_static_size(tmp_path):
    model = _small_gpvit()
    path = tmp_path / 'mini.pt2'
    report = export_model(model, 'exported-program', path, input_size=(64, 96), dynamic_size=False)
    assert report.dynamic['batch'] == 'dynamic' and report.dynamic['height'].startswith('64')
    assert [s for s, _ in report.checks] == [(1, 3, 64, 96), (3, 3, 64, 96)]
    loaded = torch.export.load(str(path)).module()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-5)
    assert all(p.requires_grad for p in model.parameters())  # the export left the model as it was
    assert '_pos_embed' not in vars(model)


@pytest.mark.filterwarnings('ignore:`torch.jit')
def test_torchscript_command_with_checkpoint(tmp_path, capsys):
    """The model is detected from a checkpoint, traced at the size asked for, and checked at two batch sizes."""
    model = gpvit.create_model('gpvit_l1')
    ckpt = tmp_path / 'l1.pth'
    torch.save({'state_dict': model.state_dict()}, ckpt)
    path = tmp_path / 'l1.pt'
    argv = ['export', '--checkpoint', str(ckpt), '--format', 'torchscript', '--input-size', '64', '-o', str(path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(f'gpvit_l1 -> {path} (torchscript') and 'height 64 (traced)' in out
    diffs = re.findall(r'check \((\d), 3, 64, 64\): max abs diff to PyTorch (\S+)', out)
    assert [b for b, _ in diffs] == ['2', '1'] and all(float(d) < 1e-4 for _, d in diffs)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(path))(x), model.eval()(x), atol=1e-5, rtol=1e-5)


class _FlatHead(nn.Module):
    """A model that only works at one image size (its classifier sees the flattened image)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 64 * 64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_a_model_of_one_size_only(tmp_path):
    """The dynamic export runs, the check at a second size catches the wrong graph; a fixed size works."""
    with pytest.raises(ExportError,
                       match=r'^cannot export flat to onnx: .* at input \(2, 3, 128, 192\).*--static-size'):
        export_model(_FlatHead(), 'onnx', tmp_path / 'flat.onnx', input_size=(64, 64), model_name='flat')
    report = export_model(_FlatHead(), 'onnx', tmp_path / 'flat.onnx', input_size=(64, 64), dynamic_size=False)
    assert report.dynamic == {'batch': 'dynamic', 'height': '64 (fixed, as asked)', 'width': '64 (fixed, as asked)'}
    assert [s for s, _ in report.checks] == [(1, 3, 64, 64), (3, 3, 64, 64)]
    assert all(d < 1e-5 for _, d in report.checks)


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y if y.sum() > 0 else -y  # control flow on values: torch.export cannot capture it


def test_clear_errors(tmp_path, capsys):
    with pytest.raises(ExportError, match=r'^cannot export data_dependent to exported-program: '):
        export_model(_DataDependent(), 'exported-program', tmp_path / 'd.pt2', input_size=(32, 32),
                     model_name='data_dependent')
    with pytest.raises(ExportError, match='unsupported format'):
        export_model(_DataDependent(), 'tflite', tmp_path / 'd.tflite', model_name='data_dependent')
    model = _small_gpvit()
    assert size_multiple(model) == 16
    with pytest.raises(ExportError, match='multiples of 16, got 72x72'):
        export_model(model, 'onnx', tmp_path / 'x.onnx', input_size=(72, 72), model_name='gpvit_mini')
    with pytest.raises(ExportError, match='.pt2'):
        export_model(model, 'exported-program', tmp_path / 'x.pt', model_name='gpvit_mini')
    assert main(['export', '--model', 'gpvit_l9', '--format', 'onnx']) == 2
    assert 'unknown model' in capsys.readouterr().err
    assert main(['export', '--format', 'onnx']) == 2
    assert 'give --model' in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: invalid choice
        main(['export', '--model', 'gpvit_mini', '--format', 'tflite'])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    assert main(['export', '--model', 'gpvit_mini', '--format', 'onnx', '--input-size', '72',
                 '-o', str(tmp_path / 'y.onnx')]) == 2
    assert 'cannot export gpvit_mini to onnx: ' in capsys.readouterr().err
