"""Engine pieces: lr schedules, parameter groups, checkpoint files, mixed precision, TensorBoard, curves."""
import json
import logging
import math

import pytest
import torch
from test_config import CONFIGS

import gpvit
from gpvit.engine.config import ConfigError
from gpvit.engine.logs import plot_curves
from gpvit.engine.optim import ScheduleLength, build_optimizer, build_scheduler, lr_at, param_groups
from gpvit.engine.state import FORMAT, CheckpointManager, find_resume, remove_stale_temporaries
from gpvit.errors import CheckpointError
from gpvit.tasks import build_config, evaluate_checkpoint, load_config, train

from trainkit import make_image_folder, state_equal, tiny_config


def _sched(overrides, per_epoch=10, epochs=None, iters=None, lr=1.0):
    raw = {'train': {'epochs': epochs, 'iters': iters}, 'optim': {'lr': lr}}
    from gpvit.engine.config import apply_overrides
    cfg = build_config(apply_overrides(raw, overrides))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    length = ScheduleLength(total=epochs * per_epoch if epochs else iters, per_epoch=per_epoch,
                            epoch_based=epochs is not None)
    return build_scheduler(opt, cfg, length, lr), opt


def test_gpvit_schedule_is_mmcv_cosine_with_scaled_warmup():
    """mmcv CosineAnnealing(min_lr_ratio=1e-2, by_epoch=False) + linear warmup 15 epochs, ratio 1e-3."""
    per_epoch, epochs, lr = 20, 300, 2e-3
    cfg = load_config(CONFIGS / 'gpvit_l1_in1k.yaml')
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    s = build_scheduler(opt, cfg, ScheduleLength(epochs * per_epoch, per_epoch, True), lr)
    total, warm = epochs * per_epoch, 15 * per_epoch

    def mmcv(t):
        regular = lr * 1e-2 + (lr - lr * 1e-2) * (1 + math.cos(math.pi * t / total)) / 2
        if t < warm:
            return regular * (1 - (1 - 1e-3) * (1 - t / warm))
        return regular
    for t in (0, 1, 150, 299, 300, 301, 3000, 5999):
        assert math.isclose(lr_at(s, t), mmcv(t), rel_tol=1e-12), t
    assert math.isclose(lr_at(s, 0), 2e-6, rel_tol=1e-9)
    s.step_update(300)
    assert math.isclose(opt.param_groups[0]['lr'], mmcv(300), rel_tol=1e-12)


def test_gcvit_schedule_is_timm_cosine_with_cooldown():
    """timm CosineLRScheduler per iteration over 310 epochs, warmup 20 epochs from 1e-6, then 10 at min_lr."""
    per_epoch = 10
    cfg = load_config(CONFIGS / 'gc_vit_tiny_in1k.yaml')
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=5e-3)
    s = build_scheduler(opt, cfg, ScheduleLength(320 * per_epoch, per_epoch, True), 5e-3)
    assert math.isclose(lr_at(s, 0), 1e-6)
    assert math.isclose(lr_at(s, 100), 1e-6 + (5e-3 - 1e-6) * 100 / 200)
    t = 1000
    assert math.isclose(lr_at(s, t), 5e-6 + (5e-3 - 5e-6) * (1 + math.cos(math.pi * t / 3100)) / 2)
    assert lr_at(s, 3100) == lr_at(s, 3199) == 5e-6


