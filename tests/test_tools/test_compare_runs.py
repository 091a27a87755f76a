"""tools/analysis/compare_runs.py on scalar logs written by MMEngine's own
LocalVisBackend, laid out as a runner lays them out
(``<work_dir>/<timestamp>/vis_data/scalars.json``)."""
import importlib.util
import logging
import os.path as osp

import matplotlib.image
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
              loss_offset=0.0):
    """A run's scalar log as LoggerHook writes it: training records (with
    ``iter``) every iteration, and a validation record at the end."""
    backend = LocalVisBackend(
        save_dir=osp.join(str(work_dir), timestamp, 'vis_data'))
    for step in range(1, steps + 1):
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
    backend.add_scalars({'accuracy/top1': 50.0, 'data_time': 0.01}, step=1)
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
    assert _titles(fig) == ['loss'] + STS_KEYS
    image = matplotlib.image.imread(out)
    # 4 subplots side by side: a wide image.
    assert image.shape[1] > 3 * image.shape[0]
    fractions = _lines(fig, 'sts/target_net/update_fraction')
    assert set(fractions) == {'TMA', 'STS'}
    assert list(fractions['TMA'].get_ydata()) == [1.0] * 6
    assert list(fractions['STS'].get_ydata()) == [0.3] * 6
    # x = training step; the validation record is not a training point.
    assert list(fractions['STS'].get_xdata()) == [1, 2, 3, 4, 5, 6]


def test_latest_timestamp_dir_is_read(tmp_path):
    run = tmp_path / 'run'
    write_run(run, '20240101_000000', loss_offset=100.0)
    write_run(run, '20240102_000000', loss_offset=0.0)
    path = compare_runs.find_scalars_file(str(run))
    assert '20240102_000000' in path
    fig = compare_runs.compare_runs([str(run)],
                                    keys=['loss'],
                                    out=str(tmp_path / 'p.png'))
    assert max(_lines(fig, 'loss')['run'].get_ydata()) < 0


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
    assert _titles(fig) == ['loss']


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
