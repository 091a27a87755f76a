"""Test (and evaluate) a checkpoint with an mmpretrain config, with mmsts's
modules registered.

Examples::

    python tools/test.py CONFIG CHECKPOINT --out work_dirs/preds.pkl
    bash tools/dist_test.sh CONFIG CHECKPOINT 8

Without CUDA, ``--launcher pytorch`` (``dist_test.sh``) runs on CPU with the
``gloo`` backend, see :func:`mmsts.utils.cpu_distributed`.
"""
import argparse
import os
import os.path as osp

import mmengine
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.dist import is_main_process
from mmengine.evaluator import DumpResults
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmsts  # noqa: F401  (registers mmsts's modules)
from mmsts.utils import cpu_distributed, fix_collate_fn_scope


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; None reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a checkpoint')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', help='the dir to save logs and evaluation metrics')
    parser.add_argument(
        '--out', help='dump the predictions (or metrics) to this file')
    parser.add_argument(
        '--out-item',
        choices=['metrics', 'pred'],
        default='pred',
        help='what --out holds. Defaults to the predictions')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, as key=value pairs, e.g. '
        'test_dataloader.batch_size=8; lists as key="[a,b]" or key=a,b; no '
        'white space is allowed')
    parser.add_argument(
        '--no-pin-memory',
        action='store_true',
        help='disable the pin_memory option of the dataloader')
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


def merge_args(cfg: Config, args: argparse.Namespace) -> Config:
    """Merge the command line into the config.

    Args:
        cfg (Config): The config, modified in place.
        args (argparse.Namespace): The parsed command line.

    Returns:
        Config: ``cfg``.
    """
    cfg.launcher = args.launcher

    # work_dir: command line > config > ./work_dirs/<config name>
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint

    if cfg.get('test_dataloader') is not None:
        loader = ConfigDict(
            pin_memory=True, collate_fn=dict(type='default_collate'))
        loader.update(cfg.test_dataloader)
        if args.no_pin_memory:
            loader.pin_memory = False
        cfg.test_dataloader = loader

    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    fix_collate_fn_scope(cfg)
    for key in ('test_dataloader', 'test_cfg', 'test_evaluator'):
        if cfg.get(key) is None:
            raise ValueError(
                f'{args.config} cannot be tested: `{key}` is missing (self-'
                'supervised pretraining configs have none; test a '
                'classification config, e.g. a linear-probe benchmark, with '
                'the backbone from tools/model_converters/'
                'extract_backbone.py)')
    cfg.setdefault('default_scope', 'mmpretrain')
    return cfg


def run_test(cfg: Config, args) -> dict:
    """Build the runner and test; the runner is freed on return."""
    if 'runner_type' in cfg:
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)

    if args.out and args.out_item == 'pred':
        runner.test_evaluator.metrics.append(
            DumpResults(out_file_path=args.out))
    metrics = runner.test()
    # Every rank holds the gathered metrics; one writes them.
    if args.out and args.out_item == 'metrics' and is_main_process():
        mmengine.dump(metrics, args.out)
    return metrics


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = merge_args(Config.fromfile(args.config), args)
    with cpu_distributed(cfg):
        return run_test(cfg, args)


if __name__ == '__main__':
    main()