def test_poly_step_and_constant_schedules():
    s, _ = _sched(['sched.name=poly', 'sched.power=1.0', 'sched.warmup_iters=10', 'sched.warmup_ratio=1e-6',
                   'sched.warmup_mode=scaled'], iters=100)
    assert math.isclose(lr_at(s, 50), 0.5) and math.isclose(lr_at(s, 5), 0.95 * (1 - (1 - 1e-6) * 0.5))
    s, _ = _sched(['sched.name=step', 'sched.milestones=[8, 11]', 'sched.warmup_iters=5', 'sched.warmup_ratio=0.001'],
                  epochs=12, per_epoch=10)
    assert math.isclose(lr_at(s, 0), 1e-3) and lr_at(s, 79) == 1.0
    assert math.isclose(lr_at(s, 80), 0.1) and math.isclose(lr_at(s, 110), 0.01)
    s, _ = _sched(['sched.name=constant', 'sched.warmup_epochs=1'], epochs=3)
    assert lr_at(s, 0) == 0. and lr_at(s, 10) == lr_at(s, 29) == 1.0
    with pytest.raises(ConfigError, match=r'^sched\.warmup_iters: the warmup \(100 updates\) must be shorter'):
        _sched(['sched.warmup_iters=100'], iters=100)


def test_param_groups_follow_the_gpvit_recipe():
    model = gpvit.create_model('gpvit_l1')
    groups = param_groups(model, 0.05)
    no_decay = {n for g in groups if g['weight_decay'] == 0 for n in g['names']}
    decay = {n for g in groups if g['weight_decay'] > 0 for n in g['names']}
    assert {'pos_embed', 'blocks.1.group_token', 'attn_pool.query', 'norm.weight', 'head.bias',
            'patch_embed.stem.bn.weight', 'blocks.0.norm1.weight'} <= no_decay
    dw = [n for n, p in model.named_parameters() if p.ndim == 4 and p.shape[1] == 1]
    assert dw and set(dw) <= decay  # depthwise conv weights are decayed (mmcls norm/bias rules only)
    assert all(p.ndim > 1 for g in groups if g['weight_decay'] > 0 for p in g['params'])
    assert len(decay) + len(no_decay) == len(list(model.parameters()))
    # lr multipliers by name (e.g. a segmentation head's x10) land in timm's lr_scale
    mult = param_groups(model, 0.05, lr_mult={'head': 10.0})
    assert {g['lr_scale'] for g in mult} == {1.0, 10.0}
    assert all(n.startswith('head') for g in mult if g['lr_scale'] == 10.0 for n in g['names'])
    # the GC ViT recipe ignores the model's no_weight_decay(): only 1-D parameters skip decay
    plain = param_groups(model, 0.05, no_decay_from_model=False)
    assert 'pos_embed' in {n for g in plain if g['weight_decay'] > 0 for n in g['names']}
    cfg = load_config(CONFIGS / 'gpvit_l1_in1k.yaml')
    opt = build_optimizer(model, cfg, 2e-3)
    assert type(opt).__name__ == 'AdamW' and all(g['lr'] == 2e-3 for g in opt.param_groups)


@pytest.mark.parametrize('name', ['adamw', 'momentum'])
def test_fused_optimizer_updates_as_the_per_tensor_loop(name):
    """``optim.fused`` (default) builds torch's fused kernel for AdamW / SGD; its updates and state are those
    of the per-tensor implementation, so a run can switch between them (and resume across them)."""
    torch.manual_seed(0)
    model = gpvit.create_model('gpvit_mini', img_size=32)
    twin = gpvit.create_model('gpvit_mini', img_size=32)
    twin.load_state_dict(model.state_dict())
    fused = build_optimizer(model, build_config({'train': {'epochs': 1}, 'optim': {'name': name}}), 1e-2)
    loop = build_optimizer(twin, build_config({'train': {'epochs': 1}, 'optim': {'name': name, 'fused': False}}), 1e-2)
    assert all(g['fused'] for g in fused.param_groups) and not any(g['fused'] for g in loop.param_groups)
    for _ in range(3):  # the same gradients into both (the model's; a twin's own would differ by rounding)
        model(torch.randn(2, 3, 32, 32)).square().mean().backward()
        for p, q in zip(model.parameters(), twin.parameters()):
            q.grad = p.grad.clone()
        fused.step()
        loop.step()
        fused.zero_grad()
        loop.zero_grad()
    for (n, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=n)
    loop.load_state_dict(fused.state_dict())  # the same state layout
    assert build_optimizer(model, build_config({'train': {'epochs': 1}, 'optim': {'name': 'lamb'}}), 1e-2).defaults.get('fused') is None


