"""``gpvit configs``: the recipe configs shipped with the package, with task, model and dataset."""
import argparse


def run(args: argparse.Namespace) -> int:
    from ..engine.recipes import RECIPE_DIR, list_recipes
    from ..tools.zoo import format_markdown
    recipes = list_recipes(args.task)
    if args.pattern:
        import fnmatch
        recipes = [r for r in recipes if fnmatch.fnmatch(r.name, args.pattern)]
    if not recipes:
        raise ValueError(f'no packaged recipe matches {args.pattern or args.task!r}; `gpvit configs` lists them all')
    if args.paths:
        print('\n'.join(str(r.path) for r in recipes))
        return 0
    rows = [[f'`{r.name}`', r.task, r.model, r.dataset] for r in recipes]
    print(format_markdown(['config', 'task', 'model', 'dataset'], rows), end='')
    print(f'\n{len(recipes)} recipes in {RECIPE_DIR}. Use one by name: gpvit train --config NAME [KEY=VALUE ...]; '
          f'gpvit train --config NAME --print-config shows it resolved.')
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('configs', help='list the packaged recipe configs (task, model, dataset)',
                       description='The recipe configs that ship with the package. Every command that takes '
                                   '--config accepts their names from any directory; a path to a file wins.')
    p.add_argument('pattern', nargs='?', default='', help="wildcard filter on the names, e.g. 'gpvit_l1_*'")
    p.add_argument('--task', choices=('classification', 'detection', 'segmentation'), help='only this task')
    p.add_argument('--paths', action='store_true', help='print the files instead of the table')
    p.set_defaults(func=run)
