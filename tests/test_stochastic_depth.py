"""Stochastic depth that computes the kept samples' branches only (``DropPathAdd.add_branch``): the same function
and gradients as computing every sample's branch and multiplying the dropped ones by zero, for the helper, the
blocks of both families and whole models (with gradient checkpointing, under bf16 autocast, in two DDP ranks)."""
import contextlib
from typing import Iterator, List

import pytest
import torch
import torch.nn as nn
from distkit import run_ranks

import gpvit
from gpvit.models.gcvit import GCViTBlock
from gpvit.models.gpvit import GPBlock, LePEBlock
from gpvit.models.layers import DropPathAdd


@contextlib.contextmanager
def computing_every_sample(model: nn.Module) -> Iterator[None]:
    """Within: every ``DropPathAdd`` of ``model`` computes the dropped samples' branches too (timm's way)."""
    mods = [m for m in model.modules() if isinstance(m, DropPathAdd)]
    for m in mods:
        m.skip_dropped = False
    try:
        yield
    finally:
        for m in mods:
            del m.skip_dropped  # back to the class default


def _batch_sizes(module: nn.Module) -> List[int]:
    """The batch sizes ``module`` is called with from now on (a forward pre-hook)."""
    sizes: List[int] = []
    module.register_forward_pre_hook(lambda mod, args: sizes.append(args[0].shape[0]))
    return sizes


