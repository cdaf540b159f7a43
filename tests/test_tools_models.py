"""``gpvit models`` and the FLOP counters behind it."""
import csv
import io

import pytest
import torch

import gpvit
from gpvit.cli import main
from gpvit.tools.flops import count_flops, count_flops_symbolic
from gpvit.tools.zoo import PUBLISHED_TOP1, model_info, zoo_csv, zoo_markdown, zoo_table


@pytest.mark.parametrize('shape', [(1, 3, 64, 64), (2, 3, 96, 128)])
def test_symbolic_flops_equal_real_flops(shape):
    model = gpvit.create_model('gpvit_mini')
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert count_flops_symbolic(model, shape) == count_flops(model, shape)
    # the fake-tensor count neither changes the weights nor leaves the model in eval mode
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training


def test_model_info_gpvit_l1_matches_the_spec():
    info = model_info('gpvit_l1')
    # spec gpvit.md §2 (total classifier) and §3 (FlopCounterMode column: 12.192 GFLOPs)
    assert info.params == 9_589_848
    assert round(info.flops / 1e9, 3) == 12.192
    assert info.input_size == (3, 224, 224)
    assert (info.top1, info.top1_source) == (80.5, 'GPViT README')


def test_published_top1_of_every_reference_model():
    assert [PUBLISHED_TOP1[f'gpvit_l{i}'][0] for i in range(1, 5)] == [80.5, 83.4, 84.1, 84.3]
    gc = {n: PUBLISHED_TOP1[n][0] for n in gpvit.list_models('gc_vit_*')}
    expected_gc = {'gc_vit_xxtiny': 79.9, 'gc_vit_tiny': 83.5, 'gc_vit_base': 85.0, 'gc_vit_large_512_21k': 87.6}
    for name, top1 in expected_gc.items():  # spec gcvit.md §2, 2023 weights; checked where registered
        if name in gc:
            assert gc[name] == top1
    # every registered model but the reduced gpvit_mini has reference weights with a published accuracy
    assert set(gpvit.list_models()) - set(PUBLISHED_TOP1) == {'gpvit_mini'}


def test_models_command_table_and_csv(tmp_path, capsys):
    path = tmp_path / 'models.csv'
    assert main(['models', 'gpvit_mini', '--csv', str(path), '-q']) == 0
    out = capsys.readouterr().out
    model = gpvit.create_model('gpvit_mini')
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, (1, 3, 64, 64))
    assert f'| `gpvit_mini` | {params / 1e6:.2f}M | {flops / 1e9:.2f} | 64x64 | – |' in out
    assert out.startswith('| model | params | GFLOPs (2/MAC) | input | published top-1 |')
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert len(rows) == 1
    assert rows[0]['name'] == 'gpvit_mini'
    assert int(rows[0]['params']) == params
    assert int(rows[0]['flops']) == flops
    assert rows[0]['input_size'] == '64x64' and rows[0]['top1'] == ''


def test_models_no_flops_and_all_families():
    infos = zoo_table('*mini', flops=False)
    assert [i.name for i in infos] == ['gpvit_mini'] and infos[0].flops is None
    assert '| – |' in zoo_markdown(infos)
    assert zoo_csv(infos).splitlines()[1].startswith('gpvit_mini,')
    for name in gpvit.list_models('gc_vit_xxtiny'):  # GC ViT where registered: 12.00M params, 4.242 GFLOPs
        info = model_info(name)
        assert info.params == 11_995_428 and round(info.flops / 1e9, 3) == 4.242 and info.top1 == 79.9


def test_models_bad_input(capsys):
    with pytest.raises(ValueError, match='unknown model'):
        model_info('gpvit_l9')
    assert main(['models', 'nothing_like_this*']) == 2
    assert 'no registered model matches' in capsys.readouterr().err
