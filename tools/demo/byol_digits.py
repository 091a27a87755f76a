"""Demo: BYOL with a TMA (EMA) and an STS teacher on the 8x8 digits.

Pretrains BYOL twice from the same seed on scikit-learn's handwritten digits
(no download), once with plain EMA teachers (TMA) and once with
Spatial-Temporal Smoothing (STS, p = 0.7), identical otherwise; then
linear-probes the frozen teacher and student backbones of both runs on the
500 test digits, prints the table, and writes ``summary.md`` and
``comparison.png`` (loss, momentum, fraction of fragments updated and
teacher-student distance of both runs) in the work dir. It also probes a
randomly initialised backbone, for reference. About 3 minutes on one CPU
core.

Example:
    python tools/demo/byol_digits.py --work-dir work_dirs/demo/byol --seed 0
"""
import argparse
import os.path as osp
import sys
import time
from datetime import datetime
from typing import Optional

import torch
from mmengine.config import Config
from mmengine.logging import MMLogger, print_log
from mmengine.runner import Runner, find_latest_checkpoint
from mmengine.utils import mkdir_or_exist

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from common import (REPO_ROOT, ProgressBarHook,  # noqa: E402
                    experiment_name, load_compare_runs)

CONFIG_DIR = osp.join(REPO_ROOT, 'configs', 'byol')
#: Pretraining config of each run, in the order they are run.
PRETRAIN_CONFIGS = {
    'TMA': osp.join(CONFIG_DIR, 'byol_resnet-tiny_digits_tma.py'),
    'STS': osp.join(CONFIG_DIR, 'byol_resnet-tiny_digits_sts.py'),
}
PROBE_CONFIG = osp.join(CONFIG_DIR, 'benchmarks',
                        'linear-probe_resnet-tiny_digits.py')
#: Where each backbone lives in a BYOL checkpoint.
BACKBONE_PREFIXES = {
    'teacher': 'target_net.module.0.',
    'student': 'backbone.',
}
TEACHER_NAME = 'target_net'
DEMO_CMD = 'python tools/demo/byol_digits.py'

# --smoke: a few iterations on a few images, to test the pipeline quickly.
SMOKE_TRAIN_IMAGES = 64
SMOKE_TEST_IMAGES = 100
SMOKE_BATCH = 16


def _set_run_length(cfg: Config, smoke: bool, epochs: Optional[int]) -> None:
    """Apply --smoke and the epoch override to a config."""
    if epochs is not None:
        cfg.train_cfg.max_epochs = epochs
    if smoke:
        cfg.train_cfg.max_epochs = 1
        cfg.train_dataloader.batch_size = SMOKE_BATCH
        cfg.train_dataloader.dataset.indices = SMOKE_TRAIN_IMAGES
        cfg.default_hooks.logger.interval = 1
        for hook in cfg.get('custom_hooks', []):  # the teacher's statistics
            if hook.get('type') == 'SpatialTemporalSmoothingHook':
                hook['log_interval'] = 1
        if 'knn_monitor' in cfg.default_hooks:
            cfg.default_hooks.knn_monitor.max_samples = SMOKE_TEST_IMAGES
    max_epochs = cfg.train_cfg.max_epochs
    # Fit the (epoch-based) schedulers to a shorter run.
    schedulers = cfg.param_scheduler
    if isinstance(schedulers, dict):
        schedulers = [schedulers]
    cfg.param_scheduler = [
        s for s in schedulers if s.get('begin', 0) < max_epochs
    ]
    for scheduler in cfg.param_scheduler:
        if 'end' in scheduler:
            scheduler['end'] = min(scheduler['end'], max_epochs)
    # Keep only the final checkpoint and validate once, at the end.
    cfg.default_hooks.checkpoint.interval = max_epochs
    if cfg.train_cfg.get('val_interval'):
        cfg.train_cfg.val_interval = max_epochs


def _run(cfg: Config, stage: str, log_level: str) -> Runner:
    cfg.experiment_name = experiment_name(f'byol_digits_{stage}')
    cfg.log_level = log_level
    runner = Runner.from_cfg(cfg)
    runner.register_hook(ProgressBarHook())
    runner.train()
    return runner


