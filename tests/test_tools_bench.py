"""``gpvit bench``: measurements, the appendix and Figure 5 suites, timeouts, OOM, reports."""
import csv
import re
import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer

import gpvit
from gpvit.cli import main
from gpvit.tools import bench
from gpvit.tools.flops import count_flops


def _png_size(path):
    with Image.open(path) as im:
        im.verify()  # a complete, valid PNG
    with Image.open(path) as im:
        return im.format, im.size


def test_parse_size():
    assert bench.parse_size('224') == (224, 224)
    assert bench.parse_size('800x1280') == (800, 1280)
    for bad in ('0', '12x', 'ax3', '-4', '3x0'):
        with pytest.raises(ValueError, match='input size'):
            bench.parse_size(bad)


def test_plain_vit_baseline():
    model = bench.build_model('vit_plain_p8_c96_d6')
    assert isinstance(model, VisionTransformer)
    assert model.patch_embed.patch_size == (8, 8) and model.embed_dim == 96 and len(model.blocks) == 6
    assert model.blocks[0].attn.num_heads == bench.PLAIN_VIT_HEADS == 6
    assert model.cls_token is None and model.global_pool == 'avg'
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 1000)  # any multiple of the patch
    # FLOPs: 6 blocks of 12 C^2 N + 2 N^2 C MACs (N = 96 tokens), the patch embedding and the head
    N, C = 8 * 12, 96
    macs = 6 * (12 * C * C * N + 2 * N * N * C) + N * C * 3 * 64 + C * 1000
    assert count_flops(model, (1, 3, 64, 96)) == 2 * macs
    with pytest.raises(ValueError, match='unknown model'):
        bench.build_model('vit_plain_x8')


def test_appendix_suite_definition():
    assert bench.APPENDIX_SIZES == ((224, 224), (512, 512), (800, 1280))
    assert bench.appendix_models('gpvit_l1') == ['gpvit_l1', 'vit_plain_p16_c216', 'vit_plain_p8_c216']
    cases = bench.appendix_cases(['gpvit_mini'], sizes=[(64, 64), (64, 128)])
    assert [(c.model, c.input_size) for c in cases] == [
        ('gpvit_mini', (64, 64)), ('gpvit_mini', (64, 128)),
        ('vit_plain_p16_c96_d6', (64, 64)), ('vit_plain_p16_c96_d6', (64, 128)),
        ('vit_plain_p8_c96_d6', (64, 64)), ('vit_plain_p8_c96_d6', (64, 128))]
    mini = gpvit.create_model('gpvit_mini')
    vit = bench.build_model('vit_plain_p8_c96_d6')
    assert (mini.embed_dim, len(mini.blocks)) == (vit.embed_dim, len(vit.blocks))
    for name in gpvit.list_models('gc_vit_xxtiny'):
        with pytest.raises(ValueError, match='not a plain'):
            bench.appendix_models(name)
    with pytest.raises(ValueError, match='dtype'):
        bench.grid_cases(['gpvit_mini'], [(64, 64)], dtypes=['float8'])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='CUDA is not available'):
            bench.grid_cases(['gpvit_mini'], [(64, 64)], devices=['cuda'])


def test_measure_in_process():
    model = gpvit.create_model('gpvit_mini').eval()
    case = bench.BenchCase('gpvit_mini', (64, 64), batch_size=2)
    res = bench.measure(model, case, warmup=1, min_time=0., max_iters=3)
    assert res.status == 'ok' and res.iters == 1  # min_time 0: exactly one timed iteration
    assert res.latency_ms > 0 and res.throughput == pytest.approx(2 / (res.latency_ms / 1e3))
    assert res.peak_mem_mb is not None and res.peak_mem_mb >= 0 and res.mem_method


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16', 'float16'])
def test_measure_a_training_step_in_process(dtype):
    """``mode='train'`` times whole training steps: the weights (float32, as the engine keeps them) move."""
    model = gpvit.create_model('gpvit_mini').train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    case = bench.BenchCase('gpvit_mini', (64, 64), batch_size=2, dtype=dtype, mode='train')
    res = bench.measure(model, case, warmup=1, min_time=0., max_iters=3)
    assert res.status == 'ok' and res.mode == 'train' and res.iters == 1 and res.latency_ms > 0
    assert all(p.dtype == torch.float32 for p in model.parameters())
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    # float16: the first step's scaled gradients may overflow and be skipped; the second one updates
    assert len(moved) > len(before) // 2, f'{len(moved)} of {len(before)} parameters updated'
    headless = bench.BenchCase('gpvit_mini', (64, 64), mode='train')
    with pytest.raises(ValueError, match='needs a classifier head'):
        bench.measure(gpvit.create_model('gpvit_mini', num_classes=0), headless, warmup=0, min_time=0.)
    with pytest.raises(ValueError, match="unsupported mode 'backward'"):
        bench.grid_cases(['gpvit_mini'], [(64, 64)], modes=['backward'])


