"""Demo: FixMatch on the 8x8 digits with 40 labels, TMA vs STS teacher.

Trains FixMatch (configs/fixmatch/fixmatch_wrn10-1_*_digits-40labels.py) on
scikit-learn's handwritten digits (no download) with 4 labels per class and
the rest of the 1,297 training images unlabeled, once with a plain EMA
teacher (TMA) and once with a Spatial-Temporal Smoothing teacher (STS,
p = 0.5), from the same seed and labeled split; everything else is
identical. The teacher predicts the pseudo-labels. Prints the teacher and
student top-1 on the 500 held-out test digits and writes ``summary.md``,
``results.json`` and ``accuracy.png`` (test accuracy during training) in the
work dir.

Example:
    python tools/demo/fixmatch_digits.py --work-dir work_dirs/demo/fixmatch
"""
import argparse
import json
import os.path as osp
import sys
import time
from typing import Dict, List, Optional

import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner
from mmengine.utils import mkdir_or_exist

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from common import (REPO_ROOT, ProgressBarHook,  # noqa: E402
                    experiment_name)

CONFIG = osp.join(REPO_ROOT, 'configs', 'fixmatch',
                  'fixmatch_wrn10-1_{}_1xb16-mu3-1k_digits-40labels.py')
#: The teachers compared, each a config differing only in the teacher.
VARIANTS = {
    'TMA': CONFIG.format('tma'),
    'SE': CONFIG.format('se'),
    'STS': CONFIG.format('sts'),
}
TEACHER_KEY = 'teacher/accuracy/top1'
STUDENT_KEY = 'student/accuracy/top1'


class ValAccuracyRecorder(Hook):
    """Keep the teacher and student test accuracy of every validation."""

    priority = 'LOW'

    def __init__(self) -> None:
        self.history: List[dict] = []

    def after_val_epoch(self, runner, metrics: Optional[dict] = None) -> None:
        self.history.append(
            dict(
                iter=runner.iter,
                teacher=float(metrics[TEACHER_KEY]),
                student=float(metrics[STUDENT_KEY])))


def build_config(variant: str, work_dir: str, seed: int,
                 max_iters: Optional[int], val_interval: Optional[int],
                 smoke: bool) -> Config:
    """The digits config of ``variant`` for one seed.

    The seed fixes the network's initialisation, the data order and
    augmentation, the STS masks, and the labeled split.
    """
    cfg = Config.fromfile(VARIANTS[variant])
    cfg.work_dir = work_dir
    cfg.experiment_name = experiment_name(f'fixmatch_digits_{variant}')
    cfg.randomness = dict(seed=seed, deterministic=False)
    for dataset in cfg.train_dataloader.dataset.datasets:
        if dataset.type == 'LabeledSubset':
            dataset.seed = seed
            dataset.index_file = osp.join(work_dir, 'labeled_indices.json')
    if smoke:
        max_iters, val_interval = 4, 2
        cfg.train_dataloader.num_workers = 0
        cfg.train_dataloader.persistent_workers = False
    max_iters = max_iters or cfg.train_cfg.max_iters
    val_interval = val_interval or cfg.train_cfg.val_interval
    cfg.train_cfg.max_iters = max_iters
    cfg.train_cfg.val_interval = val_interval
    for scheduler in cfg.param_scheduler:
        scheduler['end'] = max_iters
    cfg.default_hooks.checkpoint.interval = max_iters
    cfg.default_hooks.logger.interval = max(1, val_interval)
    # ERROR: MMEngine's optimizer constructor warns once per (frozen)
    # teacher parameter, ~100 lines that would bury the progress bar.
    cfg.log_level = 'ERROR'
    return cfg


def train(variant: str, work_dir: str, seed: int = 0,
          max_iters: Optional[int] = None,
          val_interval: Optional[int] = None,
          smoke: bool = False) -> dict:
    """Train one variant; return its accuracy curve and final accuracies."""
    cfg = build_config(variant, work_dir, seed, max_iters, val_interval,
                       smoke)
    start = time.time()
    runner = Runner.from_cfg(cfg)
    recorder = ValAccuracyRecorder()
    runner.register_hook(recorder)
    runner.register_hook(ProgressBarHook())
    runner.train()
    final = recorder.history[-1]
    return dict(
        variant=variant,
        seed=seed,
        config=osp.relpath(VARIANTS[variant], REPO_ROOT),
        teacher=final['teacher'],
        student=final['student'],
        curve=recorder.history,
        seconds=time.time() - start)


