"""tools/analysis/compare_runs.py on scalar logs written by MMEngine's own
LocalVisBackend, laid out as a runner lays them out
(``<work_dir>/<timestamp>/vis_data/scalars.json``)."""
import importlib.util
import json
import logging
import os.path as osp

import matplotlib.image
import numpy as np
import pytest
from mmengine.visualization import LocalVisBackend
from conftest import REPO_ROOT


def _load_tool():
    path = osp.join(REPO_ROOT, 'tools', 'analysis', 'compare_runs.py')
    spec = importlib.util.spec_from_file_location('compare_runs', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare_runs = _load_tool()

STS_KEYS = [
    'sts/target_net/momentum', 'sts/target_net/update_fraction',
    'sts/target_net/distance'
]


def write_run(work_dir,
              timestamp,
              steps=6,
              update_fraction=0.3,
              with_sts=True,
              loss_offset=0.0,
              first_step=1):
    """A run's scalar log as LoggerHook writes it: training records (with
    ``iter``) every iteration, and a validation record at the end."""
    backend = LocalVisBackend(
        save_dir=osp.join(str(work_dir), timestamp, 'vis_data'))
    for step in range(first_step, first_step + steps):
        scalars = dict(
            lr=0.1,
            data_time=0.01,
            time=0.2,
            loss=loss_offset - 0.1 * step,
            epoch=1,
            iter=step)
        if with_sts:
            scalars.update({
                'sts/target_net/momentum': 0.01 / step,
                'sts/target_net/update_fraction': update_fraction,
                'sts/target_net/distance': 0.01 * step,
                'sts/target_net/nonfinite_steps': 0,
            })
        backend.add_scalars(scalars, step=step)
    backend.add_scalars({
        'accuracy/top1': 50.0 + loss_offset,
        'data_time': 0.01
    },
                        step=1)
    return str(work_dir)


def _titles(fig):
    return [ax.get_title() for ax in fig.axes]


def _lines(fig, key):
    ax = fig.axes[_titles(fig).index(key)]
    return {line.get_label(): line for line in ax.get_lines()}


def test_two_runs_default_keys(tmp_path):
    tma = write_run(tmp_path / 'tma', '20240101_000000', update_fraction=1.)
    sts = write_run(tmp_path / 'sts', '20240101_000100')
    out = str(tmp_path / 'plot.png')
    fig = compare_runs.compare_runs([tma, sts], labels=['TMA', 'STS'], out=out)
    assert _titles(fig) == ['loss'] + STS_KEYS + ['val/accuracy/top1']
    image = matplotlib.image.imread(out)
    # 4 subplots side by side (and one below): a wide image.
    assert image.shape[1] > 2 * image.shape[0]
    fractions = _lines(fig, 'sts/target_net/update_fraction')
    assert set(fractions) == {'TMA', 'STS'}
    assert list(fractions['TMA'].get_ydata()) == [1.0] * 6
    assert list(fractions['STS'].get_ydata()) == [0.3] * 6
    # x = training step; the validation record is not a training point,
    # it is drawn at the training step it followed.
    assert list(fractions['STS'].get_xdata()) == [1, 2, 3, 4, 5, 6]
    evaluation = _lines(fig, 'val/accuracy/top1')['STS']
    assert list(evaluation.get_xdata()) == [6]
    assert list(evaluation.get_ydata()) == [50.0]


def test_a_restarted_run_replaces_the_earlier_one(tmp_path):
    run = tmp_path / 'run'
    write_run(run, '20240101_000000', loss_offset=100.0)
    write_run(run, '20240102_000000', loss_offset=0.0)
    path = compare_runs.find_scalars_file(str(run))
    assert '20240102_000000' in path
    fig = compare_runs.compare_runs([str(run)],
                                    keys=['loss', 'val/accuracy/top1'],
                                    out=str(tmp_path / 'p.png'))
    assert max(_lines(fig, 'loss')['run'].get_ydata()) < 0
    assert list(_lines(fig, 'val/accuracy/top1')['run'].get_ydata()) == [50.]


def test_a_resumed_run_is_joined(tmp_path):
    """``--resume`` writes a new timestamp dir that continues the steps: the
    first part is kept up to the resumed checkpoint, the steps it logged
    after it (and their evaluations) are replaced by the second part."""
    run = tmp_path / 'run'
    first = LocalVisBackend(
        save_dir=osp.join(str(run), '20240101_000000', 'vis_data'))
    for step in range(1, 9):  # interrupted after step 8, checkpoint at 4
        first.add_scalars({'loss': 1.0, 'iter': step, 'epoch': 1}, step=step)
        if step % 4 == 0:
            first.add_scalars({'accuracy/top1': 10.0 * step}, step=step)
    second = LocalVisBackend(
        save_dir=osp.join(str(run), '20240102_000000', 'vis_data'))
    for step in range(5, 13):  # resumed from the checkpoint of step 4
        second.add_scalars({'loss': 2.0, 'iter': step, 'epoch': 1}, step=step)
        if step % 4 == 0:
            second.add_scalars({'accuracy/top1': 100.0 + step}, step=step)

    joined = compare_runs.load_run(str(run))
    assert len(joined['parts']) == 2
    assert [r['step'] for r in joined['train']] == list(range(1, 13))
    assert [r['loss'] for r in joined['train']] == [1.0] * 4 + [2.0] * 8
    assert [(r['step'], r['accuracy/top1']) for r in joined['val']] == [
        (4, 40.0), (8, 108.0), (12, 112.0)
    ]
    fig = compare_runs.compare_runs([str(run)],
                                    out=str(tmp_path / 'p.png'))
    assert list(_lines(fig, 'loss')['run'].get_xdata()) == list(range(1, 13))
    summary = compare_runs.summarize_runs([str(run)], last_n=20)
    assert summary['runs']['run']['evaluations'] == 3
    assert summary['runs']['run']['median_last'] == 108.0


def test_teacher_and_student_evaluations_share_a_plot(tmp_path):
    run = tmp_path / 'fixmatch'
    backend = LocalVisBackend(
        save_dir=osp.join(str(run), '20240101_000000', 'vis_data'))
    for step in (10, 20):
        backend.add_scalars({'loss': 1.0, 'iter': step}, step=step)
        backend.add_scalars(
            {
                'teacher/accuracy/top1': 60.0 + step,
                'student/accuracy/top1': 50.0 + step,
                'data_time': 0.1
            },
            step=step)
    fig = compare_runs.compare_runs([str(run)],
                                    labels=['STS'],
                                    out=str(tmp_path / 'p.png'))
    key = 'val/{teacher,student}/accuracy/top1'
    assert _titles(fig) == ['loss', key]
    lines = _lines(fig, key)
    assert set(lines) == {'STS teacher', 'STS student'}
    assert list(lines['STS teacher'].get_ydata()) == [70.0, 80.0]
    assert list(lines['STS student'].get_xdata()) == [10, 20]


def test_missing_keys_are_skipped_with_a_note(tmp_path, caplog):
    plain = write_run(tmp_path / 'plain', '20240101_000000', with_sts=False)
    sts = write_run(tmp_path / 'sts', '20240101_000000')
    out = str(tmp_path / 'plot.png')
    with caplog.at_level(logging.WARNING):
        fig = compare_runs.compare_runs(
            [plain, sts],
            labels=['EMA hook', 'STS'],
            out=out,
            keys=['loss', 'sts/target_net/distance', 'no/such/key'],
            logger=logging.getLogger('test_compare_runs'))
    # A key that no run has gets no subplot; one missing in a run is drawn
    # for the others only.
    assert _titles(fig) == ['loss', 'sts/target_net/distance']
    assert set(_lines(fig, 'loss')) == {'EMA hook', 'STS'}
    assert set(_lines(fig, 'sts/target_net/distance')) == {'STS'}
    assert osp.getsize(out) > 0
    notes = caplog.text
    assert "'EMA hook' has no 'sts/target_net/distance'" in notes
    assert "'no/such/key'" in notes


def test_default_keys_follow_the_teachers_in_the_logs(tmp_path):
    plain = write_run(tmp_path / 'plain', '20240101_000000', with_sts=False)
    fig = compare_runs.compare_runs([plain], out=str(tmp_path / 'p.png'))
    assert _titles(fig) == ['loss', 'val/accuracy/top1']


def test_default_keys_for_two_teachers():
    records = [{
        'step': 1,
        'iter': 1,
        'loss': 1.0,
        'sts/encoder_k/momentum': 0.1,
        'sts/teacher/distance': 0.3,
    }]
    assert compare_runs.default_keys({'run': records}) == [
        'loss',
        'sts/encoder_k/momentum',
        'sts/teacher/momentum',
        'sts/encoder_k/update_fraction',
        'sts/teacher/update_fraction',
        'sts/encoder_k/distance',
        'sts/teacher/distance',
    ]


def test_cli(tmp_path):
    tma = write_run(tmp_path / 'tma', '20240101_000000', update_fraction=1.)
    sts = write_run(tmp_path / 'sts', '20240101_000000')
    out = str(tmp_path / 'cli.png')
    fig = compare_runs.main([
        tma, sts, '--labels', 'TMA', 'STS', '--out', out, '--ncols', '2',
        '--keys', 'loss', 'sts/target_net/momentum',
        'sts/target_net/update_fraction'
    ])
    assert len(fig.axes) == 3
    image = matplotlib.image.imread(out)
    assert image.shape[0] > image.shape[1] / 2  # two rows of two columns
    # Labels default to the work dirs' names.
    fig = compare_runs.main([tma, sts, '--out', out])
    assert set(_lines(fig, 'loss')) == {'tma', 'sts'}


def test_bad_input(tmp_path):
    run = write_run(tmp_path / 'run', '20240101_000000')
    with pytest.raises(ValueError, match='labels'):
        compare_runs.compare_runs([run], labels=['a', 'b'])
    with pytest.raises(ValueError, match='unique'):
        compare_runs.compare_runs([run, run], labels=['a', 'a'])
    with pytest.raises(TypeError, match='work_dirs'):
        compare_runs.compare_runs(run)
    with pytest.raises(FileNotFoundError, match='scalars.json'):
        compare_runs.compare_runs([str(tmp_path)])
    with pytest.raises(ValueError, match='None of the keys'):
        compare_runs.compare_runs([run],
                                  keys=['nope'],
                                  out=str(tmp_path / 'p.png'))
    bad = tmp_path / 'bad.json'
    bad.write_text('{"loss": 1, "iter": 1, "step": 1}\nnot json\n')
    with pytest.raises(ValueError, match='bad.json:2'):
        compare_runs.load_train_scalars(str(bad))


# --- Evaluation reports (FixMatch: median of the last 20 evaluations) ------


def write_evaluations(work_dir, accuracies, timestamp='20240101_000000',
                      hierarchy=False, by_epoch=True):
    """A run's scalar log with training records and one validation record
    per value of ``accuracies``, as LoggerHook writes them (step = epoch, or
    the iteration for iteration-based loops)."""
    backend = LocalVisBackend(
        save_dir=osp.join(str(work_dir), timestamp, 'vis_data'))
    prefix = 'val/' if hierarchy else ''
    for i, acc in enumerate(accuracies, 1):
        backend.add_scalars({'loss': 1.0 / i, 'epoch': i, 'iter': 10 * i},
                            step=10 * i)
        backend.add_scalars(
            {f'{prefix}accuracy/top1': acc, f'{prefix}data_time': 0.01},
            step=i if by_epoch else 10 * i)
    return str(work_dir)


def test_median_of_last_n_final_and_best(tmp_path):
    # 25 evaluations: a peak early, then the last 20 are 60..79 shuffled.
    tail = [60 + (7 * i) % 20 for i in range(20)]
    accuracies = [10, 20, 95, 30, 40] + tail
    run = write_evaluations(tmp_path / 'run', accuracies)
    records = compare_runs.load_val_scalars(
        compare_runs.find_scalars_file(run))
    assert [r['step'] for r in records] == list(range(1, 26))
    summary = compare_runs.summarize_evaluations(records)
    assert summary['median_last'] == pytest.approx(69.5)  # not 95, not 'final'
    assert summary['last_n_used'] == 20
    assert summary['final'] == tail[-1]
    assert summary['final_step'] == 25
    assert (summary['best'], summary['best_step']) == (95, 3)
    assert summary['evaluations'] == 25
    short = compare_runs.summarize_evaluations(records, last_n=3)
    assert short['median_last'] == sorted(tail[-3:])[1]


def test_fewer_evaluations_than_n_and_hierarchy_keys(tmp_path):
    run = write_evaluations(
        tmp_path / 'run', [50, 70, 60], hierarchy=True, by_epoch=False)
    records = compare_runs.load_val_scalars(
        compare_runs.find_scalars_file(run))
    assert [r['step'] for r in records] == [10, 20, 30]
    summary = compare_runs.summarize_evaluations(records, last_n=20)
    assert summary['median_last'] == 60
    assert summary['last_n_used'] == 3
    table = compare_runs.summary_markdown({'run': summary})
    assert '(only 3)' in table


def test_groups_mean_std_and_paired_difference(tmp_path):
    # Three seeds; STS is 1 point above TMA on seeds 0, 1 and 3 above on 2.
    tma_levels, gains = [70.0, 60.0, 65.0], [1.0, 1.0, 3.0]
    dirs, groups, labels = [], [], []
    for group, levels in (('TMA', tma_levels),
                          ('STS', [t + g for t, g in zip(tma_levels,
                                                         gains)])):
        for seed, level in enumerate(levels):
            # 22 evaluations; the last 20 are level-2..level+2 around level.
            accs = [0.0, 0.0] + [level + (i % 5) - 2 for i in range(20)]
            dirs.append(write_evaluations(tmp_path / f'{group}_{seed}', accs))
            groups.append(group)
            labels.append(f'{group}-s{seed}')
    report = compare_runs.summarize_runs(
        dirs, labels=labels, groups=groups, baseline='TMA')
    assert report['runs']['STS-s2']['median_last'] == 68.0
    tma, sts = report['groups']['TMA'], report['groups']['STS']
    assert tma['median_last']['n'] == 3
    assert tma['median_last']['mean'] == pytest.approx(65.0)
    assert tma['median_last']['std'] == pytest.approx(5.0)
    # The paired difference removes the seed-to-seed spread.
    assert sts['diff_median_last']['mean'] == pytest.approx(5 / 3)
    assert sts['diff_median_last']['std'] == pytest.approx(
        float(np.std(gains, ddof=1)))
    assert sts['diff_median_last']['values'] == pytest.approx(gains)
    assert 'diff_median_last' not in tma
    assert '| STS | 3 | 66.67 ± 5.13 |' in report['markdown']
    assert '1.67 ± 1.15' in report['markdown']


def test_report_cli_writes_json(tmp_path, capsys):
    a = write_evaluations(tmp_path / 'a0', [50.0] * 3 + [60.0] * 20)
    b = write_evaluations(tmp_path / 'b0', [50.0] * 3 + [62.0] * 20)
    out = tmp_path / 'summary.json'
    fig = compare_runs.main([
        a, b, '--groups', 'A', 'B', '--baseline', 'A', '--no-plot',
        '--summary-out', str(out)
    ])
    assert fig is None
    assert not (tmp_path / 'compare_runs.png').exists()
    printed = capsys.readouterr().out
    assert 'median of last 20 accuracy/top1' in printed
    report = json.loads(out.read_text())
    assert report['runs']['b0']['median_last'] == 62.0
    assert report['groups']['B']['diff_median_last']['mean'] == 2.0
    assert report['groups']['B']['diff_median_last']['std'] is None  # n=1


def test_report_errors_name_the_problem(tmp_path):
    a = write_evaluations(tmp_path / 'a', [50.0, 51.0])
    b = write_evaluations(tmp_path / 'b', [52.0])
    c = write_evaluations(tmp_path / 'c', [53.0])
    with pytest.raises(ValueError, match=r"'B' \(2 runs\).*'A' \(1 runs\)"):
        compare_runs.summarize_runs([a, b, c], groups=['A', 'B', 'B'],
                                    baseline='A')
    with pytest.raises(ValueError, match="baseline='Z'"):
        compare_runs.summarize_runs([a, b], groups=['A', 'B'], baseline='Z')
    with pytest.raises(KeyError, match="run 'a'.*'accuracy/top5'"):
        compare_runs.summarize_runs([a], metric='accuracy/top5')
    with pytest.raises(ValueError, match='last_n'):
        compare_runs.summarize_runs([a], last_n=0)
    with pytest.raises(SystemExit):
        compare_runs.main([a, '--baseline', 'A'])
