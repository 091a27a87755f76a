"""Demo: FixMatch on the 8x8 digits with 40 labels, TMA vs STS teacher.

Trains the original FixMatch (pseudo-labels from the model being trained,
configs/fixmatch/fixmatch_wrn10-1_*_digits-40labels.py) on scikit-learn's
handwritten digits (no download) with 4 labels per class and the rest of the
1,297 training images unlabeled, with a plain EMA teacher (TMA) and with a
Spatial-Temporal Smoothing teacher (STS, p = 0.5), over several seeds; the
teacher is the evaluated model. For a seed, the variants share everything
but the teacher: the labeled split, the initialisation, the data order and
augmentation (the seed sets all of them, and the STS masks).

Each run is a separate process, ``--jobs`` at a time (one per core), with one
thread, deterministic algorithms and pinned instruction sets
(``common.DETERMINISTIC_ENV``): what it prints depends neither on the number
of threads or cores nor on the load, nor, on x86-64 with the pinned stack,
on the CPU. A finished run leaves ``runs/<variant>_seed<seed>.json`` in the
work dir, which later calls with the same settings reuse (so an interrupted
demo resumes with the runs it had finished).

Reported: the test top-1 (500 held-out digits) of the teacher and of the
student, as the median of the last ``--last-n`` evaluations (FixMatch reports
the median of its last 20; here 500 steps, evaluated every 20, the last 10
cover steps 320-500), mean ± std over seeds, and the paired difference of
each variant's teacher to TMA's. Writes ``summary.md``, ``results.json`` and
``accuracy.png`` (test accuracy during training) in the work dir.

Example:
    python tools/demo/fixmatch_digits.py --work-dir work_dirs/demo/fixmatch
"""
import argparse
import hashlib
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from common import (DETERMINISTIC_ENV, REPO_ROOT,  # noqa: E402
                    deterministic_process, experiment_name)

CONFIG = osp.join(REPO_ROOT, 'configs', 'fixmatch',
                  '{algo}_wrn10-1_{teacher}_1xb16-mu3-1k_digits-40labels.py')
#: The variants, each a config differing from the others only in the
#: teacher (TMA, SE, STS) or in where pseudo-labels come from (MT-*).
VARIANTS = {
    'TMA': CONFIG.format(algo='fixmatch', teacher='tma'),
    'SE': CONFIG.format(algo='fixmatch', teacher='se'),
    'STS': CONFIG.format(algo='fixmatch', teacher='sts'),
    'MT-TMA': CONFIG.format(algo='fixmatch-mt', teacher='tma'),
    'MT-STS': CONFIG.format(algo='fixmatch-mt', teacher='sts'),
}
BASELINE = {'SE': 'TMA', 'STS': 'TMA', 'MT-STS': 'MT-TMA'}
TEACHER_KEY = 'teacher/accuracy/top1'
STUDENT_KEY = 'student/accuracy/top1'
#: Defaults of `make demo`.
SEEDS = [0, 1, 2]
#: Half the configs' 1,000 steps (the cosine schedule follows), so that the
#: 6 runs of `make demo` take under 10 minutes on 2 cores.
MAX_ITERS = 500
VAL_INTERVAL = 20
LAST_N = 10
DEMO_CMD = 'python tools/demo/fixmatch_digits.py'


# ----------------------------------------------------------------------
# One run (in its own process)
# ----------------------------------------------------------------------
def build_config(variant: str, work_dir: str, seed: int,
                 max_iters: Optional[int] = None,
                 val_interval: Optional[int] = None):
    """The digits config of ``variant`` for one seed.

    The seed sets the labeled split, the data order (the sampler's seed,
    which the base config fixes for exact resumes), the initialisation and
    augmentation (``randomness.seed``, deterministic algorithms) and the STS
    masks (the teacher takes the run's seed).
    """
    from mmengine.config import Config
    cfg = Config.fromfile(VARIANTS[variant], format_python_code=False)
    cfg.work_dir = work_dir
    cfg.experiment_name = experiment_name(f'fixmatch_digits_{variant}')
    cfg.randomness = dict(seed=seed, deterministic=True)
    cfg.train_dataloader.sampler.seed = seed
    for dataset in cfg.train_dataloader.dataset.datasets:
        if dataset.type == 'LabeledSubset':
            dataset.seed = seed
            dataset.index_file = osp.join(work_dir, 'labeled_indices.json')
    # Load the images in the training process: on one core a worker
    # process only adds inter-process copies.
    cfg.train_dataloader.num_workers = 0
    cfg.train_dataloader.persistent_workers = False
    max_iters = max_iters or cfg.train_cfg.max_iters
    cfg.train_cfg.max_iters = max_iters
    cfg.train_cfg.val_interval = val_interval or VAL_INTERVAL
    for scheduler in cfg.param_scheduler:
        scheduler['end'] = max_iters
    cfg.default_hooks.checkpoint.interval = max_iters
    cfg.default_hooks.logger.interval = 50
    # ERROR: MMEngine warns once per frozen teacher parameter.
    cfg.log_level = 'ERROR'
    return cfg