@pytest.mark.parametrize('p', [0., 0.4, 1.])
@pytest.mark.parametrize('layer_scale', [False, True])
def test_add_branch_is_forward_on_the_kept_samples(p, layer_scale):
    """``add_branch(fn, x, a)`` == ``forward(x, fn(x, a))`` under the same seed (float64: output and the gradients
    of x, the per-sample argument a, the branch's weight and the layer scale), with ``fn`` run on the kept
    samples only; none kept: one sample, times 0, and zero weight gradients (not None); all kept: the batch."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 3).double()
    x = torch.randn(16, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    a = torch.randn(16, 3, dtype=torch.float64, requires_grad=True)  # per sample, like GC ViT's global queries
    gamma = torch.randn(3, dtype=torch.float64, requires_grad=True) if layer_scale else None
    g = torch.randn(16, 5, 4, 3, dtype=torch.float64)
    wrt = [x, a, lin.weight] + ([gamma] if layer_scale else [])
    rows: List[int] = []

    def fn(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        rows.append(t.shape[0])
        return torch.tanh(lin(t)) * s[:, None, None, :]

    dp = DropPathAdd(p).train()
    torch.manual_seed(3)
    out = dp.add_branch(fn, x, a, scale=gamma)
    grads = torch.autograd.grad(out, wrt, g)
    torch.manual_seed(3)
    ref = dp(x, fn(x, a), gamma)
    ref_grads = torch.autograd.grad(ref, wrt, g)
    torch.testing.assert_close(out, ref, rtol=1e-14, atol=1e-14)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    kept = int(((ref - x).flatten(1).abs().amax(1) > 0).sum())
    assert rows[0] == {0.: 16, 1.: 1}.get(p, kept), (rows, kept)
    if p == 0.4:  # 16 samples at this seed: some of each
        assert 0 < kept < 16
    if p == 1.:
        assert kept == 0 and torch.equal(out, x) and torch.count_nonzero(grads[2]) == 0
    # eval mode, p = 0 and skip_dropped False: the whole batch, as forward
    rows.clear()
    torch.testing.assert_close(dp.eval().add_branch(fn, x, a, scale=gamma), dp(x, fn(x, a), gamma), rtol=0, atol=0)
    dp.train().skip_dropped = False
    torch.manual_seed(3)
    torch.testing.assert_close(dp.add_branch(fn, x, a, scale=gamma), ref, rtol=0, atol=0)
    assert rows == [16, 16, 16]


@pytest.mark.parametrize('p', [0., 0.4, 1.])
def test_drop_branch_is_timms_drop_path_of_the_kept_samples(p):
    """``drop_branch(fn, x, a)`` == timm's ``DropPath(p)(fn(x, a))`` under the same seed (float64: output and the
    gradients of x, a and the branch's weight), with ``fn`` run on the kept samples only; the dropped samples'
    rows are zeros; none kept: one sample, times 0; all kept (p = 0, eval, skip_dropped False): the batch."""
    from timm.layers import DropPath
    torch.manual_seed(0)
    lin = nn.Linear(3, 3).double()
    x = torch.randn(16, 5, 3, dtype=torch.float64, requires_grad=True)
    a = torch.randn(16, 2, 3, dtype=torch.float64, requires_grad=True)  # another per-sample input (the groups)
    g = torch.randn(16, 5, 3, dtype=torch.float64)
    rows: List[int] = []

    def fn(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        rows.append(t.shape[0])
        return torch.tanh(lin(t)) + s.sum(1, keepdim=True)

    dp = DropPathAdd(p).train()
    torch.manual_seed(3)
    out = dp.drop_branch(fn, x, a)
    grads = torch.autograd.grad(out, [x, a, lin.weight], g)
    torch.manual_seed(3)
    ref = DropPath(p).train()(fn(x, a))
    ref_grads = torch.autograd.grad(ref, [x, a, lin.weight], g)
    torch.testing.assert_close(out, ref, rtol=1e-14, atol=1e-14)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    kept = int((ref.flatten(1).abs().amax(1) > 0).sum())
    assert rows[0] == {0.: 16, 1.: 1}.get(p, kept), (rows, kept)
    if p == 0.4:
        assert 0 < kept < 16
    if p == 1.:
        assert kept == 0 and torch.count_nonzero(out) == 0 and torch.count_nonzero(grads[2]) == 0
        assert grads[2] is not None
    rows.clear()
    torch.testing.assert_close(dp.eval().drop_branch(fn, x, a), fn(x, a), rtol=0, atol=0)
    dp.train().skip_dropped = False
    torch.manual_seed(3)
    torch.testing.assert_close(dp.drop_branch(fn, x, a), ref, rtol=0, atol=0)
    assert rows == [16, 16, 16]


def _assert_skipping_changes_nothing(module: nn.Module, inputs: List[torch.Tensor], watched: List[nn.Module],
                                     seed: int, each: bool = False) -> None:
    """``module(*inputs)`` in train mode with and without the dropped samples' branches computed, under one
    seed: the same output and gradients (inputs and every parameter, float64), and one of ``watched`` (modules
    of the dropped branches, called with the samples first) saw fewer samples than the batch (``each``: every one
    of them did)."""
    module.double().train()
    params = [p for p in module.parameters() if p.requires_grad]
    leaves = [t for t in inputs if t.requires_grad]
    results = []
    sizes = [_batch_sizes(mod) for mod in watched]
    for skip in (True, False):
        with contextlib.nullcontext() if skip else computing_every_sample(module):
            torch.manual_seed(seed)
            out = module(*inputs)
            results.append((out, torch.autograd.grad(out, leaves + params, torch.ones_like(out))))
    (out, grads), (ref, ref_grads) = results
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)
    batch = inputs[0].shape[0]
    if each:  # every watched branch skipped samples in the first run and saw the whole batch in the second
        for mod, seen in zip(watched, sizes):
            assert min(seen) < batch and max(seen) == batch, (type(mod).__name__, seen)
    else:
        rows = [n for seen in sizes for n in seen]
        assert min(rows) < batch and max(rows) == batch, rows


@pytest.mark.parametrize('block', ['lepe', 'gp'])
def test_gpvit_blocks_skip_the_dropped_samples(block):
    torch.manual_seed(0)
    mod = (LePEBlock(24, 4, drop_path=0.5) if block == 'lepe'
           else GPBlock(24, 8, num_heads=4, drop_path=0.5))
    x = torch.randn(6, 8, 8, 24, dtype=torch.float64, requires_grad=True)
    _assert_skipping_changes_nothing(mod, [x], [mod.mlp] + ([mod.ungroup] if block == 'gp' else []), seed=1,
                                     each=True)


@pytest.mark.parametrize('use_global', [False, True])
def test_gcvit_block_skips_the_dropped_samples(use_global):
    """Local and global attention (the global queries taken with their images), with a layer scale."""
    torch.manual_seed(0)
    mod = GCViTBlock(32, 2, (7, 7), use_global=use_global, layer_scale=1e-5, drop_path=0.5)
    with torch.no_grad():
        mod.ls1.gamma.uniform_(0.5, 1.5)
        mod.ls2.gamma.uniform_(-1., 1.)
    x = torch.randn(6, 14, 14, 32, dtype=torch.float64, requires_grad=True)
    q = torch.randn(6, 49, 32, dtype=torch.float64, requires_grad=use_global)  # local blocks ignore it
    _assert_skipping_changes_nothing(mod, [x, q], [mod.norm1, mod.mlp], seed=2)


@pytest.mark.parametrize('name, size', [('gpvit_mini', 64), ('gc_vit_xxtiny', 64)])
@pytest.mark.parametrize('checkpointing', [False, True])
def test_models_train_the_same_with_the_dropped_samples_skipped(name, size, checkpointing):
    """A whole training forward + backward (drop path 0.5, float64): the same loss and gradients with and
    without the dropped samples' branches computed; gradient checkpointing replays the same draws."""
    torch.manual_seed(0)
    model = gpvit.create_model(name, num_classes=10, drop_path_rate=0.5).double()
    model.set_grad_checkpointing(checkpointing)
    x = torch.randn(4, 3, size, size, dtype=torch.float64)
    mlps = [m.mlp for m in model.modules() if isinstance(m, (LePEBlock, GPBlock, GCViTBlock))]
    _assert_skipping_changes_nothing(model, [x], mlps, seed=5)


