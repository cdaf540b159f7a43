"""Configs: schema checks with errors naming the key, overrides, and the paper recipes against the specs."""
import math
from pathlib import Path

import pytest
import yaml

from gpvit.cli import main as cli_main
from gpvit.engine.config import ConfigError, apply_overrides
from gpvit.engine.optim import effective_lr
from gpvit.tasks import build_config, load_config

CONFIGS = Path(__file__).resolve().parent.parent / 'configs' / 'classification'
GPVIT = {1: (0.2, 'group'), 2: (0.2, 'group'), 3: (0.3, 'avg'), 4: (0.3, 'avg')}
# gcvit.md 1.7 / 3: test crop_pct, crop mode, img size, per-GPU batch, lr
GCVIT = {
    'gc_vit_xxtiny': (1.0, 'center', 224, 128, 5e-3), 'gc_vit_xtiny': (0.875, 'center', 224, 128, 5e-3),
    'gc_vit_tiny': (1.0, 'center', 224, 128, 5e-3), 'gc_vit_tiny2': (0.875, 'center', 224, 128, 5e-3),
    'gc_vit_small': (0.875, 'center', 224, 32, 5e-3), 'gc_vit_small2': (0.875, 'center', 224, 32, 5e-3),
    'gc_vit_base': (1.0, 'center', 224, 32, 5e-3), 'gc_vit_large': (1.0, 'center', 224, 32, 5e-3),
    'gc_vit_large_224_21k': (1.0, 'center', 224, 32, 5e-3), 'gc_vit_large_384_21k': (1.0, 'squash', 384, 32, 1e-3),
    'gc_vit_large_512_21k': (1.0, 'squash', 512, 32, 1e-3),
}


def test_every_config_file_loads():
    # one folder per task (configs/classification, detection, segmentation), no recipe at the top of configs/
    assert not list(CONFIGS.parent.glob('*.yaml')) and not list(CONFIGS.parent.glob('*.yml'))
    names = sorted(p.stem for p in CONFIGS.glob('*.yaml'))
    expected = {f'gpvit_l{i}_in1k' for i in GPVIT} | {f'{n}_in1k' for n in GCVIT} | {'quickstart_digits'}
    assert expected <= set(names)
    for name in names:
        cfg = load_config(CONFIGS / f'{name}.yaml')
        assert cfg.task == 'classification'


@pytest.mark.parametrize('variant', sorted(GPVIT))
def test_gpvit_recipe_matches_spec(variant):
    """gpvit.md 5: AdamW 5e-4 x 2048/512, wd 0.05, cosine per iteration to 1e-2 x lr, 15 warmup epochs from
    1e-3 x (mmcv scaled), clip 1.0, 300 epochs, RandAugment m9 inc, erasing 0.25, Mixup 0.8 / CutMix 1.0,
    smoothing 0.1, test resize 256 + crop 224, drop path and neck per variant, no EMA."""
    cfg = load_config(CONFIGS / f'gpvit_l{variant}_in1k.yaml')
    dpr, pool = GPVIT[variant]
    assert cfg.model.name == f'gpvit_l{variant}'
    assert cfg.model.kwargs == {'drop_path_rate': dpr, 'global_pool': pool}
    assert cfg.train.global_batch == 2048 and cfg.loader.batch_size == 128
    assert math.isclose(effective_lr(cfg, 2048), 2e-3)
    o, s, d = cfg.optim, cfg.sched, cfg.data
    assert (o.name, o.weight_decay, tuple(o.betas), o.eps, o.clip_grad) == ('adamw', 0.05, (0.9, 0.999), 1e-8, 1.0)
    assert o.no_decay_from_model
    assert (s.name, s.warmup_epochs, s.warmup_ratio, s.warmup_mode, s.min_lr_ratio) == ('cosine', 15, 1e-3, 'scaled', 0.01)
    assert cfg.train.epochs == 300 and s.cooldown_epochs == 0 and not cfg.ema.enabled
    a = d.train_aug
    assert (a.scale, a.hflip, a.auto_augment, a.interpolation, a.re_prob, a.re_mode) == \
        ((0.08, 1.0), 0.5, 'rand-m9-mstd0.5-inc1', 'bicubic', 0.25, 'pixel')
    assert math.isclose(a.ratio[0], 3 / 4) and math.isclose(a.ratio[1], 4 / 3)
    m = d.mixup
    assert (m.mixup_alpha, m.cutmix_alpha, m.prob, m.switch_prob, m.mode) == (0.8, 1.0, 1.0, 0.5, 'batch')
    assert d.label_smoothing == 0.1
    assert math.floor(d.img_size / d.crop_pct) == 256 and d.img_size == 224 and d.crop_mode == 'center'
    assert cfg.train.amp == 'fp16' and cfg.ckpt.interval == 5