def test_bench_command_writes_table_csv_png(tmp_path, capsys):
    argv = ['bench', '--models', 'gpvit_mini', '--sizes', '64', '--batch-sizes', '2', '--time-budget', '120',
            '--min-time', '0.1', '--max-iters', '3', '--threads', '1', '--modes', 'infer', 'train', '--out',
            str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    model = gpvit.create_model('gpvit_mini')
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, (1, 3, 64, 64))
    rows = list(csv.DictReader(io.StringIO((tmp_path / 'custom.csv').read_text())))
    assert len(rows) == 2
    r, step = rows
    assert (r['model'], r['input_size'], r['batch_size'], r['dtype'], r['device'], r['mode']) == (
        'gpvit_mini', '64x64', '2', 'float32', 'cpu', 'infer')
    assert step['mode'] == 'train' and step['status'] == 'ok', step['note']
    assert step['flops'] == r['flops']  # the forward pass's, per image
    assert float(step['latency_ms']) > float(r['latency_ms'])  # forward + backward + optimiser > forward
    assert r['status'] == 'ok', r['note']
    assert int(r['params']) == params and int(r['flops']) == flops
    assert float(r['latency_ms']) > 0 and float(r['peak_mem_mb']) > 0 and 1 <= int(r['iters']) <= 3
    assert float(r['throughput']) == pytest.approx(2e3 / float(r['latency_ms']), rel=1e-6)
    assert (tmp_path / 'custom.md').read_text() == out
    assert f'| `gpvit_mini` | 64x64 | 2 | float32 | cpu | infer | {params / 1e6:.2f}M | {flops / 1e9:.2f} |' in out
    assert f'| `gpvit_mini` | 64x64 | 2 | float32 | cpu | train | {params / 1e6:.2f}M | {flops / 1e9:.2f} |' in out
    assert _png_size(tmp_path / 'custom.png') == ('PNG', (1600, 550))


def test_timeout_and_oom_are_marked():
    slow = bench.BenchCase('gpvit_mini', (512, 512), batch_size=4)  # seconds per forward pass on a CPU
    big = bench.BenchCase('gpvit_mini', (256, 256), batch_size=16)  # its stem activation alone is 64 MiB
    (res,) = bench.run_benchmark([slow], time_budget=0.2, mem_cap=None)
    assert res.status == 'timeout' and '0.2 s budget' in res.note
    assert res.latency_ms is None
    assert res.flops == count_flops(gpvit.create_model('gpvit_mini'), (1, 3, 512, 512))  # counted anyway
    (res,) = bench.run_benchmark([big], time_budget=120, mem_cap=64 * 2 ** 20)
    assert res.status == 'OOM', res.note
    md = bench.results_markdown([res])
    assert '| OOM | OOM | OOM | OOM |' in md and 'OOM:' in md


