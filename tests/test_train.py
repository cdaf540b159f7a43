"""Real short training runs of a reduced GPViT on tiny generated datasets (ImageFolder and LMDB)."""
import json

import pytest
import torch

import gpvit
from gpvit.cli import main as cli_main
from gpvit.data import write_lmdb
from gpvit.engine.config import ConfigError
from gpvit.tasks import train

from trainkit import make_image_folder, tiny_config, tiny_raw


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'), classes=3, per_class=10, val_per_class=4)


def _records(out):
    return [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]


def test_short_run_on_image_folder_learns_and_writes_everything(folder, tmp_path, capsys):
    out = tmp_path / 'run'
    cfg = tiny_config(folder['root'], out, train={'epochs': 4}, ckpt={'keep_last': 2})
    result = train(cfg)
    recs = _records(out)
    assert [r['epoch'] for r in recs] == [1, 2, 3, 4]
    assert recs[-1]['train_loss'] < recs[0]['train_loss'] - 0.1, [r['train_loss'] for r in recs]
    # unreadable images: the two corrupt training files are met once per epoch, the val one at every evaluation
    assert all(r['train_skipped_images'] == 2 for r in recs)
    assert all(r['val_skipped_images'] == 1 and r['val_count'] == 12 for r in recs)
    # outputs: resume point, keep-last-2 numbered checkpoints, best, config, log, curves
    assert sorted(p.name for p in out.glob('checkpoint-*.pth')) == ['checkpoint-000003.pth', 'checkpoint-000004.pth']
    for name in ('last.pth', 'best.pth', 'config.yaml', 'train.log'):
        assert (out / name).is_file(), name
    assert (out / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'unreadable image(s) skipped' in (out / 'train.log').read_text()
    ckpt = torch.load(out / 'last.pth', map_location='cpu', weights_only=True)  # plain data only
    assert ckpt['step'] == 4 * 4 and ckpt['epoch'] == 4 and ckpt['classes'] == ['class_0', 'class_1', 'class_2']
    assert ckpt['model_spec'] == {'name': 'gpvit_mini', 'kwargs': {'embed_dim': 48, 'img_size': 32,
                                                                   'drop_path_rate': 0.1, 'num_classes': 3}}
    assert set(ckpt) >= {'model', 'optimizer', 'scheduler', 'scaler', 'rng', 'config'}
    best = torch.load(out / 'best.pth', map_location='cpu', weights_only=True)
    assert best['best']['value'] == max(r['val_top1'] for r in recs) and 'optimizer' not in best

    # gpvit eval of the saved checkpoint reproduces the accuracy logged at the end of training
    capsys.readouterr()
    rc = cli_main(['eval', '--config', str(out / 'config.yaml'), '--checkpoint', str(out / 'last.pth')])
    assert rc == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics['top1'] == recs[-1]['val_top1'] and metrics['top5'] == recs[-1]['val_top5']
    assert metrics['count'] == 12 and metrics['skipped_images'] == 1
    # and the project's loader rebuilds it like any other checkpoint
    model = gpvit.create_model('gpvit_mini', checkpoint=out / 'last.pth', **ckpt['model_spec']['kwargs']).eval()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), result.model.state_dict().values()))


def test_short_run_on_lmdb_learns(folder, tmp_path):
    root = tmp_path / 'lmdb'
    root.mkdir()
    info = write_lmdb(folder['train'], root / 'train', progress=False)
    write_lmdb(folder['val'], root / 'val', class_names=info['classes'], progress=False)
    out = tmp_path / 'run'
    cfg = tiny_config(root, out, data={'format': 'lmdb'}, train={'epochs': 4})
    train(cfg)
    recs = _records(out)
    assert recs[-1]['train_loss'] < recs[0]['train_loss'] - 0.1, [r['train_loss'] for r in recs]
    assert recs[-1]['val_count'] == 12 and recs[-1]['train_skipped_images'] == 0  # skipped when written


