"""Datasets and transforms: ImageNet-style folders and LMDB, unreadable images skipped and counted."""
from .folder import (IMG_EXTENSIONS, ClassificationDataset, DataError, ImageFolderDataset, UnreadableImage,
                     collate_skipping, decode_image, scan_image_folder)
from .lmdb import LMDBDataset, read_lmdb_meta, write_lmdb
from .transforms import eval_transform, train_transform

__all__ = ['IMG_EXTENSIONS', 'ClassificationDataset', 'DataError', 'ImageFolderDataset', 'UnreadableImage',
           'collate_skipping', 'decode_image', 'scan_image_folder', 'LMDBDataset', 'read_lmdb_meta', 'write_lmdb',
           'eval_transform', 'train_transform']