@pytest.mark.parametrize('name', sorted(GCVIT))
def test_gcvit_recipe_matches_spec(name):
    """gcvit.md 3: AdamW lr 5e-3 (unscaled), wd 0.05, cosine per iteration, 20 warmup epochs from 1e-6,
    min 5e-6, 310 + 10 cooldown epochs, clip 5, AMP, EMA 0.9998 (validated), RandAugment m9 inc, color jitter
    0.4, random interpolation, erasing 0.25 pixel, Mixup 0.8 / CutMix 1.0 switch 0.5, smoothing 0.1, eval crop
    0.875 during training and the variant's crop_pct for gpvit eval, seed 42, only 1-D params without decay."""
    cfg = load_config(CONFIGS / f'{name}_in1k.yaml')
    crop, mode, size, bs, lr = GCVIT[name]
    assert cfg.model.name == name and cfg.model.kwargs == {}
    o, s, d, t = cfg.optim, cfg.sched, cfg.data, cfg.train
    assert (o.lr, o.lr_scale_batch, o.weight_decay, o.clip_grad, o.no_decay_from_model) == (lr, None, 0.05, 5.0, False)
    assert (s.name, s.warmup_epochs, s.warmup_lr, s.warmup_mode, s.min_lr, s.cooldown_epochs) == \
        ('cosine', 20, 1e-6, 'linear', 5e-6, 10)
    assert t.epochs == 320 and t.seed == 42 and t.amp == 'fp16'
    assert cfg.ema.enabled and cfg.ema.decay == 0.9998 and cfg.ema.eval
    a = d.train_aug
    assert (a.auto_augment, a.color_jitter, a.interpolation, a.re_prob, a.re_mode, a.re_count) == \
        ('rand-m9-mstd0.5-inc1', 0.4, 'random', 0.25, 'pixel', 1)
    assert (d.mixup.mixup_alpha, d.mixup.cutmix_alpha, d.mixup.switch_prob, d.label_smoothing) == (0.8, 1.0, 0.5, 0.1)
    assert d.crop_pct == 0.875 and d.test_crop_pct == crop and d.crop_mode == mode and d.img_size == size
    assert cfg.loader.batch_size == bs and t.global_batch == bs * 32


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match=r'^optim\.lrr: unknown key \(did you mean optim\.lr\?\)'):
        load_config(CONFIGS / 'quickstart_digits.yaml', ['optim.lrr=1'])
    with pytest.raises(ConfigError, match=r'^data\.train_aug\.hflipp: unknown key'):
        load_config(CONFIGS / 'quickstart_digits.yaml', ['data.train_aug.hflipp=0.5'])
    with pytest.raises(ConfigError, match=r'^trian: unknown key \(did you mean train\?\)'):
        build_config({'trian': {'epochs': 1}, 'train': {'epochs': 1}})
    with pytest.raises(ConfigError, match=r'^task: unknown task'):
        build_config({'task': 'detectionn', 'train': {'epochs': 1}})


