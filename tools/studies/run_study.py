"""The Fashion-MNIST studies of STS: FixMatch, BYOL and the paper's ablation.

Each study is one resumable command that runs two single-threaded training
processes at a time (``--jobs 2``, one per core) and writes, as runs finish,
``<root>/<study>.md`` (tables), ``<study>.json`` and ``<study>.png``.
docs/studies.md explains the settings and the sizing (~3 h for the three on
2 cores).

Examples::

    python tools/studies/run_study.py fixmatch --jobs 2   # make study-fixmatch
    python tools/studies/run_study.py byol --jobs 2       # make study-byol
    python tools/studies/run_study.py ablation --jobs 2   # make study-ablation
    python tools/studies/run_study.py kd --jobs 2         # make study-kd
    python tools/studies/run_study.py noisy_student --jobs 2
    python tools/studies/run_study.py fixmatch --report   # tables only
    python tools/studies/run_study.py fixmatch --dry-run  # list the commands

Run the same command again to resume an interrupted study: finished runs are
skipped, interrupted ones resume from their last checkpoint.
"""
import argparse
import os.path as osp
import sys
import time
from typing import Dict, Optional

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from runner import (TOOLS, Run, Scheduler, Step, Study,  # noqa: E402
                    run_dir, step_command, write_report)

DEFAULT_ROOT = 'work_dirs/studies'
SEEDS = (0, 1, 2)
FIXMATCH_DIR = 'configs/fixmatch'
BYOL_DIR = 'configs/byol'
#: Epochs of the BYOL pretraining configs (their checkpoint is
#: ``epoch_<N>.pth``); tests/test_configs/test_fashion_mnist_studies.py
#: checks that the configs agree.
BYOL_EPOCHS = 2

FIXMATCH_METRICS = {
    'teacher (the averaged model)': ('train', 'teacher/accuracy/top1'),
    'student': ('train', 'student/accuracy/top1'),
}


def seed_options(seed: int) -> Dict[str, object]:
    """Everything a seed varies in a FixMatch run: initialisation and
    augmentation (``randomness.seed``, which also seeds the STS masks), the
    data order (the sampler's own seed, fixed in the base config for exact
    resume) and the labeled split (``LabeledSubset.seed``)."""
    return {
        'randomness.seed': seed,
        'train_dataloader.sampler.seed': seed,
        'train_dataloader.dataset.datasets.0.seed': seed,
    }


def fixmatch_config(teacher: str, labels: int, mean_teacher: bool) -> str:
    prefix = 'fixmatch-mt' if mean_teacher else 'fixmatch'
    return osp.join(FIXMATCH_DIR, f'{prefix}_wrn10-1_{teacher}_1xb8-mu3-1k_'
                    f'fashion-mnist-{labels}labels.py')


def fixmatch_run(table: str, group: str, teacher: str, labels: int,
                 mean_teacher: bool, seed: int,
                 extra: Optional[Dict[str, object]] = None,
                 tag: Optional[str] = None) -> Run:
    """One FixMatch run; the name depends only on the settings, so equal
    runs of two studies share one directory."""
    prefix = 'fixmatch-mt' if mean_teacher else 'fixmatch'
    name = f'{prefix}_{labels}labels_{tag or teacher}_seed{seed}'
    options = seed_options(seed)
    options.update(extra or {})
    return Run(
        name=name,
        table=table,
        group=group,
        seed=seed,
        steps=[
            Step('train', fixmatch_config(teacher, labels, mean_teacher),
                 options)
        ],
        metrics=FIXMATCH_METRICS)


def fixmatch_study(seeds=SEEDS) -> Study:
    runs = []
    for labels in (40, 250):
        for seed in seeds:
            for teacher in ('tma', 'se', 'sts'):
                runs.append(
                    fixmatch_run(f'{labels} labels, original FixMatch',
                                 f'FixMatch, {teacher.upper()}', teacher,
                                 labels, False, seed))
            for teacher in ('tma', 'sts'):
                runs.append(
                    fixmatch_run(f'{labels} labels, mean teacher',
                                 f'FixMatch-MT, {teacher.upper()}', teacher,
                                 labels, True, seed))
    baselines = {}
    for labels in (40, 250):
        baselines[f'{labels} labels, original FixMatch'] = 'FixMatch, TMA'
        baselines[f'{labels} labels, mean teacher'] = 'FixMatch-MT, TMA'
    return Study(
        name='fixmatch',
        title='FixMatch on Fashion-MNIST: TMA vs SE vs STS teachers',
        runs=runs,
        baselines=baselines,
        last_n=5,
        command='make study-fixmatch',
        notes=(
            'WRN-10-1, 8 labeled + 3 x 8 unlabeled images per step, 1,000 '
            'steps, evaluation every 100 steps on the first 1,000 test '
            'images. Original FixMatch: pseudo-labels from the student, the '
            'averaged model (TMA / SE / STS) is only evaluated. Mean '
            'teacher (MT): pseudo-labels from the averaged model. STS: '
            'p = 0.5, teacher weight 0.99; SE: p = 0.5, momentum 1. Seed s '
            'sets the initialisation, augmentation, STS masks, data order '
            'and the labeled split; runs are paired by seed.'))


