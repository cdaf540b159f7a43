"""The recipe configs shipped inside the package, addressable by name from anywhere.

The YAML files live in ``gpvit/configs/<task>/<name>.yaml`` (the repository's ``configs/`` is the same folder),
so an installed wheel carries them: ``gpvit train --config gpvit_l1_in1k`` works in any directory. A path to
an existing file always wins over a name; ``configs/detection/gpvit_l1_maskrcnn_1x.yaml`` as written in the
docs also finds the packaged file when run outside a checkout.
"""
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

import yaml

__all__ = ['RECIPE_DIR', 'Recipe', 'list_recipes', 'resolve_config']

#: The packaged recipe folder.
RECIPE_DIR = Path(__file__).resolve().parent.parent / 'configs'
_SUFFIXES = ('.yaml', '.yml')


@dataclass(frozen=True)
class Recipe:
    """One packaged config.

    Attributes:
        name: the file's stem, the name ``--config`` takes (``'gpvit_l1_in1k'``).
        task: its ``task:`` (``classification``, ``detection``, ``segmentation``).
        model: its ``model.name``, with the backbone of a dense model in brackets (``mask_rcnn (gpvit_l1)``).
        dataset: its ``dataset:`` (``ImageNet-1k``, ``COCO 2017``, ``ADE20K``, ...).
        path: the file.
    """
    name: str
    task: str
    model: str
    dataset: str
    path: Path


def _recipe_files() -> List[Path]:
    return sorted(p for p in RECIPE_DIR.rglob('*') if p.suffix in _SUFFIXES and p.is_file())


def _describe(path: Path) -> Recipe:
    raw = yaml.safe_load(path.read_text()) or {}
    model = raw.get('model') or {}
    name = str(model.get('name', ''))
    backbone = (model.get('kwargs') or {}).get('backbone')
    return Recipe(path.stem, str(raw.get('task', 'classification')), f'{name} ({backbone})' if backbone else name,
                  str(raw.get('dataset', '')), path)


def list_recipes(task: Optional[str] = None) -> List[Recipe]:
    """Every packaged recipe (of ``task`` if given), sorted by task and name."""
    recipes = [_describe(p) for p in _recipe_files()]
    return sorted((r for r in recipes if task is None or r.task == task), key=lambda r: (r.task, r.name))


def _strip_suffix(text: str) -> str:
    for suffix in _SUFFIXES:
        if text.endswith(suffix):
            return text[:-len(suffix)]
    return text


def resolve_config(spec: Union[str, Path]) -> Path:
    """The config file ``spec`` names.

    Args:
        spec: a path to a YAML file (wins when it exists), a recipe name (``gpvit_l1_in1k``, with or without
            ``.yaml``), ``task/name``, or a path that ends in ``configs/<task>/<name>.yaml`` (the docs' paths,
            run outside a checkout).

    Raises:
        FileNotFoundError: nothing of that name; the message lists the closest recipe names and where to see
            them all (``gpvit configs``).
    """
    path = Path(spec)
    if path.is_file():
        return path
    if path.is_dir():
        raise FileNotFoundError(f'config {spec}: is a directory; give a YAML file or a recipe name '
                                f'(`gpvit configs` lists them)')
    files = _recipe_files()
    parts = _strip_suffix(path.as_posix()).split('/')
    packaged = {p.relative_to(RECIPE_DIR).with_suffix('').as_posix(): p for p in files}
    by_name = {p.stem: p for p in files}
    if len(parts) == 1 and parts[0] in by_name:
        return by_name[parts[0]]
    if len(parts) >= 2 and '/'.join(parts[-2:]) in packaged and (len(parts) == 2 or parts[-3] == 'configs'):
        return packaged['/'.join(parts[-2:])]
    close = difflib.get_close_matches(_strip_suffix(path.name), list(by_name), n=3)
    hint = f'did you mean {" or ".join(close)}? ' if close else ''
    raise FileNotFoundError(f'config file not found: {spec} is neither a file nor a packaged recipe; {hint}'
                            f'`gpvit configs` lists the recipes')
