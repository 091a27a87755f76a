"""The BYOL digits demo (tools/demo/byol_digits.py) end to end, in its
``--smoke`` mode: both pretrainings, the four linear probes, the table, the
summary and the comparison plot, on a few iterations and images."""
import importlib.util
import os.path as osp

import matplotlib.image
import pytest
import torch
from mmengine.config import Config

import mmsts  # noqa: F401  (allow-lists MMEngine checkpoints for torch.load)
from conftest import REPO_ROOT


def _load_tool(*parts):
    path = osp.join(REPO_ROOT, 'tools', *parts)
    name = osp.splitext(parts[-1])[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


byol_digits = _load_tool('demo', 'byol_digits.py')
compare_runs = _load_tool('analysis', 'compare_runs.py')


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    work_dir = str(tmp_path_factory.mktemp('byol_digits'))
    threads = torch.get_num_threads()
    results = byol_digits.main(
        ['--work-dir', work_dir, '--seed', '0', '--smoke'])
    # The demo runs on one thread and gives the caller's setting back.
    assert torch.get_num_threads() == threads
    results['root'] = work_dir
    return results


def _state_dict(path):
    return torch.load(path, map_location='cpu')['state_dict']


def _train_records(work_dir):
    return compare_runs.load_train_scalars(
        compare_runs.find_scalars_file(work_dir))


def test_table_of_accuracies(demo):
    assert set(demo['top1']) == {'TMA', 'STS'}
    rows = demo['table'].splitlines()
    assert len(rows) == 2 + 2  # header, rule, one row per run
    for run, row in zip(('TMA', 'STS'), rows[2:]):
        assert set(demo['top1'][run]) == {'teacher', 'student'}
        cells = [c.strip() for c in row.strip('|').split('|')]
        assert cells[0].startswith(run)
        for which, cell in zip(('teacher', 'student'), cells[1:]):
            top1 = demo['top1'][run][which]
            assert 0.0 <= top1 <= 1.0
            # Smoke mode tests on 100 images: top-1 is a whole percentage.
            assert float(cell) == pytest.approx(100 * top1, abs=1e-3)
            assert float(cell) == round(float(cell))
    assert 0.0 <= demo['baseline_top1'] <= 1.0


def test_summary_and_plot(demo):
    assert demo['summary'] == osp.join(demo['root'], 'summary.md')
    with open(demo['summary'], encoding='utf-8') as f:
        summary = f.read()
    assert 'Small-scale CPU result' in summary
    assert demo['table'] in summary
    assert 'Wall time' in summary
    assert f'(no pretraining): {100 * demo["baseline_top1"]:.1f}' in summary
    assert '![training curves](comparison.png)' in summary
    for expected in ('tools/demo/byol_digits.py', '--smoke',
                     'configs/byol/byol_resnet-tiny_digits_tma.py',
                     'configs/byol/byol_resnet-tiny_digits_sts.py',
                     'model.backbone.init_cfg.prefix=target_net.module.0.',
                     'model.backbone.init_cfg.prefix=backbone.',
                     'tools/analysis/compare_runs.py'):
        assert expected in summary
    assert demo['plot'] == osp.join(demo['root'], 'comparison.png')
    image = matplotlib.image.imread(demo['plot'])
    # loss, momentum, update fraction and distance side by side.
    assert image.shape[1] > 3 * image.shape[0]
    timings = demo['timings']
    assert 0 < timings['pretrain'] < timings['total']
    assert 0 < timings['probe'] < timings['total']


@pytest.mark.parametrize('run', ['TMA', 'STS'])
def test_teacher_and_student_differ(demo, run):
    state = _state_dict(demo['checkpoints'][run])
    teacher = byol_digits.BACKBONE_PREFIXES['teacher']
    student = byol_digits.BACKBONE_PREFIXES['student']
    student_keys = [k for k in state if k.startswith(student)]
    assert student_keys
    differ = [
        k for k in student_keys
        if not torch.equal(state[k], state[teacher + k[len(student):]])
    ]
    assert 'backbone.conv1.weight' in differ


def test_probes_are_of_the_frozen_backbones(demo):
    """Each probe's backbone is exactly the pretrained teacher's or
    student's (weights and BN statistics), and only its head was
    trained."""
    for run, ckpt in demo['checkpoints'].items():
        pretrained = _state_dict(ckpt)
        for which, prefix in byol_digits.BACKBONE_PREFIXES.items():
            probe_dir = osp.join(demo['root'], f'probe_{run.lower()}_{which}')
            with open(osp.join(probe_dir, 'last_checkpoint')) as f:
                probe = _state_dict(f.read().strip())
            backbone = {
                k[len('backbone.'):]: v
                for k, v in probe.items() if k.startswith('backbone.')
            }
            assert backbone
            for key, value in backbone.items():
                assert torch.equal(value, pretrained[prefix + key]), \
                    f'{run} {which}: {key}'
            assert 'head.fc.weight' in probe


def test_runs_share_the_seed_and_log_their_update_fraction(demo):
    tma = _train_records(demo['work_dirs']['TMA'])
    sts = _train_records(demo['work_dirs']['STS'])
    assert [r['step'] for r in tma] == [r['step'] for r in sts]
    # Same seed, same data: the first step (teacher = copy of the student)
    # is identical in both runs.
    assert tma[0]['loss'] == pytest.approx(sts[0]['loss'], rel=1e-6)
    key = 'sts/target_net/update_fraction'
    # The teacher reads its statistics at the logger's interval (every
    # step here): step 1 is the initial copy, which draws no fragment;
    # afterwards TMA updates every fragment and STS about 1 - 0.7 of them.
    assert [r[key] for r in tma[1:]] == [1.0] * (len(tma) - 1)
    fractions = [r[key] for r in sts[1:]]
    assert fractions
    assert sum(fractions) / len(fractions) == pytest.approx(0.3, abs=0.1)
    assert max(fractions) < 1.0


def test_configs_differ_only_in_the_smoothing():
    tma, sts = (
        Config.fromfile(byol_digits.PRETRAIN_CONFIGS[run]).to_dict()
        for run in ('TMA', 'STS'))
    hooks = [h.pop('custom_hooks') for h in (tma, sts)]
    assert tma == sts
    assert [[h['type'] for h in hs] for hs in hooks] == \
        [['SpatialTemporalSmoothingHook']] * 2
    assert [hs[0]['preserve_prob'] for hs in hooks] == [0.0, 0.7]
    # Digits are not mirror-symmetric: no flip among the views' transforms.
    views = tma['train_dataloader']['dataset']['pipeline'][0]['transforms']
    assert len(views) == 2
    assert all(t['type'] != 'RandomFlip' for view in views for t in view)


def test_bad_arguments():
    with pytest.raises(SystemExit):
        byol_digits.parse_args(['--probe-epochs', '0'])
    with pytest.raises(SystemExit):
        byol_digits.parse_args(['--pretrain-epochs', '-1'])
    with pytest.raises(SystemExit):
        byol_digits.parse_args(['--threads', '0'])
