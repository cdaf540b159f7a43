"""CUDA paths: the models against the CPU (float32 and bf16 autocast, forward and backward, GPViT-L1's head
dimension 18 included), and the engine's mixed precision (bf16; fp16 with its GradScaler), channels-last,
``torch.compile`` and DDP on NCCL, and ``gpvit bench``'s training step. Skipped without a CUDA device."""
import json
import math
import os

import pytest
import torch

import gpvit
from gpvit.tasks import build_config, train
from gpvit.tools import bench

from trainkit import make_image_folder, state_equal, tiny_config, tiny_raw

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


@pytest.fixture
def exact_float32():
    """Float32 on CUDA without TF32, so that it can be compared with the CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float().cpu() - b.float().cpu()).norm() / b.float().cpu().norm()).item()


@pytest.mark.parametrize('name,size', [('gpvit_mini', 64), ('gpvit_l1', 224), ('gc_vit_xxtiny', 224)])
def test_model_on_cuda_matches_cpu(name, size, exact_float32):
    torch.manual_seed(0)
    model = gpvit.create_model(name, drop_path_rate=0.).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = model(x)
        out = model.cuda()(x.cuda())
        with torch.autocast('cuda', dtype=torch.bfloat16):
            low = model(x.cuda())
    assert _rel(out, ref) < 1e-4
    assert torch.isfinite(low).all() and _rel(low, ref) < 5e-2
    # backward, train mode without drop path: the input gradient on both devices
    model = model.cpu().train()
    xs = x.clone().requires_grad_()
    model(xs).square().mean().backward()
    xc = x.cuda().requires_grad_()
    model.cuda()(xc).square().mean().backward()
    assert _rel(xc.grad, xs.grad) < 1e-3


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'), classes=2, per_class=8, val_per_class=2, corrupt=False)


@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
def test_engine_trains_with_amp_and_channels_last_on_cuda(folder, tmp_path, amp):
    cfg = tiny_config(folder['root'], tmp_path / 'run', train={'epochs': 2, 'amp': amp},
                      model={'channels_last': True})
    result = train(cfg, device='cuda')
    assert all(p.is_cuda and p.dtype == torch.float32 for p in result.model.parameters())
    recs = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    assert len(recs) == 2 and all(math.isfinite(r['train_loss']) for r in recs)
    ckpt = torch.load(tmp_path / 'run' / 'last.pth', map_location='cpu', weights_only=True)
    assert ckpt['step'] == 4
    if amp == 'fp16':
        assert 0 < ckpt['scaler']['scale'] <= 2. ** 16
    # resumed on the GPU: two more epochs from the checkpoint
    more = tiny_config(folder['root'], tmp_path / 'run', train={'epochs': 4, 'amp': amp},
                       model={'channels_last': True})
    assert train(more, device='cuda', resume='auto', override=['train.epochs']).step == 8


def test_engine_trains_compiled_on_cuda(folder, tmp_path):
    cfg = tiny_config(folder['root'], tmp_path / 'run', train={'epochs': 1, 'compile': True, 'amp': 'bf16'})
    result = train(cfg, device='cuda')
    assert result.step == 2
    recs = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    assert math.isfinite(recs[-1]['train_loss'])


def _ddp_worker(rank: int, raw: dict, out: str) -> None:
    result = train(build_config(raw), device='cuda')
    torch.save(result.model.state_dict(), os.path.join(out, f'rank{rank}.pt'))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='DDP on NCCL needs two GPUs (one rank per GPU)')
def test_two_process_ddp_on_nccl(tmp_path):
    from distkit import run_ranks
    folder = make_image_folder(tmp_path / 'data', classes=3, per_class=10, val_per_class=4)
    raw = tiny_raw(folder['root'], tmp_path / 'run', train={'epochs': 2, 'amp': 'bf16'}, loader={'batch_size': 4})
    run_ranks(_ddp_worker, (raw, str(tmp_path)), world=2, timeout=500)
    r0 = torch.load(tmp_path / 'rank0.pt', map_location='cpu', weights_only=True)
    r1 = torch.load(tmp_path / 'rank1.pt', map_location='cpu', weights_only=True)
    assert state_equal(r0, r1) is None
    assert '2 process(es) on cuda' in (tmp_path / 'run' / 'train.log').read_text()


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_bench_training_step_on_cuda(dtype):
    case = bench.BenchCase('gpvit_mini', (64, 64), batch_size=4, dtype=dtype, device='cuda', mode='train')
    model = gpvit.create_model('gpvit_mini').cuda().train()
    res = bench.measure(model, case, warmup=2, min_time=0., max_iters=3)
    assert res.status == 'ok' and res.latency_ms > 0 and res.mem_method == 'cuda max_memory_allocated'
