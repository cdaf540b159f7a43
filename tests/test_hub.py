"""Published weights by name (``pretrained=True``), for real: a loopback HTTP server serves release files."""
import functools
import http.server
import socket
import threading

import pytest
import timm
import torch

import gpvit
from gpvit import hub
from gpvit.dense import PUBLISHED_WEIGHTS
from gpvit.errors import CheckpointError
from gpvit.factory import recipe_model
from gpvit.hub import WeightsUnavailable

from densekit import close_to_reference
from fill import fill, load_manifest

RELEASE_NAME = 'gpvit_l1_in1k_300e.pth'


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder; counts the requests; ``/short/NAME`` promises more bytes than it sends."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path.startswith('/short/'):
            self.send_response(200)
            self.send_header('Content-Length', '1000000')
            self.end_headers()
            self.wfile.write(b'\x80' * 1000)
            return
        super().do_GET()


@pytest.fixture(scope='module')
def release(tmp_path_factory, golden_dir):
    """A reference release file made from the golden weights, and the golden input and logits."""
    folder = tmp_path_factory.mktemp('www')
    sd = fill(load_manifest(golden_dir / 'gpvit_l1_cls_manifest.json'), seed=0)
    torch.save({'meta': {'epoch': 300, 'mmcls_version': '0.23.0'}, 'state_dict': sd}, folder / RELEASE_NAME)
    (folder / 'gpvit_l2_in1k_300e.pth').write_bytes(b'<html>rate limited</html>')  # not a checkpoint
    ref = torch.load(golden_dir / 'gpvit_l1_seed0.pt')
    return folder, ref['input0'][:1], ref['logits0'][:1]


@pytest.fixture()
def server(release):
    handler = functools.partial(_Handler, directory=str(release[0]))
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, f'http://127.0.0.1:{httpd.server_address[1]}'
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    return tmp_path / 'torch_home'


def _cache_files(torch_home):
    folder = torch_home / 'hub' / 'checkpoints'
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_every_reference_classifier_names_its_release_file():
    for i in range(1, 5):
        cfg = timm.models.get_pretrained_cfg(f'gpvit_l{i}')
        assert cfg.url == f'https://github.com/ChenhongyiYang/GPViT/releases/download/v0.0.1/gpvit_l{i}_in1k_300e.pth'
    assert timm.models.get_pretrained_cfg('gc_vit_tiny').url.endswith('/nvidia/GCViT/resolve/main/gcvit_1k_tiny.pth.tar')
    assert not timm.models.get_pretrained_cfg('gpvit_mini').url  # not a paper model: nothing published


def test_download_then_cache_hit(server, release, torch_home):
    httpd, base = server
    _, x, logits = release
    url = f'{base}/{RELEASE_NAME}'
    model = timm.create_model('gpvit_l1', pretrained=True, pretrained_cfg_overlay=dict(url=url)).eval()
    with torch.no_grad():
        assert (model(x) - logits).abs().max() <= 1e-4  # converted through the family filter
    assert _cache_files(torch_home) == [RELEASE_NAME] and len(httpd.requests) == 1
    again = gpvit.create_model('gpvit_l1', pretrained=True, pretrained_cfg_overlay=dict(url=url), num_classes=10)
    assert len(httpd.requests) == 1  # served from the cache
    assert again.head.out_features == 10  # timm's classifier handling still applies
    theirs = again.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items() if not k.startswith('head.'))


def test_known_hash_is_checked(server, release, torch_home, monkeypatch):
    _, base = server
    url = f'{base}/{RELEASE_NAME}'
    monkeypatch.setitem(hub.KNOWN_SHA256, url, '0' * 64)
    with pytest.raises(WeightsUnavailable, match='has SHA-256 [0-9a-f]{64}, expected 0{64}'):
        gpvit.create_model('gpvit_l1', pretrained=True, pretrained_cfg_overlay=dict(url=url))
    assert _cache_files(torch_home) == []  # nothing half-checked stays
    import hashlib
    monkeypatch.setitem(hub.KNOWN_SHA256, url, hashlib.sha256((release[0] / RELEASE_NAME).read_bytes()).hexdigest())
    gpvit.create_model('gpvit_l1', pretrained=True, pretrained_cfg_overlay=dict(url=url))
    assert _cache_files(torch_home) == [RELEASE_NAME]


