"""Plot the training curves of several MMEngine runs side by side, and
report their evaluations as FixMatch does.

mmpretrain's ``tools/analysis_tools/analyze_logs.py`` plots the keys of one
log file at a time (``sts/*`` included). This tool does what it does not: it
reads whole work dirs, joining the parts of a resumed run (each ``--resume``
writes a new ``<timestamp>/`` dir), draws several runs and their
evaluations against the training step on one figure, a teacher's and a
student's evaluation (``TeacherStudentValLoop``) on one plot, and reports
the median of the last N evaluations with paired differences.

Reads the JSON scalar logs that MMEngine's ``LocalVisBackend`` writes in
every run, ``<work_dir>/<timestamp>/vis_data/scalars.json`` (one JSON object
per line), and draws one subplot per key with one line per run. By default
the keys are the loss; for every teacher found in the logs, the statistics
written by :class:`mmsts.engine.hooks.SpatialTemporalSmoothingHook`:
``sts/<teacher>/momentum``, ``sts/<teacher>/update_fraction`` (fraction of
fragments updated) and ``sts/<teacher>/distance`` (relative teacher-student
distance); and the evaluations, ``val/<metric>`` (``val/{teacher,student}/
<metric>``: both in one plot), at the training step they followed.

The evaluations (the validation records of the same log, e.g.
``accuracy/top1``) are summarised per run by the **median of the last N
evaluations** (default 20, FixMatch's reporting rule), next to the final
value; the best value is given only as a convenience (it is selected on the
evaluation set, so it is optimistic). With ``--groups`` the runs of one
method over several seeds or labeled splits are aggregated as mean ± std
(sample standard deviation), and ``--baseline`` adds the paired difference
to a baseline group: the i-th run of each group is paired with the i-th run
of the baseline, so list the runs of every group in the same seed/split
order.

Example:
    python tools/analysis/compare_runs.py \\
        work_dirs/byol_tma work_dirs/byol_sts --labels TMA STS \\
        --out compare.png --keys loss sts/target_net/update_fraction

    python tools/analysis/compare_runs.py \\
        work_dirs/tma_s0 work_dirs/tma_s1 work_dirs/sts_s0 work_dirs/sts_s1 \\
        --groups TMA TMA STS STS --baseline TMA --metric accuracy/top1 \\
        --last-n 20 --summary-out summary.json --no-plot
"""
import argparse
import glob
import json
import logging
import math
import os.path as osp
import re
import statistics
from typing import Dict, List, Optional, Sequence, Union

from mmengine.fileio import list_from_file
from mmengine.logging import print_log

#: Statistics of SpatialTemporalSmoothingHook plotted by default, in order.
STS_STATS = ('momentum', 'update_fraction', 'distance')
#: Keys of a training record that are bookkeeping, not curves.
_NOT_CURVES = ('epoch', 'iter', 'step')
#: Keys of a validation record that are timings, not evaluations.
_NOT_METRICS = ('data_time', 'time')
#: FixMatch reports the median of the last 20 evaluations.
DEFAULT_LAST_N = 20
DEFAULT_METRIC = 'accuracy/top1'


def find_scalars_file(work_dir: str) -> str:
    """The ``scalars.json`` of the latest run in ``work_dir``.

    MMEngine writes each run to ``<work_dir>/<timestamp>/``; timestamps
    (``YYYYmmdd_HHMMSS``) sort in time order, so the last one wins.

    Args:
        work_dir (str): A run's work dir, a timestamp dir in it, or the path
            of a ``scalars.json`` file.

    Returns:
        str: The path of the scalar log.
    """
    if osp.isfile(work_dir):
        return work_dir
    for pattern in ('vis_data/scalars.json', '*/vis_data/scalars.json'):
        found = sorted(glob.glob(osp.join(work_dir, pattern)))
        if found:
            return found[-1]
    raise FileNotFoundError(
        f'No MMEngine scalar log (<timestamp>/vis_data/scalars.json) in '
        f'{work_dir!r}: was it written by a run with LocalVisBackend?')


def load_train_scalars(path: str) -> List[dict]:
    """The training records of an MMEngine scalar log.

    Validation records (written once per validation, with the epoch as
    ``step``) are left out: they lack the training ``iter`` and would mix
    two x axes.

    Args:
        path (str): A ``scalars.json`` file, one JSON object per line.

    Returns:
        list[dict]: One dict per logged training iteration, in order; keys
        written with ``log_with_hierarchy=True`` lose their ``train/``
        prefix.
    """
    return [
        r for r in _read_records(path, 'train/')
        if 'iter' in r and 'step' in r
    ]


