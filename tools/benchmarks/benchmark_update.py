"""Time one teacher update of BYOL's ResNet-50 teacher, side by side.

The teacher is built as mmpretrain builds it, from
``mmpretrain::byol/byol_resnet50_16xb256-coslr-200e_in1k.py`` (ResNet-50
backbone + ``NonLinearNeck`` 2048-4096-256, in mmpretrain's ``CosineEMA``),
with BN instead of SyncBN so that it builds without a process group. Timed,
one ``update_parameters(student)`` each:

* mmpretrain ``CosineEMA`` (what BYOL uses today),
* MMEngine ``ExponentialMovingAverage``,
* one raw ``torch._foreach_lerp_`` over all parameters (a lower bound for
  any EMA),
* mmsts ``SpatialTemporalSmoothing``: TMA (``preserve_prob=0``), STS with
  ``'tensor'``, ``'channel'`` and ``'element'`` fragments, and SE
  (``momentum=1``), each with the default ``nonfinite='skip'`` guard and with
  ``nonfinite='none'``.

After them, apart (it touches the whole teacher and student), it times
reading an STS teacher's statistics (``pop_statistics()``), which a teacher
does every ``log_interval`` updates (50 by default).

The candidates are interleaved round-robin (a different one first in each
round), so that machine noise hits them all alike; the table gives the
median and inter-quartile range of each, and its ratio to MMEngine's EMA and
to ``CosineEMA``. The student is fixed; the teacher's step count advances at
every call, so the masks change. All mmsts candidates share the tensors of
the ``CosineEMA`` teacher, as :class:`SpatialTemporalSmoothingHook` does.

Example::

    python tools/benchmarks/benchmark_update.py --json work_dirs/bench.json
"""
import argparse
import copy
import datetime
import gc
import inspect
import json
import os
import platform
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from mmengine.hub import get_config
from mmengine.logging import MessageHub, print_log
from mmengine.model import ExponentialMovingAverage
from mmengine.utils import ProgressBar
from mmpretrain.registry import MODELS

import mmsts  # noqa: F401  (registers SpatialTemporalSmoothing)
from mmsts.models import SpatialTemporalSmoothing

BYOL_CONFIG = 'mmpretrain::byol/byol_resnet50_16xb256-coslr-200e_in1k.py'
#: The reference candidates of the ratio columns.
EMA, COSINE_EMA = 'MMEngine ExponentialMovingAverage', 'mmpretrain CosineEMA'
#: (candidate, at most this ratio to MMEngine's EMA); docs/benchmarks.md
#: gives their reasoning. They are checked for both guards.
TARGETS = (('STS tensor', 0.45), ('STS channel', 1.5), ('STS element', 5.0))
GUARDS = ('skip', 'none')


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; None reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(
        description='Time the teacher update of BYOL ResNet-50: mmpretrain '
        'CosineEMA, MMEngine EMA, a raw foreach lerp and mmsts STS/SE/TMA')
    parser.add_argument(
        '--repeat',
        type=int,
        default=40,
        help='timed rounds; each round times every candidate once')
    parser.add_argument(
        '--warmup',
        type=int,
        default=5,
        help='untimed rounds first (the first update of an averaged model '
        'copies the student)')
    parser.add_argument(
        '--device', default='cpu', help='device of the models, e.g. cuda:0')
    parser.add_argument(
        '--preserve-prob',
        type=float,
        default=0.7,
        help='p of the STS and SE candidates (the paper uses 0.7 for BYOL)')
    parser.add_argument(
        '--momentum',
        type=float,
        default=0.01,
        help='weight on the student (BYOL: 0.01, i.e. teacher weight 0.99)')
    parser.add_argument(
        '--threads',
        type=int,
        help='torch intra-op threads (torch.set_num_threads), which is also '
        "the number of threads of mmsts's CPU fine-granularity update; "
        'defaults to torch\'s default. 1 gives the least noisy comparison '
        'on a shared machine')
    parser.add_argument(
        '--json', metavar='OUT', help='also write the results to this file')
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f'--repeat must be >= 1, but got {args.repeat}')
    if args.warmup < 0:
        parser.error(f'--warmup must be >= 0, but got {args.warmup}')
    if not 0.0 <= args.preserve_prob <= 1.0:
        parser.error('--preserve-prob must be in [0, 1], but got '
                     f'{args.preserve_prob}')
    if not 0.0 < args.momentum < 1.0:
        parser.error(f'--momentum must be in (0, 1), but got {args.momentum}')
    if args.threads is not None and args.threads < 1:
        parser.error(f'--threads must be >= 1, but got {args.threads}')
    return args