def test_corrupt_download_is_removed_from_the_cache(server, torch_home):
    httpd, base = server
    url = f'{base}/gpvit_l2_in1k_300e.pth'
    cached = torch_home / 'hub' / 'checkpoints' / 'gpvit_l2_in1k_300e.pth'
    with pytest.raises(WeightsUnavailable) as info:
        gpvit.create_model('gpvit_l2', pretrained=True, pretrained_cfg_overlay=dict(url=url))
    msg = str(info.value)
    assert '\n' not in msg and url in msg and str(cached) in msg and 'checkpoint=PATH' in msg
    assert 'not a readable checkpoint' in msg and 'removed from the cache' in msg
    assert _cache_files(torch_home) == []
    with pytest.raises(WeightsUnavailable):
        gpvit.create_model('gpvit_l2', pretrained=True, pretrained_cfg_overlay=dict(url=url))
    assert len(httpd.requests) == 2  # downloaded again, not read from a bad cache


def test_interrupted_download_leaves_nothing(server, torch_home):
    _, base = server
    url = f'{base}/short/{RELEASE_NAME}'
    with pytest.raises(WeightsUnavailable, match=r'stopped after 1,000 of 1,000,000 bytes'):
        hub.download_weights(url, progress=False)
    assert _cache_files(torch_home) == []


def test_unreachable_host_and_missing_file(server, torch_home):
    _, base = server
    with socket.socket() as s:  # a port nobody listens on
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    url = f'http://127.0.0.1:{port}/{RELEASE_NAME}'
    with pytest.raises(WeightsUnavailable) as info:
        timm.create_model('gpvit_l1', pretrained=True, pretrained_cfg_overlay=dict(url=url))
    msg = str(info.value)
    assert msg.startswith(f'cannot get the weights at {url}: the host cannot be reached')
    assert str(torch_home / 'hub' / 'checkpoints' / RELEASE_NAME) in msg and 'checkpoint=PATH' in msg
    with pytest.raises(WeightsUnavailable, match='HTTP 404'):
        gpvit.create_model('gpvit_l1', pretrained=True, pretrained_cfg_overlay=dict(url=f'{base}/nothing.pth'))
    assert _cache_files(torch_home) == []


def test_no_published_weights():
    with pytest.raises(WeightsUnavailable, match='gc_vit_large_224_21k: no published weights to download; load a '
                                                 'local file with checkpoint=PATH'):
        gpvit.create_model('gc_vit_large_224_21k', pretrained=True)


# -- dense recipes: the reference's whole-model release files ------------------------------------------------

def test_dense_recipe_pretrained_downloads_the_whole_model(release, server, torch_home, golden_dir, monkeypatch):
    """``create_model('gpvit_l1_upernet', pretrained=True)`` downloads the release file once, converts it and
    computes the reference's function (golden decode logits)."""
    httpd, base = server
    sd = fill(load_manifest(golden_dir / 'dense' / 'gpvit_l1_upernet_manifest.json'), seed=0)
    torch.save({'meta': {'CLASSES': None}, 'state_dict': sd}, release[0] / 'gpvit_l1_upernet.pth')
    monkeypatch.setitem(PUBLISHED_WEIGHTS, 'gpvit_l1_upernet', f'{base}/gpvit_l1_upernet.pth')
    ref = torch.load(golden_dir / 'dense' / 'gpvit_l1_upernet_seed0.pt')
    for _ in range(2):  # downloaded, then from the cache
        model = gpvit.create_model('gpvit_l1_upernet', pretrained=True).eval()
        with torch.no_grad():
            logits = model.decode_head(model.backbone(ref['input']))
        assert close_to_reference(logits, ref['decode_logits'])
    assert httpd.requests.count('/gpvit_l1_upernet.pth') == 1
    assert _cache_files(torch_home) == ['gpvit_l1_upernet.pth']
    with pytest.raises(ValueError, match='pretrained=True or checkpoint=, not both'):
        gpvit.create_model('gpvit_l1_upernet', pretrained=True, checkpoint=release[0] / 'gpvit_l1_upernet.pth')


def test_dense_pretrained_without_published_weights_is_a_named_error():
    with pytest.raises(CheckpointError, match='gc_vit_tiny_upernet: the reference published no weights'):
        gpvit.create_model('gc_vit_tiny_upernet', pretrained=True)
    with pytest.raises(CheckpointError, match="upernet: pretrained=True needs a recipe's name"):
        gpvit.create_model('upernet', backbone='gpvit_l1', pretrained=True)


def test_published_dense_weights_are_the_release_files_of_packaged_recipes():
    names = {f'gpvit_l{i}_{kind}' for i in (1, 2, 3, 4) for kind in
             ('upernet', 'segformer', 'maskrcnn_1x', 'maskrcnn_3x', 'retinanet_1x', 'retinanet_3x')}
    assert set(PUBLISHED_WEIGHTS) == names
    for name, url in PUBLISHED_WEIGHTS.items():
        assert url == f'https://github.com/ChenhongyiYang/GPViT/releases/download/v0.0.1/{name}.pth'
        assert recipe_model(name) is not None, name  # a packaged recipe builds the model the file fits