def _train_state(step: int) -> dict:
    """The smallest complete training checkpoint (what a resume needs)."""
    return {'format': FORMAT, 'model': {}, 'optimizer': {}, 'scheduler': {}, 'scaler': {}, 'epoch': 0, 'step': step}


def test_checkpoint_manager_keeps_last_n_and_never_truncates(tmp_path, monkeypatch):
    m = CheckpointManager(tmp_path, keep_last=2)
    for n in range(1, 5):
        m.save(_train_state(n), number=n)
    assert [p.name for p in m.numbered()] == ['checkpoint-000003.pth', 'checkpoint-000004.pth']
    assert torch.load(m.last, weights_only=True)['step'] == 4

    def crash(obj, path):
        with open(path, 'wb') as f:
            f.write(b'partial')
        raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', crash)
    with pytest.raises(OSError, match='disk full'):
        m.save(_train_state(5), number=5)
    monkeypatch.undo()
    assert torch.load(m.last, weights_only=True)['step'] == 4  # the previous resume point is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ['checkpoint-000003.pth', 'checkpoint-000004.pth',
                                                          'last.pth']
    path, state = find_resume('auto', tmp_path)
    assert path == m.last and state['step'] == 4 and find_resume('auto', tmp_path / 'x') is None
    with pytest.raises(FileNotFoundError):
        find_resume(str(tmp_path / 'missing.pth'), tmp_path)


def test_resume_falls_back_from_a_corrupt_last_checkpoint(tmp_path, caplog):
    m = CheckpointManager(tmp_path, keep_last=2)
    for n in (1, 2):
        m.save(_train_state(n), number=n)
    m.last.write_bytes(m.last.read_bytes()[:100])  # cut short
    path, state = find_resume('auto', tmp_path)
    assert path.name == 'checkpoint-000002.pth' and state['step'] == 2
    assert 'last.pth (' in caplog.text and 'resuming from checkpoint-000002.pth (update 2) instead' in caplog.text
    for p in m.numbered():
        p.write_bytes(b'')
    with pytest.raises(CheckpointError, match=r'^resume auto: no usable checkpoint in .*checkpoint-000002\.pth '
                                              r'\(.*the file is empty'):
        find_resume('auto', tmp_path)


def test_resume_from_weights_only_or_a_folder_is_a_clear_error(tmp_path):
    m = CheckpointManager(tmp_path)
    m.save_best(_train_state(3))
    with pytest.raises(CheckpointError, match=r'best\.pth: holds the weights only \(no optimizer, scheduler, '
                                              r'scaler\), as best\.pth does; resume from last\.pth'):
        find_resume(str(m.best), tmp_path)
    with pytest.raises(CheckpointError, match='is a directory; give a checkpoint file'):
        find_resume(str(tmp_path), tmp_path)


def test_stale_temporaries_of_a_killed_write_are_removed(tmp_path):
    (tmp_path / '.last.pth.abc123.tmp').write_bytes(b'partial')
    (tmp_path / '.checkpoint-000004.pth.x.tmp').write_bytes(b'partial')
    (tmp_path / 'notes.tmp').write_text('a user file')  # not ours
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == ['.checkpoint-000004.pth.x.tmp', '.last.pth.abc123.tmp']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['notes.tmp']


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'), classes=2, per_class=8, val_per_class=2, corrupt=False)


def test_bf16_autocast_on_cpu_trains(folder, tmp_path):
    cfg = tiny_config(folder['root'], tmp_path / 'run', train={'epochs': 1, 'amp': 'bf16', 'amp_on_cpu': True},
                      sched={'warmup_iters': 1})
    seen = []
    orig = cfg.task

    def hook(trainer):
        x = torch.randn(2, 3, 32, 32)
        with trainer.autocast():
            seen.append(trainer.model(x).dtype)
    result = train(cfg, hooks={'after_step': hook})
    assert orig == 'classification' and seen and all(d == torch.bfloat16 for d in seen)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # master weights stay fp32