@pytest.mark.parametrize('override, message', [
    ('optim.lr=abc', r"^optim\.lr: expected float, got 'abc'"),
    ('optim.lr=-1', r'^optim\.lr: must be > 0, got -1\.0'),
    ('train.epochs=2.5', r'^train\.epochs: expected int or null, got 2\.5'),
    ('train.amp=fp8', r"^train\.amp: expected one of 'none', 'bf16', 'fp16', got 'fp8'"),
    ('sched.name=cosin', r"^sched\.name: .*did you mean 'cosine'"),
    ('optim.betas=[0.9]', r'^optim\.betas: expected a list \[float, float\] \(2 values\)'),
    ('data.train_aug.scale=[0.9, 0.1]', r'^data\.train_aug\.scale: expected 0 < min <= max'),
    ('data.train_aug.auto_augment=randaug-m9', r'^data\.train_aug\.auto_augment: not a timm policy string'),
    ('data.format=tfrecord', r"^data\.format: expected one of 'folder', 'lmdb'"),
    ('ema.decay=1.5', r'^ema\.decay: must be in \(0, 1\)'),
    ('train.iters=100', r'^train\.epochs / train\.iters: set exactly one'),
    ('loader.batch_size=7', None),  # fine without mixup
    ('model.kwargs=3', r'^model\.kwargs: expected a mapping'),
    ('optim.lr.x=1', r'^optim\.lr: is a value'),
])
def test_bad_values_are_named(override, message):
    if message is None:
        assert load_config(CONFIGS / 'quickstart_digits.yaml', [override]).loader.batch_size == 7
        return
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / 'quickstart_digits.yaml', [override])


def test_mixup_needs_even_batch():
    with pytest.raises(ConfigError, match=r'^loader\.batch_size: Mixup/CutMix needs an even batch size'):
        load_config(CONFIGS / 'gpvit_l1_in1k.yaml', ['loader.batch_size=127'])


def test_overrides_are_read_as_yaml():
    cfg = load_config(CONFIGS / 'gpvit_l1_in1k.yaml', [
        'optim.lr=1e-3', 'data.train_aug.scale=[0.5, 1]', 'ema.enabled=true', 'model.kwargs.img_size=256',
        'data.train_aug.auto_augment=null', 'train.global_batch=null', 'train.accum_steps=4'])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.data.train_aug.scale == (0.5, 1.0)
    assert cfg.ema.enabled is True
    assert cfg.model.kwargs == {'drop_path_rate': 0.2, 'global_pool': 'group', 'img_size': 256}
    assert cfg.data.train_aug.auto_augment is None
    assert cfg.train.accum_steps == 4
    with pytest.raises(ConfigError, match='expected KEY=VALUE'):
        apply_overrides({}, ['optim.lr'])


def test_cli_config_error_fails_before_any_work(tmp_path, capsys):
    out = tmp_path / 'run'
    rc = cli_main(['train', '--config', str(CONFIGS / 'quickstart_digits.yaml'), f'output_dir={out}',
                   f'data.root={tmp_path}', '--set', 'optim.weight_decay=-0.1'])
    assert rc == 2
    assert 'optim.weight_decay: must be >= 0, got -0.1' in capsys.readouterr().err
    assert not out.exists()
    # a valid config whose data root has no splits: still fails before any work, naming the key
    rc = cli_main(['train', '--config', str(CONFIGS / 'quickstart_digits.yaml'), f'output_dir={out}',
                   f'data.root={tmp_path}'])
    assert rc == 2
    assert 'data.train_split:' in capsys.readouterr().err
    assert not out.exists()
    rc = cli_main(['train', '--config', str(CONFIGS / 'quickstart_digits.yaml'), f'output_dir={out}',
                   f'data.root={tmp_path}', 'model.name=gpvit_l9'])
    assert rc == 2
    assert "model.name: unknown model 'gpvit_l9'" in capsys.readouterr().err
    assert not out.exists()


def test_print_config_round_trips(tmp_path, capsys):
    rc = cli_main(['train', '--config', str(CONFIGS / 'gpvit_l2_in1k.yaml'), 'optim.lr=3e-4', '--print-config'])
    assert rc == 0
    text = capsys.readouterr().out
    resolved = tmp_path / 'resolved.yaml'
    resolved.write_text(text)
    cfg = load_config(resolved)
    assert cfg.optim.lr == 3e-4 and cfg.model.name == 'gpvit_l2'
    assert cfg == load_config(CONFIGS / 'gpvit_l2_in1k.yaml', ['optim.lr=3e-4'])


def test_global_batch_must_split_over_the_processes(tmp_path, monkeypatch):
    from gpvit.tasks import train
    cfg = load_config(CONFIGS / 'gpvit_l1_in1k.yaml', [f'data.root={tmp_path}', f'output_dir={tmp_path / "run"}',
                                                       'loader.batch_size=96'])
    with pytest.raises(ConfigError, match=r'^train\.global_batch: 2048 is not a multiple of loader\.batch_size x '
                                          r'processes = 96 x 1'):
        train(cfg)
    monkeypatch.setenv('WORLD_SIZE', '3')
    cfg.loader.batch_size = 128
    with pytest.raises(ConfigError, match=r'= 128 x 3'):
        train(cfg)
    assert not (tmp_path / 'run').exists()