def pretrain(run: str,
             work_dir: str,
             seed: int,
             smoke: bool = False,
             epochs: Optional[int] = None,
             log_level: str = 'WARNING',
             cfg_options: Optional[dict] = None) -> str:
    """Pretrain BYOL with the config of ``run`` (``'TMA'`` or ``'STS'``).

    Args:
        run (str): A key of :data:`PRETRAIN_CONFIGS`.
        work_dir (str): The run's work dir.
        seed (int): Random seed.
        smoke (bool): Train a few iterations on a few images only.
            Defaults to False.
        epochs (int, optional): Override the config's epochs.
        log_level (str): Log level of the runner. Defaults to 'WARNING'.
        cfg_options (dict, optional): Config overrides, as ``--cfg-options``
            of ``tools/train.py``.

    Returns:
        str: The path of the final checkpoint.
    """
    cfg = Config.fromfile(PRETRAIN_CONFIGS[run])
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=seed)
    _set_run_length(cfg, smoke, epochs)
    _run(cfg, f'pretrain_{run.lower()}', log_level)
    return find_latest_checkpoint(work_dir)


def linear_probe(checkpoint: Optional[str],
                 prefix: str,
                 work_dir: str,
                 seed: int,
                 smoke: bool = False,
                 epochs: Optional[int] = None,
                 log_level: str = 'WARNING',
                 cfg_options: Optional[dict] = None) -> float:
    """Linear-probe the frozen backbone stored under ``prefix`` in
    ``checkpoint``.

    Args:
        checkpoint (str, optional): A BYOL checkpoint; None probes a
            randomly initialised backbone (a baseline).
        prefix (str): Prefix of the backbone's keys in the checkpoint, see
            :data:`BACKBONE_PREFIXES`.
        work_dir (str): The probe's work dir.
        seed (int): Random seed.
        smoke (bool): Train one epoch on a few images and test on a few.
            Defaults to False.
        epochs (int, optional): Override the config's epochs.
        log_level (str): Log level of the runner. Defaults to 'WARNING'.
        cfg_options (dict, optional): Config overrides.

    Returns:
        float: Top-1 accuracy on the test digits, in [0, 1].
    """
    cfg = Config.fromfile(PROBE_CONFIG)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=seed)
    cfg.model.backbone.init_cfg = None if checkpoint is None else dict(
        type='Pretrained', checkpoint=checkpoint, prefix=prefix)
    _set_run_length(cfg, smoke, epochs)
    if smoke:
        cfg.test_dataloader.dataset.indices = SMOKE_TEST_IMAGES
    # The probe is scored once, by the test loop, on the test digits.
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.train_cfg.pop('val_interval', None)
    runner = _run(cfg, f'probe_{osp.basename(work_dir)}', log_level)
    metrics = runner.test()
    return metrics['accuracy/top1'] / 100.0


RUN_DESCRIPTIONS = {
    'TMA': 'TMA (EMA, p = 0)',
    'STS': 'STS (p = 0.7)',
}


def format_table(top1: dict) -> str:
    """A markdown table: run x {teacher, student} linear-probe top-1 (%)."""
    lines = [
        '| teacher update | teacher backbone | student backbone |',
        '| --- | ---: | ---: |',
    ]
    for run, accs in top1.items():
        lines.append(f'| {RUN_DESCRIPTIONS.get(run, run)} | '
                     f'{100 * accs["teacher"]:.1f} | '
                     f'{100 * accs["student"]:.1f} |')
    return '\n'.join(lines)


def _epochs(cfg_path: str, override: Optional[int]) -> int:
    """Training epochs of a config, unless overridden."""
    return override or Config.fromfile(cfg_path).train_cfg.max_epochs


