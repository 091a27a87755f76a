"""The FixMatch digits demo (`make demo`, `make demo-seeds`): variants,
summaries, reuse of finished runs, and deterministic output on a few
iterations."""
import json
import os
import os.path as osp
import sys

import pytest
import torch
from conftest import REPO_ROOT

sys.path.insert(0, osp.join(REPO_ROOT, 'tools', 'demo'))

import fixmatch_digits  # noqa: E402
import fixmatch_digits_seeds  # noqa: E402
from common import DETERMINISTIC_ENV  # noqa: E402

TINY = ['--seeds', '0', '--variants', 'STS', '--max-iters', '4',
        '--val-interval', '2', '--last-n', '2', '--jobs', '1']


def test_tiny_demo_prints_the_same_whatever_the_threads(
        tmp_path, capsys, monkeypatch):
    """Two runs of a tiny demo, from parents with other thread settings,
    print the same tables and record bit-identical evaluations; the run
    itself is single-threaded and deterministic, with pinned kernels."""
    outputs, results = [], []
    for i, threads in enumerate((1, 2)):
        monkeypatch.setenv('OMP_NUM_THREADS', str(threads))
        monkeypatch.setenv('MKL_NUM_THREADS', str(threads))
        monkeypatch.delenv('ATEN_CPU_CAPABILITY', raising=False)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            results.append(
                fixmatch_digits.main(
                    TINY + ['--work-dir', str(tmp_path / f'demo{i}')]))
        finally:
            torch.set_num_threads(before)
        out = capsys.readouterr().out
        # Everything but the paths and the wall time.
        outputs.append(
            out.replace(str(tmp_path / f'demo{i}'), 'DIR').rsplit('(', 1)[0])
    assert outputs[0] == outputs[1]
    assert '| STS |' in outputs[0]
    runs = [r['runs']['STS'][0] for r in results]
    assert [p['iter'] for p in runs[0]['curve']] == [2, 4]
    assert runs[0]['curve'] == runs[1]['curve']
    for run in runs:
        assert run['process'] == dict(
            torch_threads=1, cpu_capability='AVX2', deterministic=True)
        assert not run['reused']
    # The run's split: 4 images per class, from the seed.
    with open(osp.join(str(tmp_path / 'demo0'), 'runs', 'sts_seed0',
                       'labeled_indices.json')) as f:
        assert len(json.load(f)['indices']) == 40
    work_dir = str(tmp_path / 'demo0')
    for name in ('summary.md', 'results.json', 'accuracy.png'):
        assert osp.getsize(osp.join(work_dir, name)) > 0

    # A second call with the same settings reuses the finished run.
    again = fixmatch_digits.main(TINY + ['--work-dir', work_dir])
    assert again['runs']['STS'][0]['reused']
    assert again['runs']['STS'][0]['curve'] == runs[0]['curve']
    assert '(reused)' in capsys.readouterr().out


def fake_result(variant, seed, curve):
    return dict(variant=variant, seed=seed, curve=curve)


def test_saved_run_is_reused_only_with_the_same_settings(
        tmp_path, monkeypatch):
    args = fixmatch_digits.parse_args(
        ['--work-dir', str(tmp_path), '--max-iters', '8'])
    runs_dir = tmp_path / 'runs'
    runs_dir.mkdir()
    curve = [dict(iter=8, teacher=50.0, student=40.0)]
    settings = fixmatch_digits.run_settings('TMA', 1, args)
    with open(runs_dir / 'tma_seed1.json', 'w') as f:
        json.dump(dict(fake_result('TMA', 1, curve), settings=settings), f)
    calls = []

    def fake_run(cmd, env, stdout, stderr):
        calls.append((cmd, env))
        work_dir = cmd[cmd.index('--work-dir') + 1]
        with open(osp.join(work_dir, 'result.json'), 'w') as f:
            json.dump(fake_result('TMA', 1, curve), f)
        return type('Done', (), dict(returncode=0))()

    monkeypatch.setattr(fixmatch_digits.subprocess, 'run', fake_run)
    assert fixmatch_digits.run_in_process('TMA', 1, args)['reused']
    assert not calls
    # Another length: run again, in a process with the pinned environment.
    args.max_iters = 9
    res = fixmatch_digits.run_in_process('TMA', 1, args)
    assert not res['reused'] and len(calls) == 1
    cmd, env = calls[0]
    assert cmd[cmd.index('--max-iters') + 1] == '9'
    for key, value in DETERMINISTIC_ENV.items():
        assert env[key] == value
    assert env['OMP_NUM_THREADS'] == '1'
    assert env['ATEN_CPU_CAPABILITY'] == 'avx2'
    with open(runs_dir / 'tma_seed1.json') as f:
        assert json.load(f)['settings']['max_iters'] == 9


