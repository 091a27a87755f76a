"""Pseudo-label unlabeled images with a trained teacher (Noisy Student).

The teacher (the config's ``model``, the checkpoint's weights) predicts, in
evaluation mode and without augmentation, the class probabilities of every
image of the config's ``unlabeled_dataset`` (give it the un-noised test
pipeline); the images below ``--threshold`` are dropped and the classes
balanced (``--per-class``), see
:func:`mmsts.datasets.select_pseudo_labels`; the selection, its soft (or,
with ``--hard``, one-hot) targets and a fingerprint of the data set are
written to ``--out`` for :class:`mmsts.datasets.PseudoLabeledDataset`.

Resumable and distributed: the images are predicted in chunks of
``--chunk-size``, each saved to ``<out>.parts/`` as soon as it is done and
skipped when the command is run again; with ``--launcher pytorch`` (e.g.
``torchrun --nproc_per_node 8 tools/pseudo_label.py ... --launcher
pytorch``) rank ``r`` predicts the chunks ``r, r + world_size, ...`` and
rank 0 writes the file.

Example::

    python tools/pseudo_label.py TEACHER_CONFIG TEACHER.pth \\
        --out work_dirs/ns/round1/pseudo_labels.npz --threshold 0.3
"""
import argparse
import os
import os.path as osp
import sys
from typing import List, Optional

import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.dataset import pseudo_collate
from mmengine.device import get_device
from mmengine.dist import barrier, get_dist_info, init_dist
from mmengine.logging import print_log
from mmengine.runner import load_checkpoint
from mmengine.utils import ProgressBar
from mmpretrain.registry import DATASETS, MODELS

import mmsts  # noqa: F401  (registers mmsts's modules)
from mmsts.datasets import (check_selection, dataset_fingerprint,
                            save_pseudo_labels, select_pseudo_labels)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Pseudo-label unlabeled images with a teacher')
    parser.add_argument('config', help='config with `unlabeled_dataset` and '
                        '`model` (the teacher, unless --model-config)')
    parser.add_argument('checkpoint', help="the teacher's checkpoint")
    parser.add_argument('--model-config',
                        help='take the teacher `model` from this config '
                        'instead (e.g. a smaller teacher than the student)')
    parser.add_argument('--out', required=True, help='the .npz to write')
    parser.add_argument('--threshold', type=float, default=0.3,
                        help='confidence threshold (default: 0.3, the '
                        "paper's)")
    parser.add_argument('--per-class', type=int,
                        help='images per class after balancing (default: '
                        'no balancing)')
    parser.add_argument('--hard', action='store_true',
                        help='one-hot targets instead of the probabilities')
    parser.add_argument('--batch-size', type=int, default=256)
    parser.add_argument('--chunk-size', type=int, default=8192,
                        help='images per resumable chunk')
    parser.add_argument('--launcher', choices=['none', 'pytorch'],
                        default='none')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    check_selection(args.threshold, args.per_class)
    for key in ('batch_size', 'chunk_size'):
        if getattr(args, key) < 1:
            raise ValueError(f'`--{key.replace("_", "-")}` must be >= 1, '
                             f'but got {getattr(args, key)}')
    return args


def build(cfg: Config, checkpoint: str):
    """The teacher, in evaluation mode on this process's device, and the
    unlabeled data set."""
    if 'unlabeled_dataset' not in cfg:
        raise ValueError(f'{cfg.filename}: the config needs an '
                         '`unlabeled_dataset`')
    model_cfg = cfg.model.copy()
    # As MMEngine's Runner does: a config's top-level `data_preprocessor`
    # (mmpretrain's normalisation) is the model's unless it has its own;
    # without it the teacher would see unnormalised images.
    if cfg.get('data_preprocessor') is not None:
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    model = MODELS.build(model_cfg)
    load_checkpoint(model, checkpoint, map_location='cpu', logger='silent')
    # This process's device, as the Runner moves a model (under torchrun,
    # init_dist has set each process's GPU).
    model.to(get_device())
    model.eval()
    dataset = DATASETS.build(cfg.unlabeled_dataset)
    return model, dataset


@torch.no_grad()
def predict_chunk(model, dataset, indices: range,
                  batch_size: int) -> np.ndarray:
    """Class probabilities of ``dataset[indices]``."""
    probs = []
    for start in range(indices.start, indices.stop, batch_size):
        batch = pseudo_collate([
            dataset[i] for i in range(start, min(start + batch_size,
                                                 indices.stop))
        ])
        data = model.data_preprocessor(batch, False)
        logits = model(data['inputs'], mode='tensor')
        probs.append(logits.float().softmax(dim=1).cpu().numpy())
    return np.concatenate(probs)


def _save(path: str, array: np.ndarray) -> None:
    tmp = f'{path}.{os.getpid()}.tmp.npy'
    np.save(tmp, array)
    os.replace(tmp, path)


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.model_config:
        model_cfg = Config.fromfile(args.model_config)
        cfg.model = model_cfg.model
        cfg.data_preprocessor = model_cfg.get('data_preprocessor')
    if args.launcher != 'none':
        init_dist(args.launcher, backend='nccl' if torch.cuda.is_available()
                  else 'gloo')
    rank, world_size = get_dist_info()
    model, dataset = build(cfg, args.checkpoint)
    parts = f'{args.out}.parts'
    os.makedirs(parts, exist_ok=True)
    chunks = [
        range(start, min(start + args.chunk_size, len(dataset)))
        for start in range(0, len(dataset), args.chunk_size)
    ]
    mine = [i for i in range(len(chunks)) if i % world_size == rank]
    todo = [
        i for i in mine
        if not osp.isfile(osp.join(parts, f'chunk_{i:05d}.npy'))
    ]
    if rank == 0:
        print_log(
            f'{len(dataset)} images in {len(chunks)} chunks, '
            f'{len(chunks) - len(todo) * world_size} at most already done',
            logger='current')
    bar = ProgressBar(len(todo)) if rank == 0 and todo else None
    for i in todo:
        _save(osp.join(parts, f'chunk_{i:05d}.npy'),
              predict_chunk(model, dataset, chunks[i], args.batch_size))
        if bar:
            bar.update()
    barrier()
    if rank == 0:
        probs = np.concatenate([
            np.load(osp.join(parts, f'chunk_{i:05d}.npy'))
            for i in range(len(chunks))
        ])
        indices, targets = select_pseudo_labels(probs, args.threshold,
                                                args.per_class, args.hard)
        save_pseudo_labels(
            args.out,
            indices,
            targets,
            dataset_fingerprint(dataset),
            threshold=args.threshold,
            per_class=args.per_class,
            hard=args.hard,
            checkpoint=osp.abspath(args.checkpoint),
            num_unlabeled=len(dataset),
            mean_confidence=float(probs.max(axis=1).mean()))
        print_log(
            f'{len(indices)} pseudo-labels of {len(dataset)} images '
            f'(threshold {args.threshold}) written to {args.out}',
            logger='current')
    barrier()
    return args.out


if __name__ == '__main__':
    main(sys.argv[1:])