#: The ablation's setting: FixMatch with a mean teacher, 40 labels (the
#: teacher makes the pseudo-labels, so p and the granularity act on
#: training, not only on the evaluated model).
ABLATION_PS = (0.0, 0.3, 0.5, 0.7, 0.9)
ABLATION_GRANULARITIES = ('tensor', 'channel', 'element')


def ablation_study(seeds=SEEDS) -> Study:
    runs = []
    p_table = 'preserve probability p (tensor granularity)'
    g_table = 'granularity (p = 0.5)'
    for seed in seeds:
        for p in ABLATION_PS:
            if p == 0.0:  # TMA: the fixmatch study's run
                run = fixmatch_run(p_table, 'p = 0 (TMA)', 'tma', 40, True,
                                   seed)
            elif p == 0.5:  # STS: the fixmatch study's run
                run = fixmatch_run(p_table, 'p = 0.5', 'sts', 40, True, seed)
            else:
                run = fixmatch_run(
                    p_table, f'p = {p}', 'sts', 40, True, seed,
                    extra={'model.teacher.preserve_prob': p},
                    tag=f'sts-p{p}')
            runs.append(run)
        runs.append(
            fixmatch_run(g_table, 'TMA', 'tma', 40, True, seed))
        for granularity in ABLATION_GRANULARITIES:
            if granularity == 'tensor':
                run = fixmatch_run(g_table, 'tensor', 'sts', 40, True, seed)
            else:
                run = fixmatch_run(
                    g_table, granularity, 'sts', 40, True, seed,
                    extra={'model.teacher.granularity': granularity},
                    tag=f'sts-{granularity}')
            runs.append(run)
    return Study(
        name='ablation',
        title='STS ablation on Fashion-MNIST (FixMatch-MT, 40 labels)',
        runs=runs,
        baselines={p_table: 'p = 0 (TMA)', g_table: 'TMA'},
        last_n=5,
        command='make study-ablation',
        notes=('FixMatch with a mean teacher (pseudo-labels from the STS '
               'teacher), 40 labels, the settings of the fixmatch study, '
               'whose TMA and STS (p = 0.5, tensor) runs are reused. '
               "'channel' and 'element' are mmsts's extensions, not from "
               'the paper.'))


BYOL_METRICS = {
    'linear probe of the teacher backbone': ('probe-teacher',
                                             'accuracy/top1'),
    'linear probe of the student backbone': ('probe-student',
                                             'accuracy/top1'),
}
BYOL_PREFIXES = {
    'probe-teacher': 'target_net.module.0.',
    'probe-student': 'backbone.',
}


def byol_run(teacher: str, seed: int) -> Run:
    pretrain = osp.join(BYOL_DIR,
                        f'byol_resnet-tiny_fashion-mnist_{teacher}.py')
    probe = osp.join(BYOL_DIR, 'benchmarks',
                     'linear-probe_resnet-tiny_fashion-mnist.py')
    checkpoint = f'{{run_dir}}/pretrain/epoch_{BYOL_EPOCHS}.pth'
    steps = [
        Step('pretrain', pretrain, {
            'randomness.seed': seed,
            'train_dataloader.sampler.seed': seed
        })
    ]
    for name, prefix in BYOL_PREFIXES.items():
        steps.append(
            Step(
                name, probe, {
                    'randomness.seed': seed,
                    'train_dataloader.sampler.seed': seed,
                    'model.backbone.init_cfg.checkpoint': checkpoint,
                    'model.backbone.init_cfg.prefix': prefix,
                }))
    return Run(
        name=f'byol_{teacher}_seed{seed}',
        table='BYOL, ResNet-tiny',
        group=teacher.upper(),
        seed=seed,
        steps=steps,
        metrics=BYOL_METRICS)