def test_a_task_module_that_cannot_be_imported_fails_loudly():
    """The built-in tasks are plain imports of gpvit.tasks: a broken one is an ImportError at once, not a task that
    silently goes missing."""
    import subprocess
    import sys
    code = "import sys; sys.modules['gpvit.tasks.detection'] = None; import gpvit.tasks"
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and 'ModuleNotFoundError' in proc.stderr and 'gpvit.tasks.detection' in proc.stderr


@pytest.mark.parametrize('recipe, module', [('gpvit_l1_upernet', 'torchmetrics'), ('gpvit_l1_maskrcnn_1x', 'pycocotools')])
def test_a_missing_extra_is_a_config_error(recipe, module, monkeypatch):
    """A dense task whose metric package is not installed fails when the config is read, before any work."""
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == module else find_spec(name, *a))
    with pytest.raises(ConfigError, match=rf'^task: \w+ needs packages that are not installed: {module} '
                                          r'\(pip install "gpvit\[dense\]"\)'):
        load_config(recipe)
    monkeypatch.undo()
    assert load_config(recipe).task in ('segmentation', 'detection')


def test_recipes_by_name_from_anywhere(tmp_path, monkeypatch, capsys):
    """Packaged recipes load by name, by task/name and by the docs' configs/ paths from any directory; an existing
    file wins; a wrong name is a one-line error naming the closest recipes."""
    from gpvit.engine.recipes import RECIPE_DIR, list_recipes, resolve_config
    monkeypatch.chdir(tmp_path)
    packaged = RECIPE_DIR / 'classification' / 'gpvit_l1_in1k.yaml'
    for spec in ('gpvit_l1_in1k', 'gpvit_l1_in1k.yaml', 'classification/gpvit_l1_in1k',
                 'configs/classification/gpvit_l1_in1k.yaml'):
        assert resolve_config(spec) == packaged
    assert load_config('gpvit_l1_in1k') == load_config(packaged)
    own = tmp_path / 'gpvit_l1_in1k.yaml'  # a file of the same name in the working directory wins
    own.write_text(packaged.read_text().replace('drop_path_rate: 0.2', 'drop_path_rate: 0.05'))
    assert load_config('gpvit_l1_in1k.yaml').model.kwargs['drop_path_rate'] == 0.05
    assert load_config('gpvit_l1_in1k').model.kwargs['drop_path_rate'] == 0.2
    with pytest.raises(ConfigError, match=r'^config file not found: gpvit_l1_inlk is neither a file nor a packaged '
                                          r'recipe; did you mean gpvit_l1_in1k'):
        load_config('gpvit_l1_inlk')
    with pytest.raises(ConfigError, match='not found: elsewhere/gpvit_l1_in1k.yaml'):
        load_config('elsewhere/gpvit_l1_in1k.yaml')  # a path that is not the docs' configs/<task>/ layout
    # the listing: every file of the package, with task, model and dataset read from it
    recipes = {r.name: r for r in list_recipes()}
    assert len(recipes) == len(list(RECIPE_DIR.rglob('*.yaml')))
    assert (recipes['gpvit_l1_maskrcnn_1x'].task, recipes['gpvit_l1_maskrcnn_1x'].model,
            recipes['gpvit_l1_maskrcnn_1x'].dataset) == ('detection', 'mask_rcnn (gpvit_l1)', 'COCO 2017')
    assert {r.dataset for r in recipes.values()} == {'ImageNet-1k', 'COCO 2017', 'ADE20K', 'scikit-learn digits'}
    assert cli_main(['configs', '--task', 'segmentation']) == 0
    out = capsys.readouterr().out
    assert '| `gpvit_l1_upernet` | segmentation | upernet (gpvit_l1) | ADE20K |' in out and 'in1k' not in out
    assert cli_main(['train', '--config', 'gpvit_l1_in1k', '--print-config']) == 0
    assert yaml.safe_load(capsys.readouterr().out)['model']['name'] == 'gpvit_l1'
