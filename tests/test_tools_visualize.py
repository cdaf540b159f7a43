"""``gpvit visualize``: GPViT grouping maps (paper Figure 6)."""
import numpy as np
import pytest
import torch
from fill import fill, load_manifest  # tests/data/golden, on sys.path through conftest
from PIL import Image

import gpvit
from gpvit.checkpoint import CheckpointError
from gpvit.cli import main
from gpvit.tools.visualize import (PANEL_PX, TITLE_PX, figure_size, group_colors, grouping_maps, load_image,
                                   overlay, visualize)


@pytest.fixture
def image_path(tmp_path):
    """A 40x60 test picture: a bright disc on a two-colour background."""
    yy, xx = np.mgrid[:40, :60]
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :30] = (30, 90, 40)
    img[:, 30:] = (20, 40, 120)
    img[(yy - 20) ** 2 + (xx - 30) ** 2 < 150] = (250, 170, 60)
    path = tmp_path / 'picture.png'
    Image.fromarray(img).save(path)
    return path


def _png(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.format, im.size, np.asarray(im.convert('RGB'))


def test_grouping_maps_are_those_of_the_block_inputs():
    model = gpvit.create_model('gpvit_mini').eval()
    x = torch.randn(2, 3, 64, 96)
    maps = grouping_maps(model, x)
    assert len(maps) == 2 and [m.name for m in maps[0]] == ['blocks.1', 'blocks.4']
    with torch.no_grad():  # the inputs of GP blocks 1 and 4 are the outputs of blocks 0 and 3
        inputs = model.forward_intermediates(x, indices=[0, 3], output_fmt='NHWC', intermediates_only=True)
        for block, inp in zip((1, 4), inputs):
            expected = model.blocks[block].group_attention(inp)  # (B, heads, n, h, w)
            for b in range(2):
                m = maps[b][(1, 4).index(block)]
                torch.testing.assert_close(m.weights, expected[b])
                assert m.num_groups == model.blocks[block].group_token.shape[1]
                np.testing.assert_array_equal(m.labels(), expected[b].mean(0).argmax(0).numpy())
                np.testing.assert_array_equal(m.labels(per_head=True), expected[b].argmax(1).numpy())
    assert maps[0][0].labels().shape == (8, 12)
    torch.testing.assert_close(maps[0][0].weights.sum((-2, -1)), torch.ones(6, 16))  # softmax over the tokens
    assert not model.blocks[1]._forward_pre_hooks  # hooks removed


def test_overlay_and_colors():
    colors = group_colors(64)
    assert colors.shape == (64, 3) and len({tuple(c) for c in colors}) == 64
    assert len({tuple(c) for c in group_colors(100)}) == 100
    labels = np.array([[0, 1], [2, 3]])
    image = np.full((16, 24, 3), 255, np.uint8)
    out = overlay(image, labels, colors, alpha=1.)
    for i in range(2):
        for j in range(2):  # each token's 8x12 pixel cell takes its group's colour
            assert np.allclose(out[8 * i:8 * i + 8, 12 * j:12 * j + 12], colors[labels[i, j]])
    assert np.allclose(overlay(image, labels, colors, alpha=0.), 1.)
    assert np.allclose(overlay(image, labels, colors, alpha=.5)[0, 0], 0.5 + 0.5 * colors[0])
    with pytest.raises(ValueError, match='token cells'):
        overlay(image[:15], labels, colors)


def test_load_image_sizes(image_path):
    img = load_image(image_path, 64)
    assert img.shape == (64, 96, 3) and img.dtype == np.uint8  # shorter side 64, multiples of 16
    assert load_image(image_path, 64, grayscale=True).shape == (64, 96, 1)


def test_visualize_reference_checkpoint_cli(tmp_path, image_path, capsys):
    """A checkpoint in the reference (mmcls) layout; the model is detected from it."""
    ckpt = tmp_path / 'gpvit_l1_reference.pth'
    torch.save({'meta': {}, 'state_dict': fill(load_manifest('tests/data/golden/gpvit_l1_cls_manifest.json'), 0)},
               ckpt)
    out = tmp_path / 'groups.png'
    assert main(['visualize', '--checkpoint', str(ckpt), str(image_path), '-o', str(out), '--size', '64']) == 0
    assert 'gpvit_l1: 4 GP blocks' in capsys.readouterr().out
    fmt, size, pixels = _png(out)
    # the image (64x96 after resizing) and the 4 GP blocks of L1, 256 px wide each, under a title strip
    assert fmt == 'PNG' and size == figure_size(1, 5, (64, 96)) == (5 * PANEL_PX, round(PANEL_PX * 64 / 96) + TITLE_PX)
    assert pixels.std() > 10  # something was drawn


def test_visualize_checkpoint_is_loaded(tmp_path, image_path):
    model = gpvit.create_model('gpvit_mini')
    for blk in (model.blocks[1], model.blocks[4]):  # make the grouping depend on the weights
        torch.nn.init.normal_(blk.group_token, std=2.)
        torch.nn.init.normal_(blk.group.k.weight, std=.5)
    ckpt = tmp_path / 'mini.pth'
    torch.save({'model': model.state_dict()}, ckpt)
    vis = visualize(image_path, tmp_path / 'a.png', checkpoint=ckpt, model='gpvit_mini')
    direct = visualize(image_path, tmp_path / 'b.png', model=model.eval())
    fresh = visualize(image_path, tmp_path / 'c.png', model='gpvit_mini')
    for a, b in zip(vis.maps, direct.maps):
        torch.testing.assert_close(a.weights, b.weights)
    assert any(not torch.allclose(a.weights, c.weights) for a, c in zip(vis.maps, fresh.maps))
    assert vis.image_size == (64, 96)  # gpvit_mini's default input size is 64


def test_visualize_per_head(tmp_path, image_path):
    vis = visualize(image_path, tmp_path / 'heads.png', model='gpvit_mini', size=32, per_head=True, panel_px=64)
    fmt, size, _ = _png(vis.path)
    # one row per GP block: the head average and the 6 heads
    assert fmt == 'PNG' and size == vis.size == (7 * 64, 2 * (round(64 * 32 / 48) + TITLE_PX))


def test_visualize_bad_input(tmp_path, image_path, capsys):
    assert main(['visualize', '--model', 'gpvit_mini', str(tmp_path / 'missing.png')]) == 2
    assert 'image not found' in capsys.readouterr().err
    bad = tmp_path / 'bad.jpg'
    bad.write_text('not an image')
    assert main(['visualize', '--model', 'gpvit_mini', str(bad)]) == 2
    assert 'not a readable image' in capsys.readouterr().err
    assert main(['visualize', '--model', 'gpvit_l9', str(image_path)]) == 2
    assert 'unknown model' in capsys.readouterr().err
    assert main(['visualize', str(image_path)]) == 2
    assert 'checkpoint, a model name' in capsys.readouterr().err
    junk = tmp_path / 'junk.pth'
    torch.save({'state_dict': {'foo.weight': torch.zeros(3)}}, junk)
    with pytest.raises(CheckpointError, match='--model'):
        visualize(image_path, tmp_path / 'x.png', checkpoint=junk)
    for name in gpvit.list_models('gc_vit_xxtiny'):  # GC ViT where registered: no grouping attention
        with pytest.raises(ValueError, match='no GP blocks'):
            visualize(image_path, tmp_path / 'x.png', model=name)