def load_val_scalars(path: str) -> List[dict]:
    """The validation records of an MMEngine scalar log.

    ``LoggerHook`` writes one per validation, with the epoch (epoch-based
    loops) or the iteration (iteration-based loops) as ``step`` and without
    the training ``iter``.

    Args:
        path (str): A ``scalars.json`` file, one JSON object per line.

    Returns:
        list[dict]: One dict per evaluation, in order; keys written with
        ``log_with_hierarchy=True`` lose their ``val/`` prefix.
    """
    return [
        r for r in _read_records(path, 'val/')
        if 'step' in r and 'iter' not in r
    ]


def _read_records(path: str, prefix: str) -> List[dict]:
    records = []
    for line_no, line in enumerate(list_from_file(path), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(
                f'{path}:{line_no} is not a JSON object: {e}') from None
        if not isinstance(record, dict):
            raise ValueError(f'{path}:{line_no} is not a JSON object')
        records.append({
            (k[len(prefix):] if k.startswith(prefix) else k): v
            for k, v in record.items()
        })
    return records


def find_scalars_files(work_dir: str) -> List[str]:
    """The ``scalars.json`` of every run in ``work_dir``, oldest first.

    Args:
        work_dir (str): A run's work dir, a timestamp dir in it, or the path
            of a ``scalars.json`` file (then only that one).

    Returns:
        list[str]: The paths of the scalar logs.
    """
    if osp.isfile(work_dir):
        return [work_dir]
    for pattern in ('vis_data/scalars.json', '*/vis_data/scalars.json'):
        found = sorted(glob.glob(osp.join(work_dir, pattern)))
        if found:
            return found
    return [find_scalars_file(work_dir)]  # raises FileNotFoundError


def load_run(work_dir: str,
             logger: Union[str, logging.Logger] = 'current') -> dict:
    """The training and validation records of a run, its resumed parts
    joined.

    A ``--resume`` starts a new timestamp dir whose first training step
    continues the interrupted run; a run started again from scratch starts
    at step 1. Each part therefore replaces what the parts before it logged
    from its first training step on: a resumed run is joined to the part it
    resumed, with the steps logged after the resumed checkpoint (and the
    evaluations made after them) dropped, and a restart replaces the whole
    history. A part without training records (stopped before its first log
    line) changes nothing.

    Args:
        work_dir (str): A run's work dir, a timestamp dir in it, or the path
            of a ``scalars.json`` file.
        logger (str | logging.Logger): Where the note about skipped parts
            goes. Defaults to ``'current'``.

    Returns:
        dict: ``train`` (as :func:`load_train_scalars`), ``val`` (as
        :func:`load_val_scalars`, each with ``train_step``, the training
        step it followed) and ``parts`` (the scalar logs used).
    """
    train: List[dict] = []
    val: List[dict] = []
    parts = []
    for path in find_scalars_files(work_dir):
        part_train, part_val = [], []
        last_step = 0
        for record in _read_records(path, ''):
            if 'iter' in record and 'step' in record:
                part_train.append(_strip(record, 'train/'))
                last_step = record['step']
            elif 'step' in record:
                part_val.append(
                    dict(_strip(record, 'val/'), train_step=last_step))
        if not part_train:
            if part_val:
                print_log(
                    f'compare_runs: {path} has evaluations but no training '
                    'record; skipped.',
                    logger=logger,
                    level=logging.WARNING)
            continue
        start = part_train[0]['step']
        train = [r for r in train if r['step'] < start] + part_train
        val = [r for r in val if r['train_step'] < start] + part_val
        parts.append(path)
    if not parts:
        raise ValueError(f'No training records in {work_dir!r}')
    return dict(train=train, val=val, parts=parts)


def _strip(record: dict, prefix: str) -> dict:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v
            for k, v in record.items()}