@pytest.mark.parametrize('name', ['gpvit_mini', 'gc_vit_xxtiny'])
def test_skipping_under_bf16_autocast(name):
    """Under bf16 autocast the branches are bfloat16 and the residual stream float32: a training step with
    samples dropped gives what computing every sample gives (to bf16 rounding), with float32 output."""
    torch.manual_seed(0)
    model = gpvit.create_model(name, num_classes=10, drop_path_rate=0.5).train()
    x = torch.randn(4, 3, 64, 64)
    sizes = [_batch_sizes(m.mlp) for m in model.modules() if isinstance(m, (LePEBlock, GPBlock, GCViTBlock))]
    first_weight = model.stem.conv1.weight if name.startswith('gc_vit') else model.patch_embed.proj.weight
    results = []
    for skip in (True, False):
        with contextlib.nullcontext() if skip else computing_every_sample(model):
            torch.manual_seed(5)
            with torch.autocast('cpu', dtype=torch.bfloat16):
                out = model(x)
            grad = torch.autograd.grad(out.float().square().sum(), first_weight)[0]
            results.append((out, grad))
    (out, grad), (ref, ref_grad) = results
    assert min(n for seen in sizes for n in seen) < 4
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(grad, ref_grad, rtol=5e-2, atol=5e-2 * ref_grad.abs().max().item())


def test_add_branch_of_a_bf16_branch_on_a_float32_stream():
    """Under CUDA's autocast LayerNorm gives float32, so a float32 residual stream meets bfloat16 branches (on
    the CPU both are bf16): the kept samples' branch joins the stream in its dtype, as ``addcmul`` promotes."""
    torch.manual_seed(0)
    lin = nn.Linear(8, 8)
    x = torch.randn(16, 8, requires_grad=True)
    dp = DropPathAdd(0.4).train()
    outs = []
    for skip in (True, False):
        dp.skip_dropped = skip
        torch.manual_seed(3)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            outs.append(dp.add_branch(lin, x))
    assert lin(x).dtype == torch.float32 and outs[0].dtype == outs[1].dtype == torch.float32
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert 0 < int(((outs[0] - x).abs().amax(1) > 0).sum()) < 16


def test_add_branch_of_a_layer_scaled_branch_on_a_bf16_stream():
    """On the CPU under autocast the stream is bfloat16 and a layer scale float32: the sum is float32, as
    ``addcmul`` gives it, whether the dropped samples' branches are computed or not (GC ViT-S/B/L)."""
    torch.manual_seed(0)
    block = GCViTBlock(32, 2, (7, 7), layer_scale=1e-5, drop_path=0.5).train()
    x = torch.randn(6, 14, 14, 32).bfloat16()
    outs = []
    for skip in (True, False):
        with contextlib.nullcontext() if skip else computing_every_sample(block):
            torch.manual_seed(2)
            with torch.autocast('cpu', dtype=torch.bfloat16), torch.no_grad():
                outs.append(block(x))
    assert outs[0].dtype == outs[1].dtype == torch.float32
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-2, atol=1e-2)


def _ddp_steps(rank: int, drop_path_rate: float, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    torch.set_num_threads(1)
    dist.init_process_group('gloo')
    try:
        torch.manual_seed(0)
        model = DistributedDataParallel(gpvit.create_model('gpvit_mini', num_classes=3,
                                                           drop_path_rate=drop_path_rate).train())
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        torch.manual_seed(rank)  # each rank drops its own samples
        for _ in range(3):
            x = torch.randn(2, 3, 32, 32)
            opt.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            assert all(p.grad is not None for p in model.parameters())
            opt.step()
        # parameters only: BatchNorm's running statistics are each rank's own
        torch.save(dict(model.module.named_parameters()), f'{out}/rank{rank}.pt')
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
@pytest.mark.parametrize('drop_path_rate', [1., 0.5])
def test_ddp_trains_with_every_or_some_sample_dropped(tmp_path, drop_path_rate):
    """Two gloo ranks, 2 samples each: with every sample of every branch dropped (drop path 1) and with some,
    every parameter gets a gradient on every rank (DDP fails otherwise), and the ranks' weights end identical."""
    run_ranks(_ddp_steps, (drop_path_rate, str(tmp_path)), timeout=240)
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in (0, 1))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