def test_iteration_based_run_with_accumulation_ema_and_mixup(folder, tmp_path):
    out = tmp_path / 'run'
    cfg = tiny_config(folder['root'], out, train={'epochs': None, 'iters': 5, 'eval_interval': 5, 'accum_steps': 2},
                      ckpt={'interval': 2}, ema={'enabled': True, 'decay': 0.9},
                      sched={'name': 'poly', 'power': 1.0, 'warmup_iters': 1},
                      data={'mixup': {'mixup_alpha': 0.8, 'cutmix_alpha': 1.0}})
    result = train(cfg)
    recs = _records(out)
    assert [r['step'] for r in recs] == [2, 4, 5]
    assert 'val_top1' not in recs[0] and 'val_ema_top1' in recs[-1] and 'val_top1' in recs[-1]
    assert result.step == 5 and result.ema is not None
    ckpt = torch.load(out / 'last.pth', map_location='cpu', weights_only=True)
    assert ckpt['step'] == 5 and 'model_ema' in ckpt
    assert ckpt['global_batch'] == 16 and ckpt['iters_per_epoch'] == 2  # 32 samples / 8 = 4 batches -> 2 updates
    assert abs(ckpt['scheduler']['base_values'][0] - 2e-3) < 1e-12
    assert result.best['metric'] == 'top1' and result.best['value'] == recs[-1]['val_ema_top1']


def test_existing_run_is_never_overwritten(folder, tmp_path):
    out = tmp_path / 'run'
    train(tiny_config(folder['root'], out, train={'epochs': 1}))
    before = (out / 'last.pth').read_bytes()
    with pytest.raises(ConfigError, match='already holds a run'):
        train(tiny_config(folder['root'], out, train={'epochs': 1}))
    assert (out / 'last.pth').read_bytes() == before


def test_wrong_folder_layout_is_a_clear_error(tmp_path, capsys):
    flat = tmp_path / 'flat'
    (flat / 'train').mkdir(parents=True)
    (flat / 'val').mkdir()
    import numpy as np

    from trainkit import class_image
    class_image(0, np.random.RandomState(0)).save(flat / 'train' / 'img.png')
    cfg_file = tmp_path / 'cfg.yaml'
    import yaml
    cfg_file.write_text(yaml.safe_dump(tiny_raw(flat, tmp_path / 'out')))
    rc = cli_main(['train', '--config', str(cfg_file)])
    assert rc == 2
    err = capsys.readouterr().err
    assert 'holds 1 image files but no class folders' in err and '<class>/<image>' in err


@pytest.mark.skipif('gc_vit_xxtiny' not in gpvit.list_models(), reason='the GC ViT models are not in this tree yet')
def test_gcvit_recipe_runs_through_the_same_engine(tmp_path):
    """configs/classification/gc_vit_xxtiny_in1k.yaml (EMA, Mixup/CutMix, RandAugment, random interpolation,
    clipping 5), shrunk to 64 px, two epochs on a tiny folder."""
    data = make_image_folder(tmp_path / 'data', classes=2, per_class=4, val_per_class=2, size=72, corrupt=False)
    from test_config import CONFIGS

    from gpvit.tasks import load_config
    out = tmp_path / 'run'
    cfg = load_config(CONFIGS / 'gc_vit_xxtiny_in1k.yaml', [
        f'data.root={data["root"]}', f'output_dir={out}', 'data.img_size=64', 'model.kwargs.img_size=64',
        'data.num_classes=null', 'loader.batch_size=4', 'loader.workers=0', 'train.global_batch=null',
        'train.amp=none', 'train.epochs=2', 'train.threads=1', 'sched.warmup_epochs=1', 'sched.cooldown_epochs=0',
        'log.progress=false'])
    result = train(cfg)
    recs = _records(out)
    assert len(recs) == 2 and 'val_ema_top1' in recs[-1] and result.ema is not None
    assert result.best['value'] == max(r['val_ema_top1'] for r in recs)  # best follows the EMA
    ckpt = torch.load(out / 'last.pth', weights_only=True)
    assert ckpt['model_spec'] == {'name': 'gc_vit_xxtiny', 'kwargs': {'img_size': 64, 'num_classes': 2}}
    model = gpvit.create_model('gc_vit_xxtiny', checkpoint=out / 'last.pth', use_ema=True, **ckpt['model_spec']['kwargs'])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), result.ema.state_dict().values()))