def test_figure5_block_flops(tmp_path, capsys):
    rows = bench.block_flops(width=96, sides=(8, 16, 24))
    assert [r['tokens'] for r in rows] == [64, 256, 576]
    C = 96
    for r in rows:  # timm Block: qkv + proj + MLP = 12 C^2 N MACs, attention 2 N^2 C
        N = r['tokens']
        assert r['global attention'] == 2 * (12 * C * C * N + 2 * N * N * C)
    for n in (16, 32, 64):  # a GP block is linear in the number of tokens
        f = [r[f'GP block ({n} groups)'] for r in rows]
        assert (f[1] - f[0]) * (576 - 256) == (f[2] - f[1]) * (256 - 64)
    # more groups cost more; at 24x24 tokens global attention exceeds every GP block
    assert rows[-1]['GP block (16 groups)'] < rows[-1]['GP block (32 groups)'] < rows[-1]['GP block (64 groups)']
    assert rows[-1]['global attention'] > rows[-1]['GP block (64 groups)']
    assert main(['bench', '--suite', 'figure5', '--width', '96', '--tokens', '8', '16', '--out', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith('| token grid | tokens |') and '| 16x16 | 256 |' in out
    assert len(list(csv.DictReader(io.StringIO((tmp_path / 'figure5.csv').read_text())))) == 2
    assert _png_size(tmp_path / 'figure5.png') == ('PNG', (700, 500))


def test_bench_bad_input(capsys):
    assert main(['bench', '--models', 'no_such_model', '--sizes', '64']) == 2
    assert 'unknown model' in capsys.readouterr().err
    assert main(['bench', '--models', 'gpvit_mini', '--sizes', '64x']) == 2
    assert 'input size' in capsys.readouterr().err


_RSS_AFTER_FREE = '''
import platform, sys, torch
from gpvit.tools.bench import keep_freed_memory
def rss_mb():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096 / 2 ** 20
applied = keep_freed_memory() if sys.argv[1] == 'keep' else None
assert applied in (None, platform.libc_ver()[0] == 'glibc'), applied
before = rss_mb()
x = torch.ones(64 * 2 ** 20 // 4)  # 64 MiB, touched
del x
print(rss_mb() - before)
'''


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc tuning is Linux-only')
def test_keep_freed_memory_keeps_freed_activations_mapped():
    """After ``keep_freed_memory()`` a freed 64 MiB tensor stays in the process for reuse; by default glibc
    unmaps it at once."""
    import platform
    if platform.libc_ver()[0] != 'glibc':
        pytest.skip('not glibc')
    grown = {mode: float(subprocess.run([sys.executable, '-c', _RSS_AFTER_FREE, mode], check=True, text=True,
                                        capture_output=True).stdout) for mode in ('default', 'keep')}
    assert grown['default'] < 16 and grown['keep'] > 48, grown


@pytest.mark.parametrize('script, args', [
    ('bench_backbone.py', ['--models', 'gpvit_mini', '--sizes', '64x64x1', '--min-time', '0.2']),
    ('bench_backbone.py', ['--models', 'gpvit_mini', '--sizes', '64x64x1', '--min-time', '0.2', '--plain',
                           '--malloc-default']),
    ('bench_breakdown.py', ['--model', 'gpvit_mini', '--size', '64x64x1', '--iters', '1']),
    ('bench_breakdown.py', ['--model', 'gpvit_mini', '--size', '64x64x1', '--iters', '1', '--train', '--bf16']),
    ('bench_train_step.py', ['--model', 'gpvit_mini', '--size', '64x64x2', '--variants', 'eager', 'eager_all',
                             'bf16_all', '--iters', '1', '--drop-path-rate', '0.5']),
    ('bench_ddp.py', ['--model', 'gpvit_mini', '--size', '64x64x2', '--steps', '1', '--warmup', '1']),
])
def test_benchmark_scripts_run(script, args):
    """The backbone benchmark scripts (not part of the package) still run and print their tables."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / 'benchmarks' / script), *args], check=True, text=True,
                         capture_output=True, timeout=600).stdout
    rows = [line for line in out.splitlines() if line.startswith(('| gpvit_mini', '| MLP', '| train step, eager_all',
                                                                     '| engine'))]
    assert rows, out
    if script == 'bench_backbone.py':
        cells = rows[0].split('|')
        # images/s measured; the ratio to the matmul is printed to 2 decimals (0.00 for this tiny model on a loaded
        # machine), so only its range is checked
        assert float(cells[4]) > 0 and 0 <= float(cells[7]) < 2, rows[0]


def _breakdown_rows(*args: str) -> dict:
    """``benchmarks/bench_breakdown.py`` run with ``args``: its table as {part: cells}."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / 'benchmarks' / 'bench_breakdown.py'), *args], check=True,
                         text=True, capture_output=True, timeout=600).stdout
    rows = [line.split('|')[1:-1] for line in out.splitlines() if line.startswith('| ') and '---' not in line]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def test_gcvit_training_breakdown_has_the_same_parts_for_timm():
    """GC ViT's training-step breakdown names the same parts for this project's model and timm's twin, each
    with a measured share of the step, so the two can be compared part by part."""
    args = ['--model', 'gc_vit_xxtiny', '--size', '224x224x1', '--iters', '1', '--train']
    ours, theirs = _breakdown_rows(*args), _breakdown_rows(*args, '--timm')
    parts = {p for p in ours if not p.startswith('rest') and not p.startswith('optimizer')}
    assert parts == {p for p in theirs if not p.startswith('rest') and not p.startswith('optimizer')}, (ours, theirs)
    assert {'stem', 'LayerNorm', 'MLP (fc1 + GELU, fc2)', 'window attention, local (qkv, attention, proj)',
            'window attention, global (qkv, attention, proj)'} <= parts, parts
    for table in (ours, theirs):
        for part in parts:
            share = float(table[part][2].rstrip(' %'))
            assert 0 < share < 100, (part, table[part])


def _kernel_floor(*args: str) -> tuple:
    """``benchmarks/bench_kernel_floor.py`` run with ``args``: (step ms, floor ms, {group: cells}, output)."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / 'benchmarks' / 'bench_kernel_floor.py'), *args], check=True,
                         text=True, capture_output=True, timeout=600).stdout
    head = re.search(r': (\d+) ms; kernel floor (\d+) ms', out)
    assert head, out
    rows = [line.split('|')[1:-1] for line in out.splitlines() if line.startswith('| ') and '---' not in line]
    table = {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}
    return int(head.group(1)), int(head.group(2)), table, out


@pytest.mark.parametrize('mode', [[], ['--infer']])
def test_kernel_floor_accounts_for_the_step(mode):
    """The kernel floor finds the linear layers' GEMMs and the attention kernels of a step (and of an inference
    forward, whose ops a recording mode sees before decomposition under ``inference_mode``), times them below
    the step, and its rows add up to the step; the budget line subtracts the fixed kernels from the target."""
    step, floor, table, out = _kernel_floor('--model', 'gpvit_mini', '--size', '64x64x1', '--iters', '1',
                                            '--reps', '1', '--ref-ms', '1000', '--target', '2', *mode)
    linear = table['linear layers (mm, addmm)']
    assert int(linear[0].split()[0]) > 0 and float(linear[1].split()[0]) > 0, out
    assert 'fused attention (SDPA kernels)' in table, out
    assert 0 < floor < step, out
    times = [int(cells[1].split()[0]) for cells in table.values()]
    assert abs(sum(times) - step) <= len(times), out  # each row rounded to whole ms
    fixed = sum(int(table[g][1].split()[0]) for g in ('linear layers (mm, addmm)', 'convolutions (forward, backward)')
                if g in table)
    budget = re.search(r'Target 2x a reference step of 1000 ms: 500 ms\. .* alone take (\d+) ms, which leaves '
                       r'(-?\d+) ms', out)
    assert budget and abs(int(budget.group(1)) - fixed) <= 2 and abs(int(budget.group(2)) - (500 - fixed)) <= 2, out


def test_kernel_floor_counts_each_distinct_call_once_and_times_it_per_call():
    """Repeated calls of one kernel on the same layouts are one distinct call, replayed alone and charged once
    per call; a different layout (a transposed operand) is a call of its own."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'benchmarks'))
    try:
        import bench_kernel_floor as floor
    finally:
        sys.path.pop(0)
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    recorder = floor.KernelRecorder()
    with recorder, torch.no_grad():
        for _ in range(4):
            torch.mm(a, b)
        torch.mm(a, b.t())
    assert [v[3] for v in recorder.calls.values()] == [4, 1]
    groups = floor.replay(recorder.calls, reps=5)
    linear = groups['linear layers (mm, addmm)']
    assert (linear['calls'], linear['distinct'], linear['flops']) == (5, 2, 5 * 2 * 256 ** 3)
    once = dict(recorder.calls)
    for entry in once.values():
        entry[3] = 1
    single = floor.replay(once, reps=5)['linear layers (mm, addmm)']['seconds']
    assert 1.5 * single < linear['seconds'] < 12 * single, (linear['seconds'], single)
    assert floor.group_of('convolution_backward') == 'convolutions (forward, backward)'
    assert floor.group_of('_scaled_dot_product_flash_attention_for_cpu_backward') == 'fused attention (SDPA kernels)'