def stage_commands(args) -> list:
    """The command of the demo, then of its full-size stages one by one
    (from the repository root, with ``tools/train.py``)."""

    def config(path):
        return osp.relpath(path, REPO_ROOT)

    def out(*parts):
        return osp.join(args.work_dir, *parts)

    def options(epochs, *interval_keys):
        opts = f'randomness.seed={args.seed}'
        if epochs:
            keys = ('train_cfg.max_epochs', ) + interval_keys
            opts += ''.join(f' {key}={epochs}' for key in keys)
        return opts

    pretrain_opts = options(args.pretrain_epochs,
                            'default_hooks.checkpoint.interval')
    probe_opts = options(args.probe_epochs, 'train_cfg.val_interval',
                         'default_hooks.checkpoint.interval')
    cmds = [
        f'{DEMO_CMD} --work-dir {args.work_dir} --seed {args.seed}' +
        (f' --pretrain-epochs {args.pretrain_epochs}'
         if args.pretrain_epochs else '') +
        (f' --probe-epochs {args.probe_epochs}' if args.probe_epochs else '') +
        (f' --threads {args.threads}' if args.threads != 1 else '') +
        (' --smoke' if args.smoke else '')
    ]
    if args.smoke:
        cmds.append('# (--smoke shrinks the runs; the stages below are the '
                    'full-size ones)')
    for run, path in PRETRAIN_CONFIGS.items():
        cmds.append(f'python tools/train.py {config(path)} --work-dir '
                    f'{out(run.lower())} --cfg-options {pretrain_opts}')
    checkpoint = 'epoch_{}.pth'.format(
        _epochs(PRETRAIN_CONFIGS['TMA'], args.pretrain_epochs))
    for run in PRETRAIN_CONFIGS:
        for which, prefix in BACKBONE_PREFIXES.items():
            cmds.append(
                f'python tools/train.py {config(PROBE_CONFIG)} --work-dir '
                f'{out(f"probe_{run.lower()}_{which}")} --cfg-options '
                f'{probe_opts} model.backbone.init_cfg.checkpoint='
                f'{out(run.lower(), checkpoint)} '
                f'model.backbone.init_cfg.prefix={prefix}')
    cmds.append(f'python tools/train.py {config(PROBE_CONFIG)} --work-dir '
                f'{out("probe_random_init")} --cfg-options {probe_opts} '
                'model.backbone.init_cfg=None')
    runs = ' '.join(out(run.lower()) for run in PRETRAIN_CONFIGS)
    cmds.append(f'python tools/analysis/compare_runs.py {runs} --labels '
                f'{" ".join(PRETRAIN_CONFIGS)} --out '
                f'{out("comparison.png")}')
    return cmds


def write_summary(path: str, results: dict, args, commands: list) -> None:
    """Write ``summary.md``: the table, the set-up, wall time, commands."""
    pretrain_epochs = 1 if args.smoke else _epochs(PRETRAIN_CONFIGS['TMA'],
                                                   args.pretrain_epochs)
    probe_epochs = 1 if args.smoke else _epochs(PROBE_CONFIG,
                                                args.probe_epochs)
    timings = results['timings']
    label = 'Small-scale CPU result' + (
        ' (smoke run: a few iterations on a subset, not a result)'
        if args.smoke else '')
    lines = [
        '# BYOL on the 8x8 digits: TMA vs STS teachers',
        '',
        f'**{label}.** Linear-probe top-1 (%) of the frozen backbones on '
        f'the {"first 100" if args.smoke else "500"} test digits.',
        '',
        results['table'],
        '',
        '- Reference: the same probe of a randomly initialised backbone '
        f'(no pretraining): {100 * results["baseline_top1"]:.1f}.',
        '- Pretraining: BYOL, tiny CIFAR-style ResNet-18 (0.7 M '
        f'parameters), {pretrain_epochs} epoch(s) on the 1,297 training '
        f'digits upsampled to 24 px, seed {args.seed}. The two runs differ '
        'only in the teacher update (`SpatialTemporalSmoothingHook` with '
        'preserve_prob 0 vs 0.7, BYOL\'s cosine momentum 0.01 -> 0).',
        '- Linear probe: frozen backbone (weights and BN statistics), '
        'BatchNorm without affine parameters and a linear classifier '
        f'trained for {probe_epochs} epoch(s) on the training digits.',
        '- One seed, no error bars: small differences between cells are '
        'not evidence either way, and nothing here predicts ImageNet '
        'results.',
        f'- Wall time: {timings["total"]:.0f} s in all (pretraining '
        f'{timings["pretrain"]:.0f} s, linear probes '
        f'{timings["probe"]:.0f} s), {torch.get_num_threads()} CPU '
        f'thread(s), {datetime.now():%Y-%m-%d}.',
        '',
        '![training curves](comparison.png)',
        '',
        '## Commands',
        '',
        'The demo, then the same stages one by one:',
        '',
        '```bash',
        *commands,
        '```',
        '',
    ]
    with open(path, 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='BYOL on the 8x8 digits with TMA and STS teachers, '
        'then linear probes of the teacher and student backbones.')
    parser.add_argument(
        '--work-dir', default='work_dirs/demo/byol', help='output folder')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    parser.add_argument(
        '--pretrain-epochs', type=int, help='override the configs\' epochs')
    parser.add_argument(
        '--probe-epochs', type=int, help='override the probe\'s epochs')
    parser.add_argument(
        '--threads',
        type=int,
        default=1,
        help='PyTorch CPU threads (default 1: the same numbers on every '
        'run, and no slow-down when other processes share the cores)')
    parser.add_argument(
        '--log-level',
        default='WARNING',
        choices=['DEBUG', 'INFO', 'WARNING', 'ERROR'],
        help='log level of the runners (INFO prints MMEngine\'s full logs)')
    parser.add_argument(
        '--smoke',
        action='store_true',
        help='a few iterations on a few images, to test the pipeline')
    args = parser.parse_args(argv)
    for key in ('pretrain_epochs', 'probe_epochs', 'threads'):
        value = getattr(args, key)
        if value is not None and value < 1:
            parser.error(f'--{key.replace("_", "-")} must be >= 1, got '
                         f'{value}')
    return args


