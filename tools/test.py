"""Test (and evaluate) a checkpoint with an mmpretrain config, with mmsts's
modules registered.

Examples::

    python tools/test.py CONFIG CHECKPOINT --out work_dirs/preds.pkl
    python tools/test.py CONFIG CHECKPOINT --tta             # flip TTA
    python tools/test.py CONFIG CHECKPOINT --show-dir vis    # save images
    bash tools/dist_test.sh CONFIG CHECKPOINT 8

Without CUDA, ``--launcher pytorch`` (``dist_test.sh``) runs on CPU with the
``gloo`` backend, see :func:`mmsts.utils.cpu_distributed`.
"""
import argparse
import os
import os.path as osp
from copy import deepcopy

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
        '--show-dir',
        help='save images of the predictions in this directory, through '
        'the config\'s `visualization` hook')
    parser.add_argument(
        '--show',
        action='store_true',
        help='display the predictions in a window')
    parser.add_argument(
        '--interval',
        type=int,
        default=1,
        help='visualise every N-th sample (default: %(default)s)')
    parser.add_argument(
        '--wait-time',
        type=float,
        default=2,
        help='seconds each window is displayed (default: %(default)s)')
    parser.add_argument(
        '--tta',
        action='store_true',
        help='test-time augmentation: the config\'s `tta_pipeline` and '
        '`tta_model` if it has them, otherwise mmpretrain\'s flip TTA '
        '(average of the scores of the image and its horizontal flip)')
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
    if args.show or args.show_dir is not None:
        set_visualization(cfg, args)
    if args.tta:
        set_tta(cfg)
    cfg.setdefault('default_scope', 'mmpretrain')
    return cfg


def set_visualization(cfg: Config, args: argparse.Namespace) -> None:
    """Turn on mmpretrain's ``VisualizationHook`` as ``--show`` and
    ``--show-dir`` ask, as mmpretrain's ``tools/test.py`` does."""
    if 'visualization' not in cfg.get('default_hooks', {}):
        raise ValueError(
            '--show and --show-dir need a `visualization` hook in the '
            "config's `default_hooks`, e.g. default_hooks = dict("
            "visualization=dict(type='VisualizationHook'))")
    hook = cfg.default_hooks.visualization
    hook.enable = True
    hook.show = args.show
    hook.wait_time = args.wait_time
    hook.out_dir = args.show_dir
    hook.interval = args.interval


def set_tta(cfg: Config) -> None:
    """Wrap the model and the test pipeline for test-time augmentation,
    as mmpretrain's ``tools/test.py --tta`` does: the config's
    ``tta_model``/``tta_pipeline``, else the average of the class scores of
    the image and of its horizontal flip."""
    if 'tta_model' not in cfg:
        cfg.tta_model = dict(type='mmpretrain.AverageClsScoreTTA')
    if 'tta_pipeline' not in cfg:
        test_pipeline = cfg.test_dataloader.dataset.pipeline
        cfg.tta_pipeline = deepcopy(test_pipeline)
        cfg.tta_pipeline[-1] = dict(
            type='TestTimeAug',
            transforms=[
                [
                    dict(type='RandomFlip', prob=1.),
                    dict(type='RandomFlip', prob=0.)
                ],
                [test_pipeline[-1]],
            ])
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


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