def summarize_evaluations(records: List[dict],
                          metric: str = DEFAULT_METRIC,
                          last_n: int = DEFAULT_LAST_N) -> dict:
    """Summarise one run's evaluations of ``metric``.

    Args:
        records (list[dict]): Validation records, as read by
            :func:`load_val_scalars`.
        metric (str): The evaluated key. Defaults to ``'accuracy/top1'``.
        last_n (int): How many of the last evaluations the median is taken
            over (all of them if the run has fewer). Defaults to 20.

    Returns:
        dict: ``median_last`` (median of the last ``last_n`` evaluations,
        the value to report), ``last_n_used`` (how many there were),
        ``final`` and ``final_step`` (the last evaluation), ``best`` and
        ``best_step`` (the highest value, a convenience only: it is chosen
        on the evaluation set) and ``evaluations`` (their number).

    Raises:
        KeyError: If no record has ``metric``.
    """
    if not isinstance(last_n, int) or last_n < 1:
        raise ValueError(f'`last_n` must be a positive int, got {last_n!r}')
    points = [(r['step'], float(r[metric])) for r in records if metric in r]
    if not points:
        keys = sorted({k for r in records for k in r} - {'step'})
        raise KeyError(f'no evaluation of {metric!r}; the validation records '
                       f'have {keys}')
    tail = [v for _, v in points[-last_n:]]
    best_step, best = max(points, key=lambda p: p[1])
    return dict(
        metric=metric,
        median_last=statistics.median(tail),
        last_n=last_n,
        last_n_used=len(tail),
        final=points[-1][1],
        final_step=points[-1][0],
        best=best,
        best_step=best_step,
        evaluations=len(points))


def _mean_std(values: Sequence[float]) -> dict:
    return dict(
        n=len(values),
        mean=statistics.mean(values),
        std=statistics.stdev(values) if len(values) > 1 else None,
        values=list(values))


def aggregate_groups(summaries: Dict[str, List[dict]],
                     baseline: Optional[str] = None) -> Dict[str, dict]:
    """Mean ± std over the runs (seeds or labeled splits) of each group,
    and the paired difference to a baseline group.

    Args:
        summaries (dict[str, list[dict]]): Group -> summaries of its runs
            (:func:`summarize_evaluations`), in seed/split order.
        baseline (str, optional): The group the others are compared with;
            its i-th run is paired with the i-th run of every other group.
            Defaults to None (no differences).

    Returns:
        dict[str, dict]: Group -> ``median_last``, ``final`` and ``best``,
        each ``dict(n, mean, std, values)`` (``std`` is the sample standard
        deviation, None for one run), and, with a baseline, ``diff_median_
        last`` and ``diff_final``: the same statistics of the per-pair
        differences (group - baseline).

    Raises:
        ValueError: If ``baseline`` is not a group, or a group has another
            number of runs than the baseline.
    """
    if baseline is not None and baseline not in summaries:
        raise ValueError(f'baseline={baseline!r} is not one of the groups '
                         f'{list(summaries)}')
    out = {}
    for group, runs in summaries.items():
        if not runs:
            raise ValueError(f'group {group!r} has no runs')
        row = {
            stat: _mean_std([r[stat] for r in runs])
            for stat in ('median_last', 'final', 'best')
        }
        if baseline is not None and group != baseline:
            base = summaries[baseline]
            if len(base) != len(runs):
                raise ValueError(
                    f'cannot pair group {group!r} ({len(runs)} runs) with '
                    f'baseline {baseline!r} ({len(base)} runs): give both '
                    'the same seeds/splits, in the same order')
            for stat in ('median_last', 'final'):
                row[f'diff_{stat}'] = _mean_std(
                    [r[stat] - b[stat] for r, b in zip(runs, base)])
        out[group] = row
    return out


def _pm(stats: Optional[dict]) -> str:
    if stats is None:
        return '—'
    std = '—' if stats['std'] is None else f'{stats["std"]:.2f}'
    return f'{stats["mean"]:.2f} ± {std}'


def summary_markdown(runs: Dict[str, dict],
                     groups: Optional[Dict[str, dict]] = None,
                     baseline: Optional[str] = None) -> str:
    """The summaries as Markdown tables: one row per run, then one per
    group (mean ± std over its runs)."""
    any_run = next(iter(runs.values()))
    metric, last_n = any_run['metric'], any_run['last_n']
    lines = [
        f'| run | median of last {last_n} {metric} | final | '
        'best (convenience only) | evaluations |',
        '| --- | ---: | ---: | ---: | ---: |'
    ]
    for label, r in runs.items():
        used = '' if r['last_n_used'] == last_n else \
            f' (only {r["last_n_used"]})'
        lines.append(f'| {label} | {r["median_last"]:.2f}{used} | '
                     f'{r["final"]:.2f} | {r["best"]:.2f} '
                     f'(step {r["best_step"]}) | {r["evaluations"]} |')
    if groups:
        lines += [
            '',
            f'| group | runs | median of last {last_n} {metric}, mean ± std '
            f'| final, mean ± std | paired difference to {baseline or "—"} '
            '(median of last, final) |', '| --- | ---: | ---: | ---: | --- |'
        ]
        for group, g in groups.items():
            diff = '—'
            if 'diff_median_last' in g:
                diff = (f'{_pm(g["diff_median_last"])}, '
                        f'{_pm(g["diff_final"])}')
            lines.append(f'| {group} | {g["median_last"]["n"]} | '
                         f'{_pm(g["median_last"])} | {_pm(g["final"])} | '
                         f'{diff} |')
    return '\n'.join(lines)


