"""Runs that cannot silently lose or falsify work: conversion, one-line errors, silent wrong results (issue list 3-6).

The resume rules, the output-directory lock and the fault injection are in tests/test_train_resume.py.
"""
import io
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import gpvit
from gpvit.cli import main as cli_main
from gpvit.data.folder import decode_image
from gpvit.errors import CheckpointError, ConfigError, DataError
from gpvit.tasks import train

from trainkit import make_image_folder, tiny_config, tiny_raw


class Pickled:
    """An arbitrary Python object in a checkpoint (not loaded without trusting the file)."""


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'), classes=3, per_class=6, val_per_class=2)


@pytest.fixture(scope='module')
def trained(folder, tmp_path_factory):
    """A finished tiny run (gpvit_mini at 32 px, width 48): its output folder."""
    out = tmp_path_factory.mktemp('runs') / 'tiny'
    train(tiny_config(folder['root'], out, ['train.epochs=1', 'sched.warmup_iters=1']))
    return out


def _cfg_file(tmp_path, raw) -> str:
    path = tmp_path / 'cfg.yaml'
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'Traceback' not in err[0], err
    return err[0]


# -- 3. gpvit convert ------------------------------------------------------------------------------------------

def test_convert_format_by_extension_and_never_over_the_source(trained, tmp_path, capsys):
    src = trained / 'last.pth'
    before = src.read_bytes()
    assert cli_main(['convert', str(src), str(src)]) == 2
    assert 'is the source file' in _error_line(capsys) and src.read_bytes() == before
    out_pth, out_st = tmp_path / 'mini.pth', tmp_path / 'mini.safetensors'
    assert cli_main(['convert', str(src), str(out_pth)]) == 0 and cli_main(['convert', str(src), str(out_st)]) == 0
    capsys.readouterr()
    assert isinstance(torch.load(out_pth, weights_only=True), dict)  # a real torch file, not safetensors
    with open(out_st, 'rb') as f:
        assert f.read(8) != b'PK\x03\x04'  # safetensors, not a zip
    x = torch.randn(1, 3, 32, 32)
    ref = gpvit.create_model('gpvit_mini', checkpoint=src).eval()
    for out in (out_pth, out_st):  # every loader takes both outputs
        m = gpvit.create_model('gpvit_mini', checkpoint=out).eval()
        with torch.no_grad():
            assert torch.equal(m(x), ref(x))
        gpvit.load_checkpoint(gpvit.create_model('gpvit_mini', embed_dim=48, img_size=32, num_classes=3), out)
    assert cli_main(['convert', str(src), str(out_pth)]) == 2
    assert 'exists; pass --force' in _error_line(capsys)
    assert cli_main(['convert', str(src), str(out_pth), '--force']) == 0
    assert cli_main(['convert', str(src), str(tmp_path / 'mini.bin')]) == 2
    assert 'must end in .safetensors, .pth or .pt' in _error_line(capsys)


# -- 4. one-line errors --------------------------------------------------------------------------------------

def test_config_mistakes_are_one_line_errors(folder, tmp_path, capsys):
    cfg = _cfg_file(tmp_path, tiny_raw(folder['root'], tmp_path / 'run'))
    assert cli_main(['train', '-c', cfg, 'model.kwargs.drop_path_rat=0.1']) == 2
    assert ('model.kwargs.drop_path_rat: gpvit_mini takes no argument \'drop_path_rat\' (did you mean '
            'model.kwargs.drop_path_rate?)') in _error_line(capsys)
    assert cli_main(['train', '-c', cfg, 'model.name=resnet18']) == 2
    assert "model.name: unknown model 'resnet18'" in _error_line(capsys)
    assert cli_main(['train', '-c', cfg, 'model.name=upernet']) == 2
    assert "model.name: 'upernet' is not a classification model" in _error_line(capsys)
    # a diverging run (lr 1e4) stops with the reason, not a traceback, and keeps what it saved
    assert cli_main(['train', '-c', cfg, 'optim.lr=1e4', 'optim.clip_grad=null', 'train.epochs=1',
                     'sched.warmup_iters=0']) == 2
    assert 'the run diverged (lower optim.lr' in _error_line(capsys)
    # --debug shows the traceback instead
    with pytest.raises(ConfigError):
        cli_main(['--debug', 'train', '-c', cfg, 'model.name=resnet18'])


