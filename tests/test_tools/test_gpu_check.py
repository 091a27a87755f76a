"""tools/benchmarks/gpu_check.sh on a machine without CUDA, and the wiring of
its Python helper checked on CPU (CUDA calls stubbed, tiny sizes)."""
import importlib.util
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT

SCRIPT = osp.join(REPO_ROOT, 'tools', 'benchmarks', 'gpu_check.sh')
HELPER = osp.join(REPO_ROOT, 'tools', 'benchmarks', 'gpu_check.py')


def _load_helper():
    spec = importlib.util.spec_from_file_location('gpu_check', HELPER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _load_helper()


def test_skips_without_cuda(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='',
               GPU_CHECK_DIR=str(tmp_path / 'out'))
    env.setdefault('PYTHON', osp.join(REPO_ROOT, '.venv', 'bin', 'python'))
    if not os.access(env['PYTHON'], os.X_OK):
        env['PYTHON'] = 'python3'
    done = subprocess.run(['bash', SCRIPT], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 'skipped: no CUDA' in done.stdout
    assert not (tmp_path / 'out').exists()


def test_helper_skips_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    for command in ('step-time', 'sync'):
        assert gpu_check.main([command, '--out', 'unused.json']) == 0
        assert f'{command}: skipped: no CUDA' in capsys.readouterr().out


@pytest.mark.skipif(shutil.which('shellcheck') is None,
                    reason='shellcheck is not installed')
def test_shellcheck_clean():
    done = subprocess.run(['shellcheck', SCRIPT], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout


def test_uses_the_benchmark_device_option():
    with open(SCRIPT) as f:
        text = f.read()
    assert 'benchmark_update.py' in text and '--device cuda:0' in text
    help_text = subprocess.run(
        [osp.join(REPO_ROOT, '.venv', 'bin', 'python'),
         osp.join(REPO_ROOT, 'tools', 'benchmarks', 'benchmark_update.py'),
         '--help'], capture_output=True, text=True).stdout
    assert '--device' in help_text and '--json' in help_text


def test_runs_the_tests_that_need_cuda():
    """The script runs the tests marked by ``requires_cuda``, and every test
    that checks for CUDA itself uses it."""
    with open(SCRIPT) as f:
        assert '-m cuda tests' in f.read()
    done = subprocess.run(
        [sys.executable, '-m', 'pytest', '--collect-only', '-q', '-m', 'cuda',
         'tests'], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    marked = {line.split('::')[0] for line in done.stdout.splitlines()
              if '::' in line}
    checking = set()
    for root, _, names in os.walk(osp.join(REPO_ROOT, 'tests')):
        for name in names:
            if name.startswith('test_') and name.endswith('.py'):
                with open(osp.join(root, name)) as f:
                    if 'torch.cuda.is_available()' in f.read():
                        checking.add(
                            osp.relpath(osp.join(root, name), REPO_ROOT))
    checking.discard(osp.relpath(__file__, REPO_ROOT))  # it monkeypatches
    assert marked and marked >= checking


@pytest.fixture
def cpu_as_cuda(monkeypatch):
    """Run the helper's CUDA code paths on CPU."""
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda *a: 'cpu')
    monkeypatch.setattr(torch.cuda, 'empty_cache', lambda: None)
    modes = []
    monkeypatch.setattr(torch.cuda, 'set_sync_debug_mode', modes.append)
    monkeypatch.setattr(torch.nn.Module, 'cuda', lambda self, *a: self)
    return modes


def test_step_time_wiring_on_cpu(cpu_as_cuda, tmp_path):
    """Both runs build from the BYOL config, the STS run's teacher is STS,
    the baseline's mmpretrain's CosineEMA, and a ratio is reported."""
    args = gpu_check.parse_args([
        'step-time', '--out', str(tmp_path / 's.json'), '--work-dir',
        str(tmp_path), '--warmup', '1', '--iters', '1', '--repeats', '1',
        '--batch-size', '2', '--image-size', '64'
    ])
    result = gpu_check.step_time(args)
    assert set(result['ms_per_iter']) == {
        'without STS hook (CosineEMA)', 'with STS hook'}
    assert result['ratio_with_over_without'] > 0


def test_sync_check_wiring_on_cpu(cpu_as_cuda, tmp_path):
    args = gpu_check.parse_args(
        ['sync', '--out', str(tmp_path / 'sync.json'), '--depth', '18',
         '--updates', '1'])
    result = gpu_check.sync_check(args)
    assert len(result['cases']) == 12
    assert cpu_as_cuda == ['error', 'default'] * 12
    # With a NaN in the student the teacher stays finite ('skip' and
    # 'raise' both skip the update); 'raise' raises, in the update or when
    # the statistics are read.
    for case in result['cases']:
        assert case['teacher_finite']
        raised = {case['update_raised'], case['pop_statistics_raised']}
        if case['nan_in_student'] and case['nonfinite'] == 'raise':
            assert 'NonFiniteStudentError' in raised
        else:
            assert raised == {None}
    assert result['passed']
    gpu_check._dump(result, str(tmp_path / 'sync.json'))
    text = gpu_check.summary(gpu_check.parse_args(
        ['summary', '--dir', str(tmp_path)]))
    assert '(PASS)' in text
    assert json.loads((tmp_path / 'sync.json').read_text())['passed']