def format_table(results: Dict[str, dict]) -> str:
    """A Markdown table of the final test top-1 of each run."""
    lines = [
        '| teacher | teacher top-1 (%) | student top-1 (%) |',
        '| --- | --- | --- |',
    ]
    for variant, res in results.items():
        lines.append(f'| {variant} | {res["teacher"]:.2f} | '
                     f'{res["student"]:.2f} |')
    return '\n'.join(lines)


def plot_curves(results: Dict[str, dict], path: str) -> None:
    """Test accuracy of teacher (solid) and student (dashed) over training."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (variant, res) in enumerate(results.items()):
        iters = [p['iter'] for p in res['curve']]
        color = f'C{i}'
        ax.plot(iters, [p['teacher'] for p in res['curve']], '-',
                color=color, label=f'{variant} teacher')
        ax.plot(iters, [p['student'] for p in res['curve']], '--',
                color=color, label=f'{variant} student')
    ax.set_xlabel('iteration')
    ax.set_ylabel('test top-1 (%)')
    ax.set_title('FixMatch on digits, 40 labels (CPU, small scale)')
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_summary(path: str, table: str, args, results: dict,
                  seconds: float) -> None:
    variants = ' '.join(results)
    lines = [
        '# FixMatch on scikit-learn digits: TMA vs STS teacher', '',
        'Small-scale CPU result: 40 labels (4 per class), 1,297 training '
        'and 500 test images, 16 x 16 px, WideResNet-10-1, '
        f'seed {args.seed}. Test top-1 after the last iteration:', '',
        table, '',
        f'Wall time: {seconds:.0f} s on {torch.get_num_threads()} CPU '
        'thread(s). One seed only: see configs/fixmatch/README.md for the '
        'mean and std over seeds.', '', 'Reproduce:', '', '```bash',
        f'python tools/demo/fixmatch_digits.py --work-dir {args.work_dir} '
        f'--seed {args.seed} --variants {variants}'
        + (f' --max-iters {args.max_iters}' if args.max_iters else ''),
        '```', '', '![test accuracy](accuracy.png)', ''
    ]
    with open(path, 'w') as f:
        f.write('\n'.join(lines))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='FixMatch on the digits, TMA vs STS teacher')
    parser.add_argument('--work-dir', default='work_dirs/demo/fixmatch')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--variants', nargs='+', default=['TMA', 'STS'],
        choices=sorted(VARIANTS), help='teachers to compare')
    parser.add_argument(
        '--max-iters', type=int, help='override the configs\' 1,000')
    parser.add_argument('--val-interval', type=int)
    parser.add_argument(
        '--smoke', action='store_true',
        help='a few iterations only, to check the pipeline')
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    mkdir_or_exist(args.work_dir)
    start = time.time()
    results = {}
    for variant in args.variants:
        print(f'FixMatch on digits, {variant} teacher, seed {args.seed}:',
              flush=True)
        results[variant] = train(variant,
                                 osp.join(args.work_dir, variant.lower()),
                                 args.seed, args.max_iters,
                                 args.val_interval, args.smoke)
    seconds = time.time() - start
    table = format_table(results)
    print('\nTest top-1 on the 500 held-out digits (small-scale CPU run):')
    print(table)
    with open(osp.join(args.work_dir, 'results.json'), 'w') as f:
        json.dump(results, f, indent=2)
    plot_curves(results, osp.join(args.work_dir, 'accuracy.png'))
    write_summary(osp.join(args.work_dir, 'summary.md'), table, args,
                  results, seconds)
    print(f'Wrote {args.work_dir}/summary.md, results.json, accuracy.png '
          f'({seconds:.0f} s)')
    return results


if __name__ == '__main__':
    main()
