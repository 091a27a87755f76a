"""The FixMatch digits demo (`make demo`) and its multi-seed summary, on a
few iterations."""
import json
import os.path as osp
import sys

import pytest
from conftest import REPO_ROOT

REPO = REPO_ROOT
sys.path.insert(0, osp.join(REPO, 'tools', 'demo'))

import fixmatch_digits  # noqa: E402
import fixmatch_digits_seeds  # noqa: E402


def test_demo_smoke_writes_table_summary_and_plot(tmp_path, capsys):
    work_dir = str(tmp_path / 'demo')
    results = fixmatch_digits.main(
        ['--smoke', '--work-dir', work_dir, '--variants', 'TMA', 'STS'])
    assert list(results) == ['TMA', 'STS']
    for variant, res in results.items():
        # Two validations of 4 iterations, both models reported.
        assert [p['iter'] for p in res['curve']] == [2, 4]
        for point in res['curve']:
            assert 0.0 <= point['teacher'] <= 100.0
            assert 0.0 <= point['student'] <= 100.0
        assert res['teacher'] == res['curve'][-1]['teacher']
        # The labeled split was saved and holds 4 images per class.
        with open(osp.join(work_dir, variant.lower(),
                           'labeled_indices.json')) as f:
            split = json.load(f)
        assert len(split['indices']) == 40
    out = capsys.readouterr().out
    assert '| TMA |' in out and '| STS |' in out
    with open(osp.join(work_dir, 'summary.md')) as f:
        summary = f.read()
    assert 'Small-scale CPU result' in summary and '| STS |' in summary
    assert osp.getsize(osp.join(work_dir, 'accuracy.png')) > 0
    with open(osp.join(work_dir, 'results.json')) as f:
        assert json.load(f)['STS']['config'].endswith(
            'fixmatch_wrn10-1_sts_1xb16-mu3-1k_digits-40labels.py')


def test_demo_variants_differ_only_in_the_teacher():
    cfgs = {
        v: fixmatch_digits.build_config(v, '/tmp/unused', 3, None, None,
                                        False)
        for v in fixmatch_digits.VARIANTS
    }
    teachers = {v: cfg.model.pop('teacher') for v, cfg in cfgs.items()}
    assert teachers['STS']['preserve_prob'] == 0.5
    assert teachers['TMA']['preserve_prob'] == 0.0
    assert teachers['SE']['momentum'] == 1.0
    for cfg in cfgs.values():
        cfg.pop('experiment_name')
        assert cfg.randomness.seed == 3
    assert cfgs['TMA'].to_dict() == cfgs['STS'].to_dict() == \
        cfgs['SE'].to_dict()


def test_seed_summary_reports_mean_std_and_paired_gain():
    runs = {
        'TMA': {0: dict(teacher=90.0, student=80.0),
                1: dict(teacher=92.0, student=84.0)},
        'STS': {0: dict(teacher=91.0, student=80.0),
                1: dict(teacher=95.0, student=86.0)},
    }
    table = fixmatch_digits_seeds.summarise(runs, [0, 1])
    lines = table.splitlines()
    assert lines[2] == '| TMA | 91.00 ± 1.41 | 82.00 ± 2.83 | — |'
    # Paired gains 1 and 3: mean 2, std sqrt(2).
    assert lines[3] == '| STS | 93.00 ± 2.83 | 83.00 ± 4.24 | 2.00 ± 1.41 |'


if __name__ == '__main__':
    pytest.main([__file__])