def byol_study(seeds=SEEDS) -> Study:
    runs = [
        byol_run(teacher, seed) for seed in seeds
        for teacher in ('tma', 'sts', 'se')
    ]
    return Study(
        name='byol',
        title='BYOL on Fashion-MNIST: TMA vs STS (p = 0.7) vs SE',
        runs=runs,
        baselines={'BYOL, ResNet-tiny': 'TMA'},
        last_n=1,
        command='make study-byol',
        notes=('Linear probes (frozen backbone) of the teacher and of the '
               'student of each pretraining, on the first 5,000 test '
               'images; one evaluation at the end of each probe.'))


KD_DIR = 'configs/kd'
KD_TEACHER = osp.join(KD_DIR, 'wrn10-1_1xb64-1k_fashion-mnist.py')
KD_STEPS = 1000
#: Group -> (run name tag, config of the student, trained under strong
#: augmentation).
KD_STUDENTS = {
    'no KD': ('none', 'wrn10-1_1xb64-1k-strongaug_fashion-mnist.py'),
    'KD, fixed teacher':
    ('fixed', 'kd_wrn10-1_fixed-teacher_1xb64-1k-strongaug_fashion-mnist.py'),
    'KD, online TMA teacher':
    ('tma', 'kd_wrn10-1_tma_1xb64-1k-strongaug_fashion-mnist.py'),
    'KD, online STS teacher':
    ('sts', 'kd_wrn10-1_sts_1xb64-1k-strongaug_fashion-mnist.py'),
}


def kd_run(group: str, seed: int) -> Run:
    """One student of the KD study; the fixed-teacher run trains its
    teacher first (weak augmentation, same seed)."""
    options = {
        'randomness.seed': seed,
        'train_dataloader.sampler.seed': seed,
    }
    steps = []
    if 'fixed' in group:
        steps.append(Step('teacher', KD_TEACHER, dict(options)))
        options['model.teacher.checkpoint'] = \
            f'{{run_dir}}/teacher/iter_{KD_STEPS}.pth'
    tag, config = KD_STUDENTS[group]
    steps.append(Step('student', osp.join(KD_DIR, config), options))
    key = 'accuracy/top1' if tag == 'none' else 'student/accuracy/top1'
    return Run(
        name=f'kd_{tag}_seed{seed}',
        table='WRN-10-1 under strong augmentation',
        group=group,
        seed=seed,
        steps=steps,
        metrics={'student (the deployed model)': ('student', key)})


def kd_study(seeds=SEEDS) -> Study:
    return Study(
        name='kd',
        title='Knowledge distillation under strong augmentation on '
        'Fashion-MNIST: no KD vs fixed vs online TMA / STS teachers',
        runs=[kd_run(group, seed) for seed in seeds for group in KD_STUDENTS],
        baselines={'WRN-10-1 under strong augmentation': 'no KD'},
        last_n=5,
        command='make study-kd',
        notes=('WRN-10-1, 64 images per step, 1,000 steps, FixMatch\'s '
               'strong augmentation (RandAugment + Cutout) for every '
               'student; evaluation every 100 steps on the first 1,000 test '
               'images, median of the last 5. KD: the head\'s cross-entropy '
               'plus the KL (weight 1, T = 1) to the teacher\'s prediction '
               'on the same augmented images. Fixed teacher: the same '
               'network trained first with the weak augmentation (same '
               'seed). Online teachers: averages of the student, weight '
               '0.01 on the student per step, STS with p = 0.5, in '
               'evaluation mode.'))


NS_DIR = 'configs/noisy_student'
NS_TEACHER = osp.join(NS_DIR, 'wrn10-1_1xb64-1k_fashion-mnist-1000labels.py')
#: Steps of every training of the Noisy Student study: the configs' 1,000
#: (a first try with 300 measured the smoothed students while they still
#: lagged the raw ones by tens of points: with weight 0.01 per update, an
#: STS fragment updated at half of the steps keeps 22 % of its random
#: initialisation after 300 steps, 0.7 % after 1,000; docs/studies.md).
NS_STEPS = 1000
NS_SMOOTHINGS = {'STS': 'sts', 'EMA': 'tma', 'raw': 'raw'}