def summarize_runs(work_dirs: Sequence[str],
                   labels: Optional[Sequence[str]] = None,
                   groups: Optional[Sequence[str]] = None,
                   baseline: Optional[str] = None,
                   metric: str = DEFAULT_METRIC,
                   last_n: int = DEFAULT_LAST_N) -> dict:
    """Report the evaluations of the run in each work dir (resumed parts
    joined, see :func:`load_run`).

    Args:
        work_dirs (Sequence[str]): Work dirs (or timestamp dirs, or
            ``scalars.json`` files) of the runs.
        labels (Sequence[str], optional): One label per run; None uses the
            work dirs' base names. Defaults to None.
        groups (Sequence[str], optional): One group (method) per run; the
            runs of a group are its seeds or labeled splits, listed in the
            same order in every group. None: no aggregation. Defaults to
            None.
        baseline (str, optional): Group to take paired differences to.
            Defaults to None.
        metric (str): The evaluated key. Defaults to ``'accuracy/top1'``.
        last_n (int): Evaluations the median is taken over. Defaults to 20.

    Returns:
        dict: ``runs`` (label -> :func:`summarize_evaluations`), ``groups``
        (:func:`aggregate_groups`, or None) and ``markdown``.
    """
    labels = _check_runs(work_dirs, labels)
    if baseline is not None and groups is None:
        raise ValueError('`baseline` needs `groups`')
    runs = {}
    for label, work_dir in zip(labels, work_dirs):
        try:
            runs[label] = summarize_evaluations(
                load_run(work_dir)['val'], metric, last_n)
        except KeyError as e:
            raise KeyError(
                f'run {label!r} ({work_dir}): {e.args[0]}') from None
    grouped = None
    if groups is not None:
        if len(groups) != len(labels):
            raise ValueError(f'Got {len(groups)} `groups` {list(groups)} for '
                             f'{len(labels)} work dirs')
        by_group: Dict[str, List[dict]] = {}
        for label, group in zip(labels, groups):
            by_group.setdefault(group, []).append(runs[label])
        grouped = aggregate_groups(by_group, baseline)
    return dict(
        runs=runs,
        groups=grouped,
        markdown=summary_markdown(runs, grouped, baseline))


def default_keys(runs: Dict[str, List[dict]]) -> List[str]:
    """``loss``, the STS statistics of every teacher found in ``runs``, and
    the evaluations (``val/...``), a teacher's and a student's metric
    (``TeacherStudentValLoop``) on one plot: ``val/{teacher,student}/M``."""
    teachers = set()
    keys = _curve_keys(runs)
    for key in keys:
        match = re.fullmatch(r'sts/(.+)/[^/]+', key)
        if match:
            teachers.add(match.group(1))
    evaluations = []
    for key in sorted(k for k in keys if k.startswith('val/')):
        metric = key[len('val/'):]
        if metric in _NOT_METRICS:
            continue
        if metric.startswith('teacher/'):
            if f'val/student/{metric[len("teacher/"):]}' in keys:
                key = f'val/{{teacher,student}}/{metric[len("teacher/"):]}'
        elif metric.startswith('student/') and \
                f'val/teacher/{metric[len("student/"):]}' in keys:
            continue
        evaluations.append(key)
    return ['loss'] + [
        f'sts/{teacher}/{stat}' for stat in STS_STATS
        for teacher in sorted(teachers)
    ] + evaluations


def _expand(key: str) -> List[tuple]:
    """``(scalar, line suffix)`` pairs of a plotted key: ``a/{x,y}/b`` is
    drawn as two lines, ``a/x/b`` and ``a/y/b``, in one plot."""
    match = re.search(r'\{([^{}]+)\}', key)
    if match is None:
        return [(key, '')]
    return [(key[:match.start()] + alt + key[match.end():], f' {alt}')
            for alt in match.group(1).split(',')]


