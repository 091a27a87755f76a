"""Train a model with an mmpretrain config, with mmsts's modules registered.

Examples::

    python tools/train.py \\
        configs/byol/byol_resnet50_sts_8xb32-coslr-200e_in1k.py
    python tools/train.py CONFIG --resume            # latest in work_dir
    bash tools/dist_train.sh CONFIG 8                # torchrun, 8 processes

Without CUDA, ``--launcher pytorch`` (``dist_train.sh``) runs on CPU with the
``gloo`` backend, see :func:`mmsts.utils.cpu_distributed`.
"""
import argparse
import os
import os.path as osp
from typing import Sequence

from mmengine.config import Config, ConfigDict, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmsts  # noqa: F401  (registers mmsts's modules)
from mmsts.utils import cpu_distributed, fix_collate_fn_scope


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; None reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from this checkpoint; without a path, resume from the '
        'latest checkpoint in the work directory, if any')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='enable automatic-mixed-precision training')
    parser.add_argument(
        '--no-validate',
        action='store_true',
        help='do not evaluate checkpoints during training')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the learning rate by the actual batch size over '
        '`auto_scale_lr.base_batch_size` of the config')
    parser.add_argument(
        '--no-pin-memory',
        action='store_true',
        help='disable the pin_memory option of the dataloaders')
    parser.add_argument(
        '--no-persistent-workers',
        action='store_true',
        help='disable the persistent_workers option of the dataloaders')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, as key=value pairs, e.g. '
        'train_cfg.max_epochs=2 model.backbone.depth=18; lists as '
        'key="[a,b]" or key=a,b; no white space is allowed')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or
    # --local_rank; torchrun sets the LOCAL_RANK environment variable.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def set_dataloader_defaults(cfg: Config,
                            fields: Sequence[str],
                            pin_memory: bool = True,
                            persistent_workers: bool = True) -> None:
    """Default mmpretrain's dataloader settings, keeping the config's.

    ``collate_fn`` defaults to ``default_collate`` (mmpretrain's choice; the
    runner's own default is ``pseudo_collate``) and any ``_scope_`` that
    inheriting ``mmpretrain::`` configs injected into it is dropped.
    ``persistent_workers`` is only set when the loader has workers, since
    PyTorch refuses it otherwise.

    Args:
        cfg (Config): The config, modified in place.
        fields (Sequence[str]): Dataloader keys, e.g. ``['train_dataloader']``.
        pin_memory (bool): False forces ``pin_memory=False``.
        persistent_workers (bool): False forces ``persistent_workers=False``.
    """
    for field in fields:
        loader = cfg.get(field)
        if loader is None:
            continue
        merged = ConfigDict(
            pin_memory=True, collate_fn=dict(type='default_collate'))
        if loader.get('num_workers', 0) > 0:
            merged.persistent_workers = True
        merged.update(loader)
        if not pin_memory:
            merged.pin_memory = False
        if not persistent_workers:
            merged.persistent_workers = False
        cfg[field] = merged
    fix_collate_fn_scope(cfg)


def merge_args(cfg: Config, args: argparse.Namespace) -> Config:
    """Merge the command line into the config.

    Args:
        cfg (Config): The config, modified in place.
        args (argparse.Namespace): The parsed command line.

    Returns:
        Config: ``cfg``.
    """
    if args.no_validate:
        cfg.val_cfg = None
        cfg.val_dataloader = None
        cfg.val_evaluator = None

    cfg.launcher = args.launcher

    # work_dir: command line > config > ./work_dirs/<config name>
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])

    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    if args.auto_scale_lr:
        auto_scale_lr = cfg.get('auto_scale_lr')
        if not isinstance(auto_scale_lr, dict) or \
                'base_batch_size' not in auto_scale_lr:
            raise ValueError(
                '--auto-scale-lr needs `auto_scale_lr=dict(base_batch_size='
                'N)` in the config (the total batch size that its learning '
                f'rate was set for), but got auto_scale_lr={auto_scale_lr!r}')
        auto_scale_lr.enable = True

    set_dataloader_defaults(
        cfg, ('train_dataloader', 'val_dataloader', 'test_dataloader'),
        pin_memory=not args.no_pin_memory,
        persistent_workers=not args.no_persistent_workers)

    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
        fix_collate_fn_scope(cfg)
    cfg.setdefault('default_scope', 'mmpretrain')
    return cfg


def build_runner(cfg: Config) -> Runner:
    """Build the runner.

    Args:
        cfg (Config): The merged config.
    """
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = merge_args(Config.fromfile(args.config), args)
    with cpu_distributed(cfg):
        build_runner(cfg).train()


if __name__ == '__main__':
    main()