def test_checkpoint_mistakes_are_one_line_errors(trained, tmp_path, capsys):
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    with pytest.raises(CheckpointError, match=r'empty\.pth: the file is empty \(0 bytes\)'):
        gpvit.create_model('gpvit_mini', checkpoint=empty)
    with pytest.raises(CheckpointError, match=r'is a directory; give the checkpoint file inside it'):
        gpvit.create_model('gpvit_mini', checkpoint=trained)
    pickled = tmp_path / 'pickled.pth'
    torch.save({'state_dict': {}, 'obj': Pickled()}, pickled)
    with pytest.raises(CheckpointError, match=r'\(on the command line: --unsafe-pickle\)$'):
        gpvit.read_checkpoint(pickled)
    assert cli_main(['train', '-c', str(trained / 'config.yaml'), '--resume', str(trained / 'best.pth')]) == 2
    assert 'holds the weights only' in _error_line(capsys)


def test_a_checkpoint_of_another_task_is_refused(trained, tmp_path, capsys):
    from test_detection import det_raw, make_coco
    make_coco(tmp_path / 'coco')
    cfg = _cfg_file(tmp_path, det_raw(tmp_path / 'coco', tmp_path / 'det'))
    assert cli_main(['eval', '-c', cfg, '--checkpoint', str(trained / 'last.pth')]) == 2
    assert "was trained for 'classification', the config is a 'detection' config" in _error_line(capsys)


def test_coco_category_without_id(tmp_path):
    from gpvit.data.coco import CocoDetection
    (tmp_path / 'img').mkdir()
    ann = tmp_path / 'ann.json'
    ann.write_text(json.dumps({'images': [], 'annotations': [], 'categories': [{'id': 1}, {'name': 'no id'}]}))
    with pytest.raises(DataError, match=r'category 1 \(\{\'name\': \'no id\'\}\) has no integer "id"'):
        CocoDetection(ann, tmp_path / 'img', None)


def test_detection_sizes_checked_with_the_config():
    from gpvit.tasks import load_config
    with pytest.raises(ConfigError, match=r'^data\.min_size: 64 must be smaller than data\.max_size \(64\)'):
        load_config('gpvit_l1_maskrcnn_1x', ['data.min_size=64', 'data.max_size=64'])
    with pytest.raises(ConfigError, match=r'^data\.short_sizes: 1400 must be smaller than data\.max_size \(1333\)'):
        load_config('gpvit_l1_maskrcnn_3x', ['data.short_sizes=[480, 1400]'])


def test_bench_fails_on_a_case_that_cannot_run(tmp_path, capsys):
    rc = cli_main(['bench', '--models', 'gpvit_mini', '--sizes', '8', '--no-plot', '--out', str(tmp_path)])
    assert rc == 1 and 'could not run, first: gpvit_mini 8x8: GPViT needs images of at least 32x32' in \
        capsys.readouterr().err


# -- 5. silent wrong results ---------------------------------------------------------------------------------

def test_16_bit_images_are_scaled_not_clipped():
    grey16 = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    buf = io.BytesIO()
    Image.fromarray(grey16).save(buf, format='PNG')
    rgb = np.asarray(decode_image(buf.getvalue(), 'grey16.png'))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    expected = np.rint(grey16 * (255 / 65535)).astype(np.uint8)
    assert np.array_equal(rgb[..., 0], expected) and (rgb == 255).mean() < 0.01


def test_a_training_checkpoint_rebuilds_its_own_model(trained, tmp_path):
    """gpvit_mini trained at 32 px (width 48, 3 classes): create_model, visualize and export take that model."""
    from gpvit.tools.export import native_input_size
    model = gpvit.create_model('gpvit_mini', checkpoint=trained / 'last.pth')
    assert model.grid_size == (4, 4) and model.embed_dim == 48 and native_input_size(model) == (32, 32)
    shutil.copy(trained / 'last.pth', tmp_path / 'copy.pth')
    assert gpvit.create_model('gpvit_mini', checkpoint=tmp_path / 'copy.pth', img_size=64).grid_size == (8, 8)


def test_lmdb_checks_every_image_by_decoding_it(tmp_path, capsys):
    rng = np.random.RandomState(0)
    for c in range(2):
        (tmp_path / 'train' / f'c{c}').mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.randint(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / 'train' / f'c{c}' / f'{i}.jpg')
    whole = (tmp_path / 'train' / 'c0' / '0.jpg').read_bytes()
    (tmp_path / 'train' / 'c0' / 'cut.jpg').write_bytes(whole[:int(len(whole) * 0.9)])  # its headers are intact
    args = ['lmdb', '--train-img-dir', str(tmp_path / 'train')]
    assert cli_main(args + ['--train-out', str(tmp_path / 'db')]) == 0
    assert '6 images in 2 classes' in capsys.readouterr().out.replace('train: ', '')  # the cut file left out
    assert cli_main(args + ['--train-out', str(tmp_path / 'quick'), '--quick-check']) == 0
    assert '7 images in 2 classes' in capsys.readouterr().out  # the structural check lets it in