@pytest.mark.parametrize('keep', [True, False])
def test_cpu_runs_keep_freed_memory_unless_told_not_to(folder, tmp_path, monkeypatch, keep):
    """A CPU training or evaluation run sets glibc's malloc to keep freed activations
    (``train.keep_freed_memory``, on by default); false leaves the allocator alone. (The call itself is tested
    in test_tools_bench.py; here it is counted, so that the test process keeps glibc's defaults.)"""
    import gpvit.engine.evaluator as evaluator_module
    import gpvit.engine.trainer as trainer_module
    calls = []
    monkeypatch.setattr(trainer_module, 'keep_freed_memory', lambda: calls.append('train') or True)
    monkeypatch.setattr(evaluator_module, 'keep_freed_memory', lambda: calls.append('eval') or True)
    overrides = () if keep else ('train.keep_freed_memory=false',)
    cfg = tiny_config(folder['root'], tmp_path / 'run', overrides, train={'epochs': 1}, sched={'warmup_iters': 1})
    assert cfg.train.keep_freed_memory is keep
    train(cfg)
    assert calls == (['train'] if keep else [])
    metrics = evaluate_checkpoint(cfg, tmp_path / 'run' / 'last.pth')
    assert metrics['count'] == 4
    assert calls == (['train', 'eval'] if keep else [])


_CPUINFO = 'processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f {extra}\nbogomips\t: 1\n'


@pytest.mark.parametrize('extra, expected', [
    ('avx512_bf16 avx512_vnni', {'avx512_bf16'}),
    ('avx512_bf16 amx_bf16 amx_tile', {'avx512_bf16', 'amx_bf16'}),
    ('avx512_vnni', set()),
])
def test_cpu_bf16_flags_read_from_cpuinfo(tmp_path, monkeypatch, extra, expected):
    """The bf16 flags of an x86 CPU come from its cpuinfo's flags line; elsewhere, or without the file or the
    line, they are unknown (None), which is not the same as none."""
    import platform
    from gpvit.engine.precision import cpu_bf16_flags
    info = tmp_path / 'cpuinfo'
    info.write_text(_CPUINFO.format(extra=extra))
    monkeypatch.setattr(platform, 'machine', lambda: 'x86_64')
    assert cpu_bf16_flags(str(info)) == expected
    assert cpu_bf16_flags(str(tmp_path / 'missing')) is None
    (tmp_path / 'noflags').write_text('processor\t: 0\n')
    assert cpu_bf16_flags(str(tmp_path / 'noflags')) is None
    monkeypatch.setattr(platform, 'machine', lambda: 'aarch64')
    assert cpu_bf16_flags(str(info)) is None


@pytest.mark.parametrize('amp, on_cpu, flags, level, words', [
    ('none', False, {'avx512_bf16'}, logging.INFO, 'train.amp=bf16 with train.amp_on_cpu=true'),
    ('bf16', False, {'amx_bf16'}, logging.WARNING, 'runs in float32 on a CPU unless train.amp_on_cpu=true'),
    ('bf16', True, set(), logging.WARNING, 'set train.amp_on_cpu=false'),
    ('bf16', True, {'avx512_bf16'}, None, None),
    ('none', False, set(), None, None),
    ('fp16', True, {'avx512_bf16'}, None, None),
    ('none', False, None, None, None),
    ('bf16', True, None, None, None),
])
def test_cpu_precision_hint(amp, on_cpu, flags, level, words):
    """A CPU run is told when bf16 would be faster (the CPU has the instructions but the run is float32) and when
    it is slow (bf16 autocast without them); nothing when the config fits the CPU or the CPU is unknown."""
    from gpvit.engine.precision import cpu_precision_hint
    hint = cpu_precision_hint(amp, on_cpu, None if flags is None else frozenset(flags))
    if level is None:
        assert hint is None
    else:
        assert hint[0] == level and words in hint[1], hint