def train_one(variant: str, work_dir: str, seed: int,
              max_iters: Optional[int] = None,
              val_interval: Optional[int] = None) -> dict:
    """Train one variant in this process; return its evaluations."""
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    class ValAccuracyRecorder(Hook):
        priority = 'LOW'

        def __init__(self) -> None:
            self.history: List[dict] = []

        def after_val_epoch(self, runner, metrics=None) -> None:
            self.history.append(
                dict(
                    iter=runner.iter,
                    teacher=float(metrics[TEACHER_KEY]),
                    student=float(metrics[STUDENT_KEY])))

    deterministic_process()
    cfg = build_config(variant, work_dir, seed, max_iters, val_interval)
    start = time.time()
    runner = Runner.from_cfg(cfg)
    recorder = ValAccuracyRecorder()
    runner.register_hook(recorder)
    runner.train()
    import torch
    return dict(
        variant=variant,
        seed=seed,
        config=osp.relpath(VARIANTS[variant], REPO_ROOT),
        curve=recorder.history,
        # How the process computed, for the record and the tests.
        process=dict(
            torch_threads=torch.get_num_threads(),
            cpu_capability=torch.backends.cpu.get_cpu_capability(),
            deterministic=torch.are_deterministic_algorithms_enabled()),
        seconds=time.time() - start,
        cpu_seconds=_cpu_seconds())


def _cpu_seconds() -> float:
    """CPU time of this process so far: the wall time the run would take
    on an idle core."""
    import resource
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------
# Many runs, each in a deterministic single-threaded process
# ----------------------------------------------------------------------
def run_settings(variant: str, seed: int, args) -> dict:
    """What a run's result depends on; a saved result is reused only if
    these match (the config's and this script's text included)."""
    from mmengine.config import Config
    digest = hashlib.sha256(
        Config.fromfile(VARIANTS[variant],
                        format_python_code=False).pretty_text.encode())
    with open(__file__, 'rb') as f:
        digest.update(f.read())
    return dict(
        variant=variant,
        seed=seed,
        max_iters=args.max_iters,
        val_interval=args.val_interval,
        env=DETERMINISTIC_ENV,
        sources=digest.hexdigest())


def run_in_process(variant: str, seed: int, args) -> dict:
    """Run (or reuse) one (variant, seed) in its own process."""
    runs_dir = osp.join(args.work_dir, 'runs')
    name = f'{variant.lower()}_seed{seed}'
    result_file = osp.join(runs_dir, f'{name}.json')
    settings = run_settings(variant, seed, args)
    if osp.isfile(result_file):
        with open(result_file) as f:
            saved = json.load(f)
        if saved.get('settings') == settings:
            return dict(saved, reused=True)
    work_dir = osp.join(runs_dir, name)
    cmd = [
        sys.executable,
        osp.abspath(__file__), '--run-one', variant, '--seed',
        str(seed), '--work-dir', work_dir, '--val-interval',
        str(args.val_interval)
    ]
    cmd += ['--max-iters', str(args.max_iters)]
    os.makedirs(work_dir, exist_ok=True)
    env = dict(os.environ, **DETERMINISTIC_ENV)
    log_path = osp.join(runs_dir, f'{name}.log')
    with open(log_path, 'w') as log:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=log)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = ''.join(f.readlines()[-20:])
        raise RuntimeError(f'{variant} seed {seed} failed (exit code '
                           f'{proc.returncode}); end of {log_path}:\n{tail}')
    with open(osp.join(work_dir, 'result.json')) as f:
        result = json.load(f)
    result['settings'] = settings
    with open(result_file, 'w') as f:
        json.dump(result, f, indent=2)
    return dict(result, reused=False)