def plot_runs(runs: Dict[str, List[dict]],
              keys: Optional[Sequence[str]] = None,
              out: Optional[str] = None,
              ncols: int = 4,
              title: Optional[str] = None,
              logger: Union[str, logging.Logger] = 'current'):
    """One subplot per key, one line per run, x = training step.

    A key that a run did not log is skipped for that run, with a note; a key
    that no run logged gets no subplot.

    Args:
        runs (dict[str, list[dict]]): Label -> training records, as read by
            :func:`load_train_scalars`.
        keys (Sequence[str], optional): Scalars to plot. None plots
            :func:`default_keys`. Defaults to None.
        out (str, optional): Where to save the figure (the format follows
            the extension, e.g. ``.png``). Defaults to None (not saved).
        ncols (int): Subplots per row. Defaults to 4.
        title (str, optional): Title of the figure. Defaults to None.
        logger (str | logging.Logger): Where the notes about missing keys
            go, see :func:`mmengine.logging.print_log`. Defaults to
            ``'current'``.

    Returns:
        matplotlib.figure.Figure: The figure; ``figure.axes`` holds one axes
        per plotted key, titled with the key.
    """
    # The object-oriented API with the Agg canvas: no display, no pyplot
    # global state, so figures are freed with their last reference.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not runs:
        raise ValueError('`runs` is empty: nothing to plot')
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f'`ncols` must be a positive int, got {ncols!r}')
    keys = default_keys(runs) if keys is None else list(keys)
    plotted = []
    for key in keys:
        present = [
            label for label, records in runs.items()
            if any(k in r for r in records for k, _ in _expand(key))
        ]
        for label in runs:
            if label not in present:
                print_log(
                    f'compare_runs: run {label!r} has no {key!r}; '
                    'skipped in that plot.',
                    logger=logger,
                    level=logging.WARNING)
        if present:
            plotted.append(key)
    if not plotted:
        raise ValueError(f'None of the keys {keys} is in any run; the logs '
                         f'have {sorted(_curve_keys(runs))}')

    cols = min(ncols, len(plotted))
    rows = math.ceil(len(plotted) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.3 * rows), layout='constrained')
    FigureCanvasAgg(fig)
    for i, key in enumerate(plotted):
        ax = fig.add_subplot(rows, cols, i + 1)
        for label, records in runs.items():
            for scalar, suffix in _expand(key):
                points = [(r['step'], r[scalar]) for r in records
                          if scalar in r]
                if points:
                    xs, ys = zip(*points)
                    ax.plot(
                        xs,
                        ys,
                        label=label + suffix,
                        linewidth=1.2,
                        marker='.' if scalar.startswith('val/') else None)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel('training step')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    if out:
        fig.savefig(out, dpi=100)
    return fig


def _curve_keys(runs: Dict[str, List[dict]]) -> set:
    return {
        k
        for records in runs.values()
        for r in records
        for k in r if k not in _NOT_CURVES
    }


def compare_runs(work_dirs: Sequence[str],
                 labels: Optional[Sequence[str]] = None,
                 keys: Optional[Sequence[str]] = None,
                 out: str = 'compare_runs.png',
                 ncols: int = 4,
                 title: Optional[str] = None,
                 logger: Union[str, logging.Logger] = 'current'):
    """Plot the run in each work dir (resumed parts joined, see
    :func:`load_run`) in one figure.

    Args:
        work_dirs (Sequence[str]): Work dirs (or timestamp dirs, or
            ``scalars.json`` files) of the runs.
        labels (Sequence[str], optional): One legend label per run. None
            uses the work dirs' base names. Defaults to None.
        keys (Sequence[str], optional): Scalars to plot; None plots the loss
            and the STS statistics of every teacher. Defaults to None.
        out (str): Path of the image. Defaults to ``'compare_runs.png'``.
        ncols (int): Subplots per row. Defaults to 4.
        title (str, optional): Title of the figure. Defaults to None.
        logger (str | logging.Logger): Where the notes about missing keys
            go. Defaults to ``'current'``.

    Returns:
        matplotlib.figure.Figure: The saved figure, one axes per key.
    """
    labels = _check_runs(work_dirs, labels)
    runs = {
        label: plot_records(load_run(d, logger=logger))
        for label, d in zip(labels, work_dirs)
    }
    return plot_runs(
        runs, keys=keys, out=out, ncols=ncols, title=title, logger=logger)


