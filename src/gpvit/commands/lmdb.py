"""``gpvit lmdb``: convert ImageNet-style folders into LMDB databases (one per split)."""
import argparse


def run(args: argparse.Namespace) -> int:
    from ..data.lmdb import write_lmdb
    if not (args.train_img_dir or args.val_img_dir):
        raise ValueError('nothing to do: give --train-img-dir/--train-out and/or --val-img-dir/--val-out')
    classes = None
    for split, img_dir, out in (('train', args.train_img_dir, args.train_out), ('val', args.val_img_dir, args.val_out)):
        if img_dir is None:
            continue
        if out is None:
            raise ValueError(f'--{split}-img-dir given without --{split}-out')
        if split == 'val' and classes is None and args.classes_from:
            from ..data.lmdb import read_lmdb_meta
            classes = read_lmdb_meta(args.classes_from)['classes']
        info = write_lmdb(img_dir, out, class_names=classes, full_decode=not args.quick_check)
        classes = info['classes']
        print(f'{split}: {info["written"]} images in {len(classes)} classes -> {out}'
              + (f'; {len(info["skipped"])} unreadable image(s) skipped' if info['skipped'] else ''))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('lmdb', help='convert ImageNet-style folders to LMDB',
                       description='Write IMG_DIR/<class>/<image> into an LMDB database per split, keeping the '
                                   'encoded files as they are. The validation split uses the training split\'s '
                                   'classes. Unreadable images are skipped and counted.')
    p.add_argument('--train-img-dir', help='training split folder (e.g. imagenet/train)')
    p.add_argument('--train-out', help='LMDB database to create for it')
    p.add_argument('--val-img-dir', help='validation split folder')
    p.add_argument('--val-out', help='LMDB database to create for it')
    p.add_argument('--classes-from', help='an existing training LMDB whose classes the validation split uses '
                                          '(when converting only the validation split)')
    p.add_argument('--quick-check', action='store_true',
                   help="check each file's structure only (PIL verify), not by decoding it: faster, but truncated "
                        'images get in (they are skipped when read during training)')
    p.set_defaults(func=run)
