"""The GPU checks of ``tools/benchmarks/gpu_check.sh``.

Sub-commands:

* ``step-time``: BYOL ResNet-50
  (``configs/byol/byol_resnet50_sts_8xb32-coslr-200e_in1k.py``, BN
  instead of SyncBN, batch 32, one GPU) trained by MMEngine's runner on
  random in-memory images, without the STS hook (mmpretrain's CosineEMA
  teacher) and with it, alternately; reports the time per iteration of each
  and their ratio.
* ``sync``: ``torch.cuda.set_sync_debug_mode('error')`` around
  :meth:`mmsts.models.SpatialTemporalSmoothing.update_parameters` of a
  ResNet-50 teacher, for ``'tensor'``, ``'channel'`` and ``'element'``
  fragments and ``nonfinite='skip'`` / ``'raise'``, after a warm-up update
  (the first update copies the student and reads the step count once); also
  with a NaN in the student. Fails if any update synchronises.
* ``summary``: the figures of the three checks as Markdown, printed and
  written to ``<dir>/summary.md``.

Each prints ``skipped: no CUDA`` and exits with status 0 where CUDA is not
available.
"""
import argparse
import copy
import json
import os
import os.path as osp
import statistics
import sys
import time
from typing import List, Optional

import torch

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
BYOL_CONFIG = osp.join(REPO_ROOT, 'configs', 'byol',
                       'byol_resnet50_sts_8xb32-coslr-200e_in1k.py')
SKIPPED = 'skipped: no CUDA'


def _use_bn(cfg):
    """Replace SyncBN by BN everywhere in a config (in place)."""
    if isinstance(cfg, dict):
        if cfg.get('type') == 'SyncBN':
            cfg['type'] = 'BN'
        for value in cfg.values():
            _use_bn(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            _use_bn(value)
    return cfg


def _dump(obj, path: str) -> None:
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(obj, f, indent=2)


# ---------------------------------------------------------------------------
# step-time
# ---------------------------------------------------------------------------
def _register_synthetic_dataset():
    from mmengine.dataset import BaseDataset  # noqa: F401
    from mmpretrain.registry import DATASETS
    from mmpretrain.structures import DataSample

    if 'SyntheticTwoViews' in DATASETS.module_dict:
        return

    @DATASETS.register_module()
    class SyntheticTwoViews(torch.utils.data.Dataset):
        """Random uint8 images, two 224 x 224 views per sample, as BYOL's
        pipeline packs them; ``length`` samples drawn from ``pool``."""

        def __init__(self, length: int, pool: int = 64, size: int = 224):
            pool = min(pool, length)
            gen = torch.Generator().manual_seed(0)
            self.views = torch.randint(
                0, 256, (pool, 2, 3, size, size), generator=gen,
                dtype=torch.uint8)
            self.length = length
            self.metainfo = dict()

        def __len__(self):
            return self.length

        def __getitem__(self, index):
            v = self.views[index % len(self.views)]
            return dict(inputs=[v[0], v[1]], data_samples=DataSample())


class _StepTimer:
    """Hook timing iterations ``warmup+1 .. max_iters`` with a device sync
    at both ends only."""

    def __new__(cls, warmup):
        from mmengine.hooks import Hook

        class StepTimer(Hook):
            priority = 'VERY_LOW'

            def __init__(self):
                self.start = self.end = None
                self.timed = 0

            def after_train_iter(self, runner, batch_idx, data_batch=None,
                                 outputs=None):
                done = runner.iter + 1
                if done == warmup:
                    torch.cuda.synchronize()
                    self.start = time.perf_counter()
                elif done == runner.max_iters:
                    torch.cuda.synchronize()
                    self.end = time.perf_counter()
                    self.timed = done - warmup

        return StepTimer()


def _one_run(with_sts: bool, args, work_dir: str, tag: str) -> float:
    from mmengine.config import Config
    from mmengine.runner import Runner

    cfg = Config.fromfile(BYOL_CONFIG)
    hooks = copy.deepcopy(cfg.custom_hooks) if with_sts else []
    cfg.model = _use_bn(cfg.model)
    iters = args.warmup + args.iters
    batch = args.batch_size or cfg.train_dataloader.batch_size
    cfg.train_dataloader = dict(
        batch_size=batch,
        num_workers=2,
        persistent_workers=False,
        pin_memory=True,
        sampler=dict(type='DefaultSampler', shuffle=True),
        collate_fn=dict(type='default_collate'),
        dataset=dict(
            type='SyntheticTwoViews',
            length=batch * iters,
            size=args.image_size))
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters)
    cfg.param_scheduler = None
    cfg.custom_hooks = hooks
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=10)
    cfg.env_cfg = dict(cudnn_benchmark=True, dist_cfg=dict(backend='nccl'))
    cfg.log_level = 'WARNING'
    cfg.randomness = dict(seed=0)
    cfg.work_dir = work_dir
    cfg.experiment_name = tag
    runner = Runner.from_cfg(cfg)
    timer = _StepTimer(args.warmup)
    runner.register_hook(timer)
    runner.train()
    teacher = type(runner.model.target_net).__name__
    expected = 'SpatialTemporalSmoothing' if with_sts else 'CosineEMA'
    if teacher != expected:
        raise RuntimeError(f'teacher is {teacher}, expected {expected}')
    ms = (timer.end - timer.start) / timer.timed * 1e3
    print(f'{tag}: {teacher} teacher, {ms:.1f} ms per iteration '
          f'(batch {batch}, {timer.timed} iterations timed)')
    del runner
    torch.cuda.empty_cache()
    return ms


