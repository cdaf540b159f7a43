"""The wheel carries what a user who only ran ``pip install`` needs: recipes, typing marker, metadata, commands."""
import email
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.version import Version

import gpvit
from gpvit.engine.recipes import RECIPE_DIR

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp('dist')
    # no build isolation: the build backend (setuptools, a dev dependency) is already installed, nothing is fetched
    cmd = [sys.executable, '-m', 'pip', 'wheel', '--quiet', '--no-deps', '--no-build-isolation', '--wheel-dir',
           str(out), str(ROOT)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob('gpvit-*.whl')
    return path


def test_wheel_contents_and_metadata(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        recipes = {n for n in names if n.startswith('gpvit/configs/')}
        packaged = {f'gpvit/configs/{p.relative_to(RECIPE_DIR).as_posix()}' for p in RECIPE_DIR.rglob('*.yaml')}
        assert recipes == packaged and len(recipes) >= 40
        for name in recipes:  # the repository's configs/ is the same files, byte for byte
            assert zf.read(name) == (ROOT / 'configs' / name[len('gpvit/configs/'):]).read_bytes()
        assert 'gpvit/py.typed' in names and 'gpvit/__main__.py' in names
        assert not any(n.startswith(('tests/', 'benchmarks/')) or '/golden/' in n for n in names)
        (meta_name,) = [n for n in names if n.endswith('.dist-info/METADATA')]
        meta = email.message_from_bytes(zf.read(meta_name))
        (entry_name,) = [n for n in names if n.endswith('.dist-info/entry_points.txt')]
        entry_points = zf.read(entry_name).decode()
    assert meta['Version'] == gpvit.__version__
    assert meta['Requires-Python'] == '>=3.10'
    assert 'Programming Language :: Python :: 3.10' in meta.get_all('Classifier')
    assert 'Typing :: Typed' in meta.get_all('Classifier')
    assert any(u.startswith('GPViT reference code, https://github.com/ChenhongyiYang/GPViT')
               for u in meta.get_all('Project-URL'))
    requires = meta.get_all('Requires-Dist')
    floors = {line.split('==')[0]: line.split('==')[1].strip()
              for line in (ROOT / '.ci' / 'floor-constraints.txt').read_text().splitlines()
              if '==' in line and not line.startswith('#')}
    # every dependency of the wheel declares a lower bound, and CI's floor run pins exactly that bound
    for req in requires:
        name = req.split(';')[0].split('>=')[0].split('[')[0].strip().lower()
        if 'extra ==' in req and name == 'gpvit':
            continue  # dev = gpvit[export,dense,demo]
        assert '>=' in req, f'{req}: no lower bound'
        bound = req.split('>=')[1].split(',')[0].split(';')[0].strip()
        assert name in floors and Version(floors[name]) == Version(bound), \
            f'{req}: .ci/floor-constraints.txt pins {floors.get(name)}'
    assert 'gpvit = gpvit.cli:main' in entry_points


def test_installed_wheel_works_from_an_empty_directory(wheel, tmp_path):
    """Installed outside the checkout (no configs/ folder near): version, recipes by name, the model table."""
    site = tmp_path / 'site'
    proc = subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps', '--no-index', '--target',
                           str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    empty = tmp_path / 'empty'
    empty.mkdir()
    env = {'PYTHONPATH': str(site), 'PATH': '/usr/bin:/bin', 'HOME': str(tmp_path)}

    def gpvit_cli(*args):
        p = subprocess.run([sys.executable, '-m', 'gpvit', *args], cwd=empty, env=env, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        return p.stdout

    where = subprocess.run([sys.executable, '-c', 'import gpvit; print(gpvit.__file__)'], cwd=empty, env=env,
                           capture_output=True, text=True, timeout=120).stdout
    assert where.startswith(str(site))  # the installed wheel, not the checkout
    assert gpvit_cli('--version').strip() == f'gpvit {gpvit.__version__}'
    table = gpvit_cli('configs')
    assert '| `gpvit_l1_in1k` | classification | gpvit_l1 | ImageNet-1k |' in table
    assert '| `gpvit_l1_maskrcnn_1x` | detection | mask_rcnn (gpvit_l1) | COCO 2017 |' in table
    printed = gpvit_cli('train', '--config', 'gpvit_l1_in1k', '--print-config')
    assert 'name: gpvit_l1' in printed and 'drop_path_rate: 0.2' in printed
    assert '| `gpvit_l1` | 9.59M | 12.19 | 224x224 | 80.5 |' in gpvit_cli('models', 'gpvit_l1', '-q')
    assert list(empty.iterdir()) == []  # nothing written into the working directory
