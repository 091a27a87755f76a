"""FixMatch on the digits over several seeds: TMA, SE and STS teachers.

Runs ``tools/demo/fixmatch_digits.py`` once per (teacher, seed), ``--jobs``
runs at a time, each in its own process; for every seed the three teachers
share the labeled split, initialisation and data order. Prints and writes
(``seeds.md``, ``seeds.json``) the mean and standard deviation of the final
teacher and student test top-1, and the paired difference to TMA.

Example (the numbers in configs/fixmatch/README.md):
    python tools/demo/fixmatch_digits_seeds.py --seeds 0 1 2 3 4 \
        --work-dir work_dirs/fixmatch_digits_seeds --jobs 2
"""
import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

DEMO = osp.join(osp.dirname(osp.abspath(__file__)), 'fixmatch_digits.py')


def run_one(variant: str, seed: int, args) -> dict:
    """Run one (teacher, seed) in a subprocess; return its results."""
    work_dir = osp.join(args.work_dir, f'{variant.lower()}_seed{seed}')
    cmd = [
        sys.executable, DEMO, '--work-dir', work_dir, '--seed',
        str(seed), '--variants', variant
    ]
    if args.max_iters:
        cmd += ['--max-iters', str(args.max_iters)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    with open(osp.join(args.work_dir, f'{variant}_{seed}.log'), 'w') as log:
        subprocess.run(cmd, env=env, stdout=log, stderr=log, check=True)
    with open(osp.join(work_dir, 'results.json')) as f:
        return json.load(f)[variant]


def mean_std(values) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f'{statistics.mean(values):.2f} ± {std:.2f}'


def summarise(results: dict, seeds) -> str:
    """Markdown table: mean ± std over seeds, and paired gain over TMA."""
    lines = [
        '| teacher | teacher top-1 (%) | student top-1 (%) | '
        'teacher gain over TMA (paired) |', '| --- | --- | --- | --- |'
    ]
    for variant, runs in results.items():
        teacher = [runs[s]['teacher'] for s in seeds]
        student = [runs[s]['student'] for s in seeds]
        gain = '—'
        if variant != 'TMA' and 'TMA' in results:
            gain = mean_std([
                runs[s]['teacher'] - results['TMA'][s]['teacher']
                for s in seeds
            ])
        lines.append(f'| {variant} | {mean_std(teacher)} | '
                     f'{mean_std(student)} | {gain} |')
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--work-dir', default='work_dirs/fixmatch_digits_seeds')
    parser.add_argument(
        '--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4])
    parser.add_argument(
        '--variants', nargs='+', default=['TMA', 'SE', 'STS'])
    parser.add_argument('--max-iters', type=int)
    parser.add_argument(
        '--jobs', type=int, default=1, help='runs at the same time')
    parser.add_argument(
        '--threads', type=int, default=None,
        help='torch threads per run (default: cores / jobs)')
    args = parser.parse_args(argv)
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    start = time.time()
    tasks = [(v, s) for s in args.seeds for v in args.variants]
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(lambda t: run_one(*t, args), tasks))
    results = {v: {} for v in args.variants}
    for (variant, seed), res in zip(tasks, done):
        results[variant][seed] = res
    table = summarise(results, args.seeds)
    seconds = time.time() - start
    header = (f'FixMatch on digits, 40 labels, seeds {args.seeds}: final '
              'test top-1 (500 images), mean ± std over seeds '
              f'(small-scale CPU runs, {seconds / 60:.0f} min in all)')
    print(header)
    print(table)
    with open(osp.join(args.work_dir, 'seeds.md'), 'w') as f:
        f.write(f'{header}\n\n{table}\n\nCommand: python '
                f'tools/demo/fixmatch_digits_seeds.py '
                f'{" ".join(argv if argv is not None else sys.argv[1:])}\n')
    with open(osp.join(args.work_dir, 'seeds.json'), 'w') as f:
        json.dump(results, f, indent=2)
    return results


if __name__ == '__main__':
    main()