def ns_run(group: str, seed: int) -> Run:
    """Two rounds of Noisy Student with one smoothing. Round 0 (the
    teacher, trained on the labels only) does not depend on the smoothing:
    it is a shared step, trained once per seed."""
    options = {
        'randomness.seed': seed,
        'randomness.deterministic': True,
        'train_dataloader.sampler.seed': seed,
        'train_cfg.max_iters': NS_STEPS,
        'param_scheduler.0.end': NS_STEPS,
    }
    teacher = f'noisy-student_teacher_{NS_STEPS}steps_seed{seed}'
    tag = NS_SMOOTHINGS[group]
    config = osp.join(NS_DIR, f'noisy-student_wrn10-1_{tag}_1xb64-1k_'
                      'fashion-mnist-1000labels.py')
    return Run(
        name=f'noisy-student_{tag}_seed{seed}',
        table='WRN-10-1, 1,000 labels, 2 rounds',
        group=group,
        seed=seed,
        steps=[
            Step('teacher', NS_TEACHER, dict(options), shared=teacher),
            Step('rounds', config, dict(options), tool='noisy_student',
                 args=['--teacher-checkpoint',
                       f'{{shared_dir}}/{teacher}/iter_{NS_STEPS}.pth']),
        ],
        metrics={
            'round 0: the teacher (labels only)':
            ('teacher', 'accuracy/top1'),
            'round 1: the smoothed student (the next teacher)':
            ('rounds/round1', 'accuracy/top1'),
            'round 2: the smoothed student':
            ('rounds/round2', 'accuracy/top1'),
        })


def noisy_student_study(seeds=SEEDS) -> Study:
    # Seeds first, so that the two processes start with two different
    # (shared) teachers.
    return Study(
        name='noisy_student',
        title='Noisy Student on Fashion-MNIST: the student smoothed by STS, '
        'by an EMA, or not at all',
        runs=[ns_run(group, seed) for group in NS_SMOOTHINGS
              for seed in seeds],
        baselines={'WRN-10-1, 1,000 labels, 2 rounds': 'EMA'},
        last_n=3,
        command='make study-noisy-student',
        notes=(f'WRN-10-1; every training is {NS_STEPS} steps of 64 images '
               'with the cosine decay over them, evaluated every 100 '
               'steps on the first 1,000 test images (median of the last '
               '3). Round 0: the teacher on the 1,000 labeled images (100 '
               'per class) with the weak augmentation, the same for the '
               'three smoothings of a seed. Round r: the teacher of round '
               'r - 1 labels the 60,000 training images (soft labels, '
               'confidence >= 0.3) and a new student learns from 16 '
               'labeled + 48 pseudo-labeled images per step with '
               'RandAugment + Cutout and dropout 0.1; its STS (p = 0.5) or '
               'EMA average (weight 0.01 per step), or the raw student, is '
               'evaluated and becomes the next teacher. Seed s sets the '
               'initialisation, augmentation, STS masks and data order; '
               'the labeled split is fixed.'))


STUDIES = {
    'fixmatch': fixmatch_study,
    'byol': byol_study,
    'ablation': ablation_study,
    'kd': kd_study,
    'noisy_student': noisy_student_study,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Run a Fashion-MNIST study of STS (resumable).')
    parser.add_argument('study', choices=sorted(STUDIES))
    parser.add_argument(
        '--root',
        default=DEFAULT_ROOT,
        help='runs in <root>/runs, reports <root>/<study>.md|json|png '
        '(default: %(default)s)')
    parser.add_argument(
        '--jobs',
        type=int,
        default=2,
        help='single-threaded runs at a time (default: %(default)s)')
    parser.add_argument(
        '--seeds', type=int, nargs='+', default=list(SEEDS),
        help='seeds (default: %(default)s)')
    parser.add_argument(
        '--report', action='store_true',
        help='only aggregate the finished runs and write the report')
    parser.add_argument(
        '--dry-run', action='store_true',
        help='print the commands of the runs not finished yet')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    study = STUDIES[args.study](seeds=tuple(args.seeds))
    if args.dry_run:
        for run in study.runs:
            for step in run.steps:
                print(' '.join(
                    step_command(step, run_dir(args.root, run),
                                 ['python', osp.relpath(TOOLS[step.tool])],
                                 args.root)))
        return 0
    if args.report:
        write_report(study, args.root)
        print(open(osp.join(args.root, f'{study.name}.md')).read())
        return 0
    start = time.time()
    scheduler = Scheduler(args.root, jobs=args.jobs)
    print(f'{study.name}: {len(study.runs)} runs, {args.jobs} at a time, '
          f'in {args.root}/runs; report {args.root}/{study.name}.md')
    # The reports use the same (absolute) root as the scheduler.
    args.root = scheduler.root
    results = scheduler.run(
        [study],
        on_result=lambda s: write_report(s, args.root, time.time() - start))
    write_report(study, args.root, time.time() - start)
    failed = [n for n, r in results.items() if 'error' in r]
    print(open(osp.join(args.root, f'{study.name}.md')).read())
    if scheduler.stopped:
        print('Stopped (SIGTERM): run the same command again to resume.')
        return 143
    if failed:
        print(f'{len(failed)} runs failed: {failed}; run the command again '
              'to retry them.')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