def test_summary_reports_median_of_last_n_mean_std_and_paired_diff():
    def curve(*values):  # teacher values; the student is 10 below
        return [dict(iter=10 * (i + 1), teacher=v, student=v - 10)
                for i, v in enumerate(values)]

    runs = {
        'TMA': {0: dict(curve=curve(0, 90, 80, 86)),
                1: dict(curve=curve(0, 88, 92, 91))},
        'STS': {0: dict(curve=curve(0, 90, 89, 91)),
                1: dict(curve=curve(99, 93, 95, 94))},
    }
    summary = fixmatch_digits.summarize(runs, [0, 1], last_n=3)
    # Medians of the last 3: TMA 86, 91; STS 90, 94 (the first is left out).
    assert summary['per_run']['TMA'][0]['teacher'] == 86
    assert summary['per_run']['STS'][1]['teacher'] == 94
    assert summary['per_run']['STS'][1]['final_teacher'] == 94
    sts = summary['per_variant']['STS']
    assert sts['teacher']['mean'] == 92
    assert sts['teacher_minus_baseline']['mean'] == pytest.approx(3.5)
    assert sts['teacher_minus_baseline']['std'] == pytest.approx(0.5**0.5)
    lines = fixmatch_digits.format_tables(summary).splitlines()
    assert lines[0] == ('| seed | TMA teacher | TMA student | STS teacher | '
                        'STS student |')
    assert lines[2] == '| 0 | 86.0 | 76.0 | 90.0 | 80.0 |'
    assert lines[-2] == '| TMA | 88.50 ± 3.54 | 78.50 ± 3.54 | — |'
    assert lines[-1] == ('| STS | 92.00 ± 2.83 | 82.00 ± 2.83 | '
                         '3.50 ± 0.71 (TMA) |')


def test_variants_differ_only_in_the_teacher_or_the_pseudo_labels():
    cfgs = {
        v: fixmatch_digits.build_config(v, '/tmp/unused', 3)
        for v in fixmatch_digits.VARIANTS
    }
    for cfg in cfgs.values():
        cfg.pop('experiment_name')
        # The seed sets the split, the data order, the initialisation.
        assert cfg.randomness == dict(seed=3, deterministic=True)
        assert cfg.train_dataloader.sampler.seed == 3
        assert cfg.train_dataloader.dataset.datasets[0].seed == 3
    sources = {
        v: cfg.model.pop('semi_train_cfg')['pseudo_label_source']
        for v, cfg in cfgs.items()
    }
    assert sources == {'TMA': 'student', 'SE': 'student', 'STS': 'student',
                       'MT-TMA': 'teacher', 'MT-STS': 'teacher'}
    teachers = {v: cfg.model.pop('teacher') for v, cfg in cfgs.items()}
    assert teachers['STS']['preserve_prob'] == 0.5
    assert teachers['TMA']['preserve_prob'] == 0.0
    assert teachers['SE']['momentum'] == 1.0
    assert teachers['MT-STS'] == teachers['STS']
    assert teachers['MT-TMA'] == teachers['TMA']
    dicts = [cfg.to_dict() for cfg in cfgs.values()]
    assert all(d == dicts[0] for d in dicts)


def test_seed_sweep_defaults_and_overrides(monkeypatch):
    seen = []
    monkeypatch.setattr(fixmatch_digits, 'main', lambda argv: seen.append(
        fixmatch_digits.parse_args(argv)))
    fixmatch_digits_seeds.main([])
    fixmatch_digits_seeds.main(['--seeds', '7', '--work-dir', 'w'])
    assert seen[0].seeds == [0, 1, 2, 3, 4]
    assert seen[0].variants == ['TMA', 'SE', 'STS']
    assert seen[0].jobs == 2
    assert seen[1].seeds == [7] and seen[1].work_dir == 'w'


def test_makefile_targets_use_the_demo_work_dir():
    with open(osp.join(REPO_ROOT, 'Makefile')) as f:
        makefile = f.read()
    assert ('tools/demo/fixmatch_digits.py --work-dir work_dirs/demo/fixmatch'
            in makefile)
    assert ('tools/demo/fixmatch_digits_seeds.py --work-dir '
            'work_dirs/demo/fixmatch' in makefile)


if __name__ == '__main__':
    pytest.main([__file__, *os.environ.get('PYTEST_ARGS', '').split()])