def plot_records(run: dict) -> List[dict]:
    """A run's records for :func:`plot_runs`: its training records, then
    its evaluations as ``val/<key>`` at the training step they followed."""
    evaluations = [
        dict({f'val/{k}': v
              for k, v in r.items() if k not in ('step', 'train_step')},
             step=r['train_step']) for r in run['val']
    ]
    return run['train'] + evaluations


def _check_runs(work_dirs, labels) -> List[str]:
    """The labels of the runs, checked against the work dirs."""
    if isinstance(work_dirs, str) or not work_dirs:
        raise TypeError('`work_dirs` must be a non-empty list of paths, '
                        f'but got {work_dirs!r}')
    if labels is None:
        labels = [osp.basename(osp.normpath(d)) for d in work_dirs]
    if len(labels) != len(work_dirs):
        raise ValueError(f'Got {len(labels)} `labels` {list(labels)} for '
                         f'{len(work_dirs)} work dirs')
    if len(set(labels)) != len(labels):
        raise ValueError(f'`labels` must be unique, got {list(labels)}')
    return list(labels)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Plot the scalar logs of several MMEngine runs (loss, '
        'STS momentum, fraction of fragments updated, teacher-student '
        'distance) side by side.')
    parser.add_argument(
        'work_dirs',
        nargs='+',
        help='work dirs of the runs (the timestamp dirs of a resumed run '
        'are joined)')
    parser.add_argument(
        '--labels',
        nargs='+',
        help='one legend label per run (default: '
        'the work dirs\' names)')
    parser.add_argument(
        '--keys',
        nargs='+',
        help='scalars to plot, e.g. loss '
        'sts/target_net/momentum (default: loss and the STS statistics of '
        'every teacher)')
    parser.add_argument(
        '--out', default='compare_runs.png', help='path of the image')
    parser.add_argument(
        '--ncols', type=int, default=4, help='subplots per row')
    parser.add_argument('--title', help='title of the figure')
    parser.add_argument(
        '--no-plot', action='store_true', help='only report the evaluations')
    parser.add_argument(
        '--metric',
        help='evaluated key to report (default: accuracy/top1, if the runs '
        'have evaluations)')
    parser.add_argument(
        '--last-n',
        type=int,
        default=DEFAULT_LAST_N,
        help='report the median of the last N evaluations of each run '
        '(FixMatch: 20; default: %(default)s)')
    parser.add_argument(
        '--groups',
        nargs='+',
        help='one group (method) per work dir, to aggregate seeds/splits as '
        'mean ± std; list the runs of every group in the same seed order')
    parser.add_argument(
        '--baseline',
        help='group to report paired differences to (needs --groups)')
    parser.add_argument(
        '--summary-out', help='also write the evaluation report (JSON) here')
    args = parser.parse_args(argv)
    if args.last_n < 1:
        parser.error(f'--last-n must be >= 1, but got {args.last_n}')
    if args.baseline and not args.groups:
        parser.error('--baseline needs --groups')
    if args.groups and args.baseline and args.baseline not in args.groups:
        parser.error(f'--baseline {args.baseline!r} is not one of --groups '
                     f'{sorted(set(args.groups))}')
    return args


def main(argv=None):
    """Plot the runs and report their evaluations.

    Returns:
        matplotlib.figure.Figure | None: The figure, None with
        ``--no-plot``.
    """
    args = parse_args(argv)
    fig = None
    if not args.no_plot:
        fig = compare_runs(
            args.work_dirs,
            labels=args.labels,
            keys=args.keys,
            out=args.out,
            ncols=args.ncols,
            title=args.title)
        print_log(
            f'Saved {len(fig.axes)} plot(s) to {args.out}', logger='current')
    metric = args.metric or DEFAULT_METRIC
    has_evaluations = any(
        any(metric in r for r in load_run(d)['val'])
        for d in args.work_dirs)
    if args.metric or args.groups or args.summary_out or has_evaluations:
        summary = summarize_runs(
            args.work_dirs,
            labels=args.labels,
            groups=args.groups,
            baseline=args.baseline,
            metric=metric,
            last_n=args.last_n)
        print(summary['markdown'])
        if args.summary_out:
            with open(args.summary_out, 'w') as f:
                json.dump({k: v for k, v in summary.items()
                           if k != 'markdown'}, f, indent=2)
            print_log(f'Saved the evaluation report to {args.summary_out}',
                      logger='current')
    elif args.no_plot:
        print_log(f'compare_runs: no run has evaluations of {metric!r}; '
                  'nothing to do.', logger='current', level=logging.WARNING)
    return fig


if __name__ == '__main__':
    main()