def median_last(curve: List[dict], who: str, last_n: int) -> float:
    """Median of the last ``last_n`` evaluations, FixMatch's reporting rule
    (``tools/analysis/compare_runs.py`` computes it from a scalar log)."""
    return statistics.median(p[who] for p in curve[-last_n:])


def summarize(runs: Dict[str, Dict[int, dict]], seeds: List[int],
              last_n: int) -> dict:
    """Per run and per variant: median of the last ``last_n`` evaluations
    of teacher and student; mean, sample std over seeds, and the paired
    difference of the teacher to the variant's baseline."""
    per_run = {
        v: {
            s: dict(
                teacher=median_last(runs[v][s]['curve'], 'teacher', last_n),
                student=median_last(runs[v][s]['curve'], 'student', last_n),
                final_teacher=runs[v][s]['curve'][-1]['teacher'],
                final_student=runs[v][s]['curve'][-1]['student'])
            for s in seeds
        }
        for v in runs
    }

    def stats(values):
        return dict(
            mean=statistics.mean(values),
            std=statistics.stdev(values) if len(values) > 1 else None)

    per_variant = {}
    for v, by_seed in per_run.items():
        row = {
            who: stats([by_seed[s][who] for s in seeds])
            for who in ('teacher', 'student')
        }
        base = BASELINE.get(v)
        if base in per_run:
            row['teacher_minus_baseline'] = stats([
                by_seed[s]['teacher'] - per_run[base][s]['teacher']
                for s in seeds
            ])
            row['baseline'] = base
        per_variant[v] = row
    return dict(per_run=per_run, per_variant=per_variant, seeds=seeds,
                last_n=last_n)


def _pm(stat: Optional[dict]) -> str:
    if stat is None:
        return '—'
    std = '—' if stat['std'] is None else f'{stat["std"]:.2f}'
    return f'{stat["mean"]:.2f} ± {std}'


def format_tables(summary: dict) -> str:
    """The per-seed table and the mean ± std table, in Markdown."""
    variants = list(summary['per_variant'])
    head = ' | '.join(f'{v} teacher | {v} student' for v in variants)
    lines = [f'| seed | {head} |',
             '| ---: |' + ' ---: |' * (2 * len(variants))]
    for s in summary['seeds']:
        cells = ' | '.join(
            f'{summary["per_run"][v][s]["teacher"]:.1f} | '
            f'{summary["per_run"][v][s]["student"]:.1f}' for v in variants)
        lines.append(f'| {s} | {cells} |')
    lines += [
        '', '| teacher | teacher top-1 (%) | student top-1 (%) | '
        'teacher minus baseline (paired) |', '| --- | ---: | ---: | ---: |'
    ]
    for v in variants:
        row = summary['per_variant'][v]
        diff = '—'
        if 'teacher_minus_baseline' in row:
            diff = f'{_pm(row["teacher_minus_baseline"])} ({row["baseline"]})'
        lines.append(f'| {v} | {_pm(row["teacher"])} | '
                     f'{_pm(row["student"])} | {diff} |')
    return '\n'.join(lines)