def step_time(args) -> dict:
    _register_synthetic_dataset()
    import mmsts  # noqa: F401

    times = {'without STS hook (CosineEMA)': [], 'with STS hook': []}
    for rep in range(args.repeats):
        for with_sts, key in ((False, 'without STS hook (CosineEMA)'),
                              (True, 'with STS hook')):
            tag = f'gpu_check_{"sts" if with_sts else "ema"}_{rep}'
            times[key].append(
                _one_run(with_sts, args,
                         osp.join(args.work_dir, 'step_time'), tag))
    base = statistics.median(times['without STS hook (CosineEMA)'])
    sts = statistics.median(times['with STS hook'])
    result = dict(
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        config=osp.relpath(BYOL_CONFIG, REPO_ROOT),
        warmup_iters=args.warmup,
        timed_iters=args.iters,
        batch_size=args.batch_size or 32,
        image_size=args.image_size,
        ms_per_iter=times,
        median_ms_without_sts=base,
        median_ms_with_sts=sts,
        ratio_with_over_without=sts / base)
    print(f'step time ratio with / without the STS hook: '
          f'{sts / base:.3f} ({sts:.1f} / {base:.1f} ms)')
    return result


# ---------------------------------------------------------------------------
# sync
# ---------------------------------------------------------------------------
def sync_check(args) -> dict:
    from mmpretrain.registry import MODELS

    import mmsts  # noqa: F401
    from mmsts.models import SpatialTemporalSmoothing

    torch.manual_seed(0)
    student = MODELS.build(dict(type='ResNet', depth=args.depth)).cuda()
    cases = []
    for granularity in ('tensor', 'channel', 'element'):
        for nonfinite in ('skip', 'raise'):
            for nan in (False, True):
                cases.append(dict(
                    granularity=granularity, nonfinite=nonfinite,
                    nan_in_student=nan))
    results = []
    first = next(student.parameters())
    clean = first.detach().clone()
    for case in cases:
        teacher = SpatialTemporalSmoothing(
            student,
            preserve_prob=0.7,
            momentum=0.01,
            momentum_schedule='cosine',
            end_momentum=0.0,
            granularity=case['granularity'],
            nonfinite=case['nonfinite'],
            total_steps=1000)
        with torch.no_grad():
            first.copy_(clean)
            teacher.update_parameters(student)  # warm-up: copies
            teacher.update_parameters(student)  # first averaging update
            if case['nan_in_student']:
                first.view(-1)[0] = float('nan')
        torch.cuda.synchronize()
        error = update_raised = None
        torch.cuda.set_sync_debug_mode('error')
        try:
            with torch.no_grad():
                for _ in range(args.updates):
                    teacher.update_parameters(student)
        except Exception as err:
            if isinstance(err, RuntimeError) and 'synchroniz' in str(err):
                error = str(err).splitlines()[0]
            else:  # e.g. NonFiniteStudentError with nonfinite='raise'
                update_raised = type(err).__name__
        finally:
            torch.cuda.set_sync_debug_mode('default')
        torch.cuda.synchronize()
        # Outside the checked region: statistics need one sync.
        try:
            stats = teacher.pop_statistics()
            raised = None
        except Exception as err:  # NonFiniteStudentError with 'raise'
            stats, raised = {}, type(err).__name__
        finite = all(
            bool(torch.isfinite(p).all()) for p in teacher.module.parameters())
        row = dict(
            case,
            synchronised=error is not None,
            error=error,
            teacher_finite=finite,
            statistics={k: float(v) for k, v in stats.items()},
            update_raised=update_raised,
            pop_statistics_raised=raised)
        results.append(row)
        print(f'{case}: {"SYNC: " + error if error else "no sync"}; '
              f'teacher finite: {finite}'
              + (f'; update raised {update_raised}' if update_raised else '')
              + (f'; pop_statistics raised {raised}' if raised else ''))
    with torch.no_grad():
        first.copy_(clean)
    # A sync, a NaN let into the teacher, or an update that raised although
    # the student was finite.
    failed = [
        r for r in results if r['synchronised'] or not r['teacher_finite']
        or (r['update_raised'] and not r['nan_in_student'])
    ]
    return dict(
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        updates_per_case=args.updates,
        cases=results,
        passed=not failed)