def test_cpu_training_run_logs_the_precision_hint(folder, tmp_path, monkeypatch, caplog):
    """The trainer logs the hint for the CPU it runs on (here one made to list avx512_bf16) in a float32 run."""
    import gpvit.engine.trainer as trainer_module
    monkeypatch.setattr(trainer_module, 'cpu_bf16_flags', lambda: frozenset({'avx512_bf16'}))
    cfg = tiny_config(folder['root'], tmp_path / 'run', (), train={'epochs': 1}, sched={'warmup_iters': 1})
    with caplog.at_level(logging.INFO, logger='gpvit.train'):
        train(cfg)
    assert 'this CPU has bf16 instructions (avx512_bf16)' in caplog.text, caplog.text


class _Killed(Exception):
    pass


def test_fp16_with_its_grad_scaler_on_cpu_trains_and_resumes(folder, tmp_path):
    """The fp16 recipes' path (autocast + dynamic loss scaling) runs on a CPU when asked, and a resumed run
    carries the scaler's state on: the same weights and the same scale as a run that was never stopped."""
    fp16 = dict(train={'epochs': 2, 'amp': 'fp16', 'amp_on_cpu': True}, sched={'warmup_iters': 1})
    seen = []

    def hook(trainer):  # leaves the run as it was: its random stream and its BatchNorm statistics
        trainer.model.eval()
        with torch.random.fork_rng(), torch.no_grad(), trainer.autocast():
            seen.append(trainer.model(torch.randn(2, 3, 32, 32)).dtype)
        trainer.model.train()
    train(tiny_config(folder['root'], tmp_path / 'ref', **fp16), hooks={'after_step': hook})
    assert seen and all(d == torch.float16 for d in seen)
    ref = torch.load(tmp_path / 'ref' / 'last.pth', map_location='cpu', weights_only=True)
    assert ref['step'] == 4 and all(v.dtype == torch.float32 for v in ref['model'].values() if v.is_floating_point())
    # the default initial scale (2^16) overflows this model's first fp16 gradients: that update was skipped
    # and the scale backed off, so the scaler really ran
    assert ref['scaler']['scale'] < 2. ** 16

    def kill(trainer):
        if trainer.step == 3:
            raise _Killed
    with pytest.raises(_Killed):
        train(tiny_config(folder['root'], tmp_path / 'run', **fp16), hooks={'after_step': kill})
    train(tiny_config(folder['root'], tmp_path / 'run', **fp16), resume='auto')
    run = torch.load(tmp_path / 'run' / 'last.pth', map_location='cpu', weights_only=True)
    assert run['scaler'] == ref['scaler']
    assert state_equal(run['model'], ref['model']) is None

    with pytest.raises(ConfigError, match=r'fp16 on a CPU is slow .* train\.amp_on_cpu=true'):
        train(tiny_config(folder['root'], tmp_path / 'run16', train={'epochs': 2, 'amp': 'fp16'}), device='cpu')
    assert not (tmp_path / 'run16').exists()


def test_tensorboard_logging_or_a_clear_error(folder, tmp_path):
    cfg = tiny_config(folder['root'], tmp_path / 'run', train={'epochs': 2}, log={'tensorboard': True})
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r'^log\.tensorboard: needs the tensorboard package'):
            train(cfg)
        assert not (tmp_path / 'run').exists()
        return
    train(cfg)
    events = list((tmp_path / 'run' / 'tensorboard').glob('events.out.tfevents.*'))
    assert events and events[0].stat().st_size > 0


def test_curves_png(tmp_path):
    recs = [{'epoch': e, 'step': 10 * e, 'lr': 1e-3 / e, 'train_loss': 2. / e, 'val_loss': 2.5 / e,
             'val_top1': 10. * e, 'val_ema_top1': 9. * e} for e in range(1, 6)]
    path = plot_curves(recs, tmp_path / 'curves.png')
    data = path.read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 10_000
    from PIL import Image
    assert Image.open(path).size == (1500, 400)
    assert plot_curves([], tmp_path / 'none.png') is None
    json.dumps(recs)
