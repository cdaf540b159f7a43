"""The package's layers import one way (docs/architecture.md): no cycle, nothing imports a layer above its own.

Every ``import`` in every module counts, also the ones inside functions (a lazy import is still a dependency).
"""
import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

SRC = Path(__file__).resolve().parents[1] / 'src'

#: Layer of each part of the package, bottom (0) to top. A module may import its own part (its package's other
#: modules) and parts of lower layers only. ``gpvit`` itself (the package's ``__init__``) is the facade: it
#: re-exports from the layers below the engine and is imported by none of them.
LAYERS: Dict[str, int] = {
    'gpvit.version': 0,
    'gpvit.errors': 0,
    'gpvit.checkpoint': 1,
    'gpvit.hub': 2,
    'gpvit.data': 2,
    'gpvit.models': 3,
    'gpvit.dense': 4,
    'gpvit.factory': 5,
    'gpvit': 6,
    'gpvit.engine': 6,
    'gpvit.tasks': 7,
    'gpvit.tools': 8,
    'gpvit.commands': 9,
    'gpvit.cli': 9,
    'gpvit.__main__': 10,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


def _part(module: str) -> str:
    """The entry of LAYERS a module belongs to (the longest matching prefix)."""
    best = ''
    for name in LAYERS:
        if (module == name or module.startswith(name + '.')) and len(name) > len(best):
            best = name
    assert best, f'{module} belongs to no layer of LAYERS: add it there and to docs/architecture.md'
    return best


def _imports(path: Path, module: str, modules: Set[str]) -> List[Tuple[str, int]]:
    """``(imported gpvit module, line)`` of every import in the file, relative imports resolved."""
    is_package = path.name == '__init__.py'
    package = module if is_package else module.rpartition('.')[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split('.')[0] == 'gpvit']
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - (node.level - 1)]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ''
            if target.split('.')[0] != 'gpvit':
                continue
            for alias in node.names:  # `from . import x` imports the module x where there is one
                sub = f'{target}.{alias.name}'
                out.append((sub if sub in modules else target, node.lineno))
    return out


def _graph() -> Dict[str, List[Tuple[str, int]]]:
    files = {_module_name(p): p for p in (SRC / 'gpvit').rglob('*.py')}
    return {m: _imports(p, m, set(files)) for m, p in files.items()}


def test_no_module_imports_a_layer_above_its_own():
    graph = _graph()
    upward = set()
    for module, imports in graph.items():
        own = _part(module)
        for target, line in imports:
            other = _part(target)
            if other != own and not (own == 'gpvit' and LAYERS[other] < LAYERS['gpvit']) \
                    and LAYERS[other] >= LAYERS[own]:
                upward.add(f'{module}:{line} imports {target} ({other}, layer {LAYERS[other]} >= {LAYERS[own]})')
    assert not upward, 'imports against the layers:\n' + '\n'.join(sorted(upward))


def test_no_import_cycle():
    graph = {m: {t for t, _ in imports if t != m} for m, imports in _graph().items()}
    state: Dict[str, int] = {}  # 1 on the stack, 2 done
    stack: List[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail('import cycle: ' + ' -> '.join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_checker_sees_upward_and_lazy_imports(tmp_path):
    """The rules above cannot pass vacuously: a lazy upward import in a function is found."""
    fake = tmp_path / 'gpvit' / 'models'
    fake.mkdir(parents=True)
    (fake / 'bad.py').write_text('def f():\n    from ..tasks import train\n    from . import good\n')
    (fake / 'good.py').write_text('')
    found = _imports(fake / 'bad.py', 'gpvit.models.bad', {'gpvit.models.good', 'gpvit.tasks'})
    assert found == [('gpvit.tasks', 2), ('gpvit.models.good', 3)]
    assert LAYERS[_part('gpvit.tasks')] > LAYERS[_part('gpvit.models.bad')]