# ---------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------
def _load(path: str) -> Optional[dict]:
    if not osp.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def summary(args) -> str:
    lines = ['# GPU check', '']
    bench = _load(osp.join(args.dir, 'benchmark_update.json'))
    if bench:
        lines += [
            f'## Teacher update (tools/benchmarks/benchmark_update.py, '
            f'{bench["machine"].get("gpu", "?")})', '',
            '| update | median (ms) | x MMEngine EMA | x CosineEMA |',
            '| --- | ---: | ---: | ---: |'
        ]
        for name, row in bench['results'].items():
            lines.append(f'| {name} | {row["median_ms"]:.3f} | '
                         f'{row["vs_mmengine_ema"]:.2f} | '
                         f'{row["vs_cosine_ema"]:.2f} |')
        lines.append('')
    else:
        lines += ['## Teacher update: no results', '']
    step = _load(osp.join(args.dir, 'step_time.json'))
    if step:
        lines += [
            f'## BYOL ResNet-50 step time ({step["device"]}, batch '
            f'{step["batch_size"]}, {step["image_size"]} px, '
            f'{step["timed_iters"]} iterations after {step["warmup_iters"]})',
            '', '| run | ms per iteration (each repeat) | median |',
            '| --- | --- | ---: |'
        ]
        for key, values in step['ms_per_iter'].items():
            lines.append(f'| {key} | {", ".join(f"{v:.1f}" for v in values)}'
                         f' | {statistics.median(values):.1f} |')
        lines += ['', 'ratio with / without the STS hook: '
                  f'**{step["ratio_with_over_without"]:.3f}**', '']
    else:
        lines += ['## Step time: no results', '']
    sync = _load(osp.join(args.dir, 'sync.json'))
    if sync:
        lines += [
            f'## No host-device sync in update_parameters '
            f'({"PASS" if sync["passed"] else "FAIL"})', '',
            '| granularity | nonfinite | NaN in student | synchronised | '
            'teacher finite | raised |',
            '| --- | --- | --- | --- | --- | --- |'
        ]
        for r in sync['cases']:
            raised = r.get('update_raised') or r.get('pop_statistics_raised')
            where = 'update' if r.get('update_raised') else 'statistics'
            lines.append(f'| {r["granularity"]} | {r["nonfinite"]} | '
                         f'{r["nan_in_student"]} | '
                         f'{r["error"] or "no"} | {r["teacher_finite"]} | '
                         f'{f"{raised} ({where})" if raised else "—"} |')
    else:
        lines += ['## Sync check: no results']
    text = '\n'.join(lines) + '\n'
    with open(osp.join(args.dir, 'summary.md'), 'w') as f:
        f.write(text)
    print(text)
    return text


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('step-time', help='BYOL step time with/without STS')
    p.add_argument('--out', required=True, help='JSON file to write')
    p.add_argument('--work-dir', default='work_dirs/gpu_check')
    p.add_argument('--warmup', type=int, default=15)
    p.add_argument('--iters', type=int, default=40)
    p.add_argument('--repeats', type=int, default=2)
    p.add_argument(
        '--batch-size', type=int, help="default: the config's (32)")
    p.add_argument('--image-size', type=int, default=224)
    p = sub.add_parser('sync', help='no sync in update_parameters')
    p.add_argument('--out', required=True, help='JSON file to write')
    p.add_argument('--updates', type=int, default=3)
    p.add_argument('--depth', type=int, default=50, help='ResNet depth')
    p = sub.add_parser('summary', help='print and write summary.md')
    p.add_argument('--dir', required=True)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.command == 'summary':
        summary(args)
        return 0
    if not torch.cuda.is_available():
        print(f'gpu_check.py {args.command}: {SKIPPED}')
        return 0
    if args.command == 'step-time':
        _dump(step_time(args), args.out)
        return 0
    result = sync_check(args)
    _dump(result, args.out)
    if not result['passed']:
        print('FAIL: update_parameters synchronised host and device, or '
              'let a NaN into the teacher; see ' + args.out)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
