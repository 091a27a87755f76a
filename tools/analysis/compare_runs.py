"""Plot the training curves of several MMEngine runs side by side.

Reads the JSON scalar log that MMEngine's ``LocalVisBackend`` writes in every
run, ``<work_dir>/<timestamp>/vis_data/scalars.json`` (one JSON object per
line), and draws one subplot per key with one line per run. By default the
keys are the loss and, for every teacher found in the logs, the statistics
written by :class:`mmsts.engine.hooks.SpatialTemporalSmoothingHook`:
``sts/<teacher>/momentum``, ``sts/<teacher>/update_fraction`` (fraction of
fragments updated) and ``sts/<teacher>/distance`` (relative teacher-student
distance).

Example:
    python tools/analysis/compare_runs.py \\
        work_dirs/byol_tma work_dirs/byol_sts --labels TMA STS \\
        --out compare.png --keys loss sts/target_net/update_fraction
"""
import argparse
import glob
import json
import logging
import math
import os.path as osp
import re
from typing import Dict, List, Optional, Sequence, Union

from mmengine.fileio import list_from_file
from mmengine.logging import print_log

#: Statistics of SpatialTemporalSmoothingHook plotted by default, in order.
STS_STATS = ('momentum', 'update_fraction', 'distance')
#: Keys of a training record that are bookkeeping, not curves.
_NOT_CURVES = ('epoch', 'iter', 'step')


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
    records = []
    for line_no, line in enumerate(list_from_file(path), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(
                f'{path}:{line_no} is not a JSON object: {e}') from None
        record = {
            (k[len('train/'):] if k.startswith('train/') else k): v
            for k, v in record.items()
        }
        if 'iter' in record and 'step' in record:
            records.append(record)
    return records


def default_keys(runs: Dict[str, List[dict]]) -> List[str]:
    """``loss`` and the STS statistics of every teacher found in ``runs``."""
    teachers = set()
    for key in _curve_keys(runs):
        match = re.fullmatch(r'sts/(.+)/[^/]+', key)
        if match:
            teachers.add(match.group(1))
    return ['loss'] + [
        f'sts/{teacher}/{stat}' for stat in STS_STATS
        for teacher in sorted(teachers)
    ]


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
            if any(key in r for r in records)
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
            points = [(r['step'], r[key]) for r in records if key in r]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, label=label, linewidth=1.2)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel('step')
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
    """Plot the latest run of each work dir in one figure.

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
    runs = {
        label: load_train_scalars(find_scalars_file(d))
        for label, d in zip(labels, work_dirs)
    }
    return plot_runs(
        runs, keys=keys, out=out, ncols=ncols, title=title, logger=logger)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Plot the scalar logs of several MMEngine runs (loss, '
        'STS momentum, fraction of fragments updated, teacher-student '
        'distance) side by side.')
    parser.add_argument(
        'work_dirs',
        nargs='+',
        help='work dirs of the runs (the latest '
        'timestamp dir of each is read)')
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
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    fig = compare_runs(
        args.work_dirs,
        labels=args.labels,
        keys=args.keys,
        out=args.out,
        ncols=args.ncols,
        title=args.title)
    print_log(f'Saved {len(fig.axes)} plot(s) to {args.out}', logger='current')
    return fig


if __name__ == '__main__':
    main()