def plot_curves(runs: Dict[str, Dict[int, dict]], path: str) -> None:
    """Test accuracy of the teachers (left) and students (right)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for i, (variant, by_seed) in enumerate(runs.items()):
        for j, res in enumerate(by_seed.values()):
            iters = [p['iter'] for p in res['curve']]
            for ax, who in zip(axes, ('teacher', 'student')):
                ax.plot(iters, [p[who] for p in res['curve']],
                        color=f'C{i}', alpha=0.8, linewidth=1,
                        label=variant if j == 0 else None)
    for ax, who in zip(axes, ('teacher', 'student')):
        ax.set_title(f'{who}s, one line per seed')
        ax.set_xlabel('iteration')
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel('test top-1 (%)')
    fig.suptitle('FixMatch on digits, 40 labels (CPU, small scale)')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def header(args) -> str:
    return (f'FixMatch on digits, 40 labels, {args.max_iters} steps, seeds '
            f'{" ".join(map(str, args.seeds))}: test top-1 (%) on the 500 '
            f'held-out digits, median of the last {args.last_n} evaluations '
            f'(every {args.val_interval} steps)')


def command(args) -> str:
    parts = [DEMO_CMD, '--work-dir', args.work_dir, '--seeds',
             *map(str, args.seeds), '--variants', *args.variants]
    if args.max_iters != MAX_ITERS:
        parts += ['--max-iters', str(args.max_iters)]
    if args.val_interval != VAL_INTERVAL:
        parts += ['--val-interval', str(args.val_interval)]
    if args.last_n != LAST_N:
        parts += ['--last-n', str(args.last_n)]
    return ' '.join(parts)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='FixMatch on the digits: TMA vs STS teacher, several '
        'seeds, deterministic single-threaded runs')
    parser.add_argument('--work-dir', default='work_dirs/demo/fixmatch')
    parser.add_argument('--seeds', type=int, nargs='+', default=SEEDS)
    parser.add_argument(
        '--variants', nargs='+', default=['TMA', 'STS'],
        choices=list(VARIANTS), help='variants to compare')
    parser.add_argument(
        '--jobs', type=int, default=2,
        help='runs at a time, one core each (default 2)')
    parser.add_argument(
        '--max-iters', type=int, default=MAX_ITERS,
        help=f'steps (default {MAX_ITERS}; the configs have 1,000)')
    parser.add_argument('--val-interval', type=int, default=VAL_INTERVAL)
    parser.add_argument(
        '--last-n', type=int, default=LAST_N,
        help='report the median of the last N evaluations')
    parser.add_argument(
        '--run-one', choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument('--seed', type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.last_n < 1 or args.val_interval < 1:
        parser.error('--jobs, --last-n and --val-interval must be >= 1')
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.run_one:  # a child process: one run
        result = train_one(args.run_one, args.work_dir, args.seed,
                           args.max_iters, args.val_interval)
        with open(osp.join(args.work_dir, 'result.json'), 'w') as f:
            json.dump(result, f, indent=2)
        return result

    os.makedirs(osp.join(args.work_dir, 'runs'), exist_ok=True)
    start = time.time()
    tasks = [(v, s) for s in args.seeds for v in args.variants]
    print(f'{len(tasks)} runs ({", ".join(args.variants)} x seeds '
          f'{" ".join(map(str, args.seeds))}), {args.jobs} at a time, '
          f'each in one single-threaded process; logs in '
          f'{args.work_dir}/runs/', flush=True)
    runs = {v: {} for v in args.variants}
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [
            pool.submit(run_in_process, v, s, args) for v, s in tasks
        ]
        # Printed in a fixed order, whatever order the runs finish in.
        for i, ((variant, seed), future) in enumerate(zip(tasks, futures)):
            res = future.result()
            runs[variant][seed] = res
            last = res['curve'][-1]
            print(f'[{i + 1}/{len(tasks)}] {variant} seed {seed}: final '
                  f'teacher {last["teacher"]:.1f}, student '
                  f'{last["student"]:.1f}'
                  + (' (reused)' if res['reused'] else ''), flush=True)
    seconds = time.time() - start
    summary = summarize(runs, args.seeds, args.last_n)
    tables = format_tables(summary)
    print(f'\n{header(args)}:\n\n{tables}\n')
    with open(osp.join(args.work_dir, 'results.json'), 'w') as f:
        json.dump(dict(summary=summary, runs=runs), f, indent=2)
    plot_curves(runs, osp.join(args.work_dir, 'accuracy.png'))
    with open(osp.join(args.work_dir, 'summary.md'), 'w') as f:
        f.write(f'# FixMatch on scikit-learn digits\n\n{header(args)}. '
                'Small-scale CPU runs, not evidence about CIFAR.\n\n'
                f'{tables}\n\nReproduce (deterministic, single-threaded '
                f'runs):\n\n```bash\n{command(args)}\n```\n\n'
                '![test accuracy](accuracy.png)\n')
    print(f'Wrote {args.work_dir}/summary.md, results.json, accuracy.png '
          f'({seconds / 60:.1f} min)')
    return dict(summary=summary, runs=runs)


if __name__ == '__main__':
    main()