def _use_bn(cfg):
    """Replace SyncBN by BN everywhere in a model config (in place)."""
    if isinstance(cfg, dict):
        if cfg.get('type') == 'SyncBN':
            cfg['type'] = 'BN'
        for value in cfg.values():
            _use_bn(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            _use_bn(value)
    return cfg


def build_byol(device: str) -> nn.Module:
    """mmpretrain's BYOL ResNet-50 (BN instead of SyncBN) on ``device``."""
    cfg = get_config(BYOL_CONFIG)
    model = MODELS.build(_use_bn(copy.deepcopy(cfg.model)))
    return model.to(device)


def build_candidates(byol: nn.Module, args) -> Dict[str, Callable[[], None]]:
    """The timed updates, by name; each call is one teacher update."""
    student = nn.Sequential(byol.backbone, byol.neck)
    cosine_ema = byol.target_net
    ema = ExponentialMovingAverage(student, momentum=args.momentum)
    teacher = [p.detach() for p in cosine_ema.module.parameters()]
    source = [p.detach() for p in student.parameters()]
    candidates = dict()
    candidates[COSINE_EMA] = lambda: cosine_ema.update_parameters(student)
    candidates[EMA] = lambda: ema.update_parameters(student)
    candidates['raw torch._foreach_lerp_'] = lambda: torch._foreach_lerp_(
        teacher, source, args.momentum)
    p = args.preserve_prob
    variants = [
        ('TMA (p=0)', dict(preserve_prob=0.0)),
        ('STS tensor', dict(preserve_prob=p, granularity='tensor')),
        ('STS channel', dict(preserve_prob=p, granularity='channel')),
        ('STS element', dict(preserve_prob=p, granularity='element')),
        ('SE (momentum=1)', dict(preserve_prob=p, momentum=1.0)),
    ]
    for name, kwargs in variants:
        # A constant momentum, not CosineEMA's schedule: SE copies.
        kwargs.update(momentum_schedule='constant')
        kwargs.setdefault('momentum', args.momentum)
        for guard in GUARDS:
            # Statistics are read by log_statistics() every log_interval
            # updates (a sync and a distance pass): not part of an update.
            sts = SpatialTemporalSmoothing.take_over(
                cosine_ema,
                name=f'{name}, {guard}',
                nonfinite=guard,
                log_interval=10**9,
                **kwargs)
            candidates[f'{name}, nonfinite={guard}'] = \
                lambda sts=sts: sts.update_parameters(student)
    return candidates


def time_statistics(byol: nn.Module, repeat: int,
                    device: torch.device) -> List[float]:
    """Times (ms) of reading an STS teacher's statistics
    (``pop_statistics()``: a host sync and the teacher-student distance),
    which a teacher does every ``log_interval`` updates. Timed apart from
    the updates, after them: a read touches the whole teacher and student
    and would change the cache state of the update that follows it."""
    student = nn.Sequential(byol.backbone, byol.neck)
    sts = SpatialTemporalSmoothing.take_over(
        byol.target_net, name='statistics', log_interval=10**9)
    sts.update_parameters(student)
    times, _ = run({'statistics': sts.pop_statistics}, repeat, 0, device)
    return times['statistics']


# Teachers are always updated without autograd (mmpretrain calls
# update_parameters under no_grad); timed with autograd on, the shared teacher
# tensors would join a graph that grows every round.
@torch.no_grad()
def run(candidates: Dict[str, Callable[[], None]], repeat: int, warmup: int,
        device: torch.device) -> Tuple[Dict[str, List[float]], ...]:
    """Time the candidates round-robin; return the wall-clock times and
    the CPU times of the process (all threads), in ms."""
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    names = list(candidates)
    times: Dict[str, List[float]] = {name: [] for name in names}
    cpu_times: Dict[str, List[float]] = {name: [] for name in names}
    progress = ProgressBar(warmup + repeat, file=sys.stderr)
    gc.disable()
    try:
        for round_ in range(warmup + repeat):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                sync()
                start, cpu_start = time.perf_counter(), time.process_time()
                candidates[name]()
                sync()
                elapsed = (time.perf_counter() - start) * 1e3
                cpu = (time.process_time() - cpu_start) * 1e3
                if round_ >= warmup:
                    times[name].append(elapsed)
                    cpu_times[name].append(cpu)
            gc.collect()
            progress.update()
    finally:
        gc.enable()
    sys.stderr.write('\n')
    return times, cpu_times


def summarize(times: Dict[str, List[float]],
              cpu_times: Dict[str, List[float]]) -> Dict[str, dict]:
    """Median, quartiles and ratios of the medians to the references."""
    medians = {name: float(np.median(t)) for name, t in times.items()}
    rows = {}
    for name, t in times.items():
        q1, q3 = np.percentile(t, [25, 75])
        rows[name] = dict(
            median_ms=medians[name],
            iqr_ms=float(q3 - q1),
            cpu_median_ms=float(np.median(cpu_times[name])),
            vs_mmengine_ema=medians[name] / medians[EMA],
            vs_cosine_ema=medians[name] / medians[COSINE_EMA],
            times_ms=t,
            cpu_times_ms=cpu_times[name])
    return rows


def check_targets(rows: Dict[str, dict]) -> List[dict]:
    """The targets of :data:`TARGETS`, for each non-finite guard."""
    results = []
    for name, limit in TARGETS:
        for guard in GUARDS:
            key = f'{name}, nonfinite={guard}'
            ratio = rows[key]['vs_mmengine_ema']
            results.append(
                dict(
                    candidate=key,
                    limit=limit,
                    ratio=ratio,
                    passed=ratio <= limit))
    return results


def machine() -> Dict[str, object]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(
                line.split(':', 1)[1].strip() for line in f
                if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    info = dict(
        date=datetime.datetime.now().isoformat(timespec='seconds'),
        cpu=cpu,
        nproc=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        torch=torch.__version__,
        numpy=np.__version__,
        python=platform.python_version())
    if hasattr(os, 'getloadavg'):  # other work on the machine skews timings
        info['load_average_1min'] = os.getloadavg()[0]
    if torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name()
    return info


def markdown(rows: Dict[str, dict], targets: List[dict]) -> str:
    """The results as Markdown tables."""
    lines = [
        '| update | median (ms) | IQR (ms) | CPU time, median (ms) | '
        'x MMEngine EMA | x CosineEMA |',
        '| --- | ---: | ---: | ---: | ---: | ---: |'
    ]
    for name, row in rows.items():
        lines.append(f'| {name} | {row["median_ms"]:.2f} | '
                     f'{row["iqr_ms"]:.2f} | {row["cpu_median_ms"]:.2f} | '
                     f'{row["vs_mmengine_ema"]:.2f} | '
                     f'{row["vs_cosine_ema"]:.2f} |')
    lines += [
        '', '| target (docs/benchmarks.md) | ratio to MMEngine EMA | '
        'result |', '| --- | ---: | --- |'
    ]
    for t in targets:
        lines.append(f'| {t["candidate"]} <= {t["limit"]:g}x | '
                     f'{t["ratio"]:.2f}x | '
                     f'{"PASS" if t["passed"] else "FAIL"} |')
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    """Run the benchmark; return what ``--json`` writes."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # CosineEMA reads the length of training from the current message hub.
    hub = MessageHub.get_instance('benchmark_update')
    hub.update_info('max_iters', 10**9)
    torch.manual_seed(0)
    with torch.no_grad():
        byol = build_byol(args.device)
        student = nn.Sequential(byol.backbone, byol.neck)
        # The teacher starts as a copy of the student; a fixed, slightly
        # different student keeps the update from being a no-op.
        byol.target_net.update_parameters(student)
        for param in student.parameters():
            param.add_(torch.randn_like(param), alpha=1e-3)
    params = list(student.parameters())
    numel = sum(p.numel() for p in params)
    info = machine()
    print_log(
        f'BYOL ResNet-50 teacher (backbone + neck): {numel / 1e6:.1f} M '
        f'parameters in {len(params)} tensors, on {device}; '
        f'{info["cpu"]}, {info["nproc"]} CPUs, torch {info["torch"]} '
        f'({info["torch_threads"]} threads), load average '
        f'{info.get("load_average_1min", float("nan")):.1f}',
        logger='current')
    candidates = build_candidates(byol, args)
    times, cpu_times = run(candidates, args.repeat, args.warmup, device)
    rows = summarize(times, cpu_times)
    targets = check_targets(rows)
    print(f'BYOL ResNet-50 teacher: {numel / 1e6:.1f} M parameters in '
          f'{len(params)} tensors; p = {args.preserve_prob}, momentum = '
          f'{args.momentum}; {args.repeat} rounds on {device}\n')
    print(markdown(rows, targets))
    stats_ms = float(np.median(time_statistics(byol, 10, device)))
    ratio = stats_ms / rows[EMA]['median_ms']
    interval = inspect.signature(
        SpatialTemporalSmoothing).parameters['log_interval'].default
    print(f'\nReading an STS teacher\'s statistics (every log_interval '
          f'updates, {interval} by default; median of 10): {stats_ms:.2f} '
          f'ms = {ratio:.2f}x an MMEngine EMA update, '
          f'{ratio / interval:.3f}x per update at log_interval={interval}')
    result = dict(
        machine=info,
        args=vars(args),
        parameters=numel,
        tensors=len(params),
        results=rows,
        targets=targets,
        statistics_read_ms=stats_ms)
    if args.json:
        dirname = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(dirname, exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
        print_log(f'Results written to {args.json}', logger='current')
    return result


if __name__ == '__main__':
    main()
