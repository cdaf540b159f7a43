"""Two-process DistributedDataParallel training on CPU (gloo): it learns, and both ranks end identical."""
import json
import os
import warnings

import pytest
import torch
from distkit import run_ranks

import gpvit
from gpvit.tasks import train

from trainkit import make_image_folder, state_equal, tiny_raw


def _worker(rank: int, raw: dict, out: str) -> None:
    from gpvit.tasks import build_config
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        result = train(build_config(raw), device='cpu')
    sd = {'model': result.model.state_dict(), 'ema': result.ema.state_dict(),
          'warnings': [str(w.message) for w in caught]}
    torch.save(sd, os.path.join(out, f'rank{rank}.pt'))


@pytest.mark.timeout(600)
def test_two_process_ddp_on_cpu(tmp_path):
    folder = make_image_folder(tmp_path / 'data', classes=3, per_class=10, val_per_class=4)
    out = tmp_path / 'run'
    raw = tiny_raw(folder['root'], out, train={'epochs': 5, 'threads': 1, 'accum_steps': 2},
                   ema={'enabled': True, 'decay': 0.9},
                   data={'train_aug': {'auto_augment': 'rand-m9-mstd0.5-inc1'}}, loader={'batch_size': 4})
    run_ranks(_worker, (raw, str(tmp_path)), timeout=500)

    r0 = torch.load(tmp_path / 'rank0.pt', weights_only=True)
    r1 = torch.load(tmp_path / 'rank1.pt', weights_only=True)
    # the depthwise convolutions' weight gradients come back from oneDNN with channels-last strides
    assert not [w for w in r0['warnings'] + r1['warnings'] if 'Grad strides' in w]
    assert state_equal(r0['model'], r1['model']) is None
    assert state_equal(r0['ema'], r1['ema']) is None
    recs = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
    assert len(recs) == 5  # written once, by rank 0
    assert recs[-1]['train_loss'] < recs[0]['train_loss'] - 0.05, [r['train_loss'] for r in recs]
    # 32 training samples, 2 processes x 4 per micro-batch x 2 accumulated (no gradient sync on the first):
    # 2 updates per epoch; evaluation counts every image once
    ckpt = torch.load(out / 'last.pth', weights_only=True)
    assert ckpt['global_batch'] == 16 and ckpt['iters_per_epoch'] == 2 and len(ckpt['rng']) == 2
    assert all(r['val_count'] == 12 and r['val_skipped_images'] == 1 for r in recs)
    assert all(r['train_skipped_images'] == 2 for r in recs)
    assert state_equal(ckpt['model'], r0['model']) is None
    log = (out / 'train.log').read_text()
    assert '2 process(es) on cpu' in log and 'x 2 accumulation = global batch 16' in log


def _create_and_destroy(rank: int, store_dir: str, cycles: int) -> None:
    import torch.distributed as dist

    from gpvit.engine.distributed import all_gather_object, all_reduce_sum, destroy
    torch.set_num_threads(1)
    for i in range(cycles):
        dist.init_process_group('gloo', init_method=f'file://{store_dir}/store{i}', rank=rank, world_size=2)
        assert all_gather_object({'rank': rank, 'cycle': i}) == [{'rank': 0, 'cycle': i}, {'rank': 1, 'cycle': i}]
        assert all_reduce_sum({'n': 1.}, torch.device('cpu')) == {'n': 2.}
        destroy()  # what the process does at exit, right after its last collective


@pytest.mark.timeout(200)
def test_destroying_the_process_group_after_collectives_does_not_hang(tmp_path):
    # torch 2.7's gloo destructor deadlocked against a worker thread still freeing a finished all_gather's
    # tensors within 50 such cycles; without `destroy`'s grace period this test hung in 3 runs of 3 there.
    # Each cycle takes about 0.2 s.
    run_ranks(_create_and_destroy, (str(tmp_path), 60), timeout=120)


class _GradWithStrides(torch.autograd.Function):
    """Identity whose backward hands the gradient on with the given strides (same elements)."""

    @staticmethod
    def forward(ctx, w, strides):
        ctx.strides = strides
        return w.clone()

    @staticmethod
    def backward(ctx, g):
        out = torch.empty_strided(g.shape, ctx.strides, dtype=g.dtype)
        return out.copy_(g), None


@pytest.mark.parametrize('shape, grad_strides, aligned', [
    ((6, 1, 3, 3), (9, 1, 3, 1), True),  # depthwise weight, channels-last gradient: only the size-1 dim differs
    ((5, 4, 1, 1), (4, 1, 4, 4), True),  # 1x1 conv weight, channels-last gradient
    ((1, 4, 3), (12, 1, 4), False),  # transposed in dims of size > 1: a real mismatch, left alone
])
def test_gradients_take_their_parameters_strides_where_only_size_one_dims_differ(shape, grad_strides, aligned):
    from gpvit.engine.distributed import align_grad_strides
    layer = torch.nn.Module()
    layer.w = torch.nn.Parameter(torch.randn(shape))
    assert align_grad_strides(layer) == 1
    seen = []  # what reaches autograd's accumulation (hooks run in the order they were registered)
    layer.w.register_hook(lambda g: seen.append(g.stride()))
    target = torch.randn(shape)
    (_GradWithStrides.apply(layer.w, grad_strides) * target).sum().backward()
    torch.testing.assert_close(layer.w.grad, target, rtol=0, atol=0)
    assert seen == [layer.w.stride() if aligned else grad_strides]


def test_convolution_weight_gradients_get_the_parameters_strides():
    """On the CPU the depthwise and 1x1 weight gradients of a channels-last input come back channels-last."""
    from gpvit.engine.distributed import align_grad_strides
    torch.manual_seed(0)
    convs = [torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.Conv2d(8, 4, 1), torch.nn.Conv2d(8, 4, 3)]
    plain = [torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.Conv2d(8, 4, 1), torch.nn.Conv2d(8, 4, 3)]
    x = torch.randn(2, 7, 7, 8).permute(0, 3, 1, 2)  # channels-last, as the models' blocks feed their convs
    for hooked, ref in zip(convs, plain):
        ref.load_state_dict(hooked.state_dict())
        align_grad_strides(hooked)
        hooked(x).square().sum().backward()
        ref(x).square().sum().backward()
        assert hooked.weight.grad.stride() == hooked.weight.stride()
        assert torch.equal(hooked.weight.grad, ref.weight.grad) and torch.equal(hooked.bias.grad, ref.bias.grad)


def _bucket_views(rank: int, out: str) -> None:
    import torch.distributed as dist

    from gpvit.engine.distributed import DistContext, wrap_ddp
    torch.set_num_threads(1)
    dist.init_process_group('gloo')
    try:
        torch.manual_seed(0)
        model = gpvit.create_model('gpvit_mini', num_classes=3)
        ddp = wrap_ddp(model, DistContext(rank=rank, world_size=2))
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(rank))
        ddp(x).square().mean().backward()
        # each gradient is a view of its bucket: neighbours in the same bucket share one storage
        storages = {p.grad.untyped_storage().data_ptr() for p in model.parameters()}
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        torch.save({'storages': len(storages), 'params': len(grads), 'grads': grads}, f'{out}/rank{rank}.pt')
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(200)
def test_ddp_gradients_are_views_of_the_all_reduced_buckets(tmp_path):
    run_ranks(_bucket_views, (str(tmp_path),), timeout=150)
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in (0, 1))
    assert r0['storages'] < r0['params'] / 4, (r0['storages'], r0['params'])
    assert all(torch.equal(r0['grads'][k], r1['grads'][k]) for k in r0['grads'])  # averaged over the ranks