def main(argv=None) -> dict:
    """Run the demo.

    Args:
        argv (list[str], optional): Command-line arguments; None reads
            ``sys.argv``.

    Returns:
        dict: ``top1`` (run -> {'teacher', 'student'} -> top-1 accuracy in
        [0, 1]), ``baseline_top1`` (the probe of a random backbone),
        ``checkpoints`` and ``work_dirs`` (run -> path), ``summary`` and
        ``plot`` (paths), ``table`` (markdown) and ``timings`` (seconds).
    """
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run_demo(args)
    finally:
        torch.set_num_threads(threads)


def _run_demo(args) -> dict:
    work_dir = osp.abspath(args.work_dir)
    mkdir_or_exist(work_dir)
    logger = MMLogger.get_instance(
        experiment_name('byol_digits_demo'),
        log_file=osp.join(work_dir, 'demo.log'),
        log_level='INFO')
    probe_args = dict(
        seed=args.seed,
        smoke=args.smoke,
        epochs=args.probe_epochs,
        log_level=args.log_level)
    start = time.perf_counter()
    num_stages = len(PRETRAIN_CONFIGS) * (1 + len(BACKBONE_PREFIXES)) + 1
    stage = 0

    def announce(msg):
        nonlocal stage
        stage += 1
        print_log(f'[{stage}/{num_stages}] {msg}', logger=logger)

    checkpoints, run_dirs = {}, {}
    for run in PRETRAIN_CONFIGS:
        run_dirs[run] = osp.join(work_dir, run.lower())
        announce(f'BYOL pretraining with the {run} teacher '
                 f'-> {run_dirs[run]}')
        checkpoints[run] = pretrain(
            run,
            run_dirs[run],
            args.seed,
            smoke=args.smoke,
            epochs=args.pretrain_epochs,
            log_level=args.log_level)
    pretrain_time = time.perf_counter() - start

    top1 = {}
    for run, ckpt in checkpoints.items():
        top1[run] = {}
        for which, prefix in BACKBONE_PREFIXES.items():
            announce(f'linear probe of the {run} {which} backbone')
            top1[run][which] = linear_probe(
                ckpt, prefix, osp.join(work_dir,
                                       f'probe_{run.lower()}_{which}'),
                **probe_args)
            print_log(
                f'{run} {which}: top-1 {100 * top1[run][which]:.1f}',
                logger=logger)
    announce('linear probe of a random backbone (reference)')
    baseline = linear_probe(None, '', osp.join(work_dir, 'probe_random_init'),
                            **probe_args)
    print_log(f'random backbone: top-1 {100 * baseline:.1f}', logger=logger)
    probe_time = time.perf_counter() - start - pretrain_time

    plot = osp.join(work_dir, 'comparison.png')
    load_compare_runs().compare_runs(
        list(run_dirs.values()),
        labels=list(run_dirs),
        # The k-NN monitor's teacher and student accuracy share one plot.
        keys=['loss', 'knn/{teacher,student}/top1'] + [
            f'sts/{TEACHER_NAME}/{stat}'
            for stat in ('momentum', 'update_fraction', 'distance')
        ],
        ncols=5,
        out=plot,
        title='BYOL on the 8x8 digits: TMA vs STS teacher',
        logger=logger)
    results = dict(
        top1=top1,
        baseline_top1=baseline,
        checkpoints=checkpoints,
        work_dirs=run_dirs,
        summary=osp.join(work_dir, 'summary.md'),
        plot=plot,
        table=format_table(top1),
        timings=dict(
            pretrain=pretrain_time,
            probe=probe_time,
            total=time.perf_counter() - start))
    write_summary(results['summary'], results, args, stage_commands(args))
    print_log(
        'Linear-probe top-1 (%) on the test digits (small-scale CPU '
        f'result):\n{results["table"]}\nRandom backbone: '
        f'{100 * baseline:.1f}. Wall time {results["timings"]["total"]:.0f} '
        f's. Wrote {results["summary"]} and {plot}.',
        logger=logger)
    return results


if __name__ == '__main__':
    main()
