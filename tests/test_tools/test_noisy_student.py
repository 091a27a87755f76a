"""tools/noisy_student.py and tools/pseudo_label.py: a tiny 2-round Noisy
Student run on generated Fashion-MNIST files, resuming, and bad input."""
import importlib.util
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, make_fashion_mnist

STS_CONFIG = osp.join(REPO_ROOT, 'configs', 'noisy_student',
                      'noisy-student_wrn10-1_sts_1xb64-1k_fashion-mnist-'
                      '1000labels.py')
TINY = ['train_cfg.max_iters=2', 'train_cfg.val_interval=2',
        'default_hooks.checkpoint.interval=2']


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(
        name, osp.join(REPO_ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


noisy_student = _load_tool('noisy_student')


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A directory with the repository's configs and a tiny Fashion-MNIST
    (100 training images per class: the configs' 1,000 labels), as the
    working directory, and a student config with threshold 0 (a 2-step
    teacher is not confident)."""
    make_fashion_mnist(str(tmp_path / 'data' / 'fashion_mnist'),
                       train_per_class=100, num_test=20)
    os.symlink(osp.join(REPO_ROOT, 'configs'), str(tmp_path / 'configs'))
    config = tmp_path / 'student.py'
    config.write_text(f'_base_ = [{STS_CONFIG!r}]\n'
                      'noisy_student = dict(threshold=0.0, batch_size=250)\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path, str(config)


def in_process(calls):
    """Run the tools in this process (the driver's default is a
    subprocess per step), recording the calls."""
    tools = {name: _load_tool(name) for name in ('train', 'pseudo_label')}

    def run_tool(tool, args):
        calls.append((tool, list(args)))
        tools[tool].main(args)

    return run_tool


def test_two_rounds_resume_and_the_smoothed_student_becomes_the_teacher(
        workspace):
    """A run killed in round 2's training resumes without redoing rounds 0
    and 1; at the end every round's teacher is the previous round's saved
    model, which is the STS average of its student."""
    root, config = workspace
    calls = []
    run_tool = in_process(calls)

    def crash_in_round_2(tool, args):
        if tool == 'train' and 'round2' in args[args.index('--work-dir') + 1]:
            raise RuntimeError('killed')
        run_tool(tool, args)

    with pytest.raises(RuntimeError, match='killed'):
        noisy_student.NoisyStudent(
            config, str(root / 'ns'), TINY, run_tool=crash_in_round_2).run()
    assert [c[0] for c in calls] == [
        'train', 'pseudo_label', 'train', 'pseudo_label'
    ]
    calls.clear()
    driver = noisy_student.NoisyStudent(
        config, str(root / 'ns'), cfg_options=TINY, run_tool=run_tool)
    records = driver.run()
    # Only round 2 is left: its pseudo-labels (rewritten: the file is
    # cheap and its chunks are reused) and its training.
    assert [c[0] for c in calls] == ['pseudo_label', 'train']
    assert [r['round'] for r in records] == [0, 1, 2]
    for r in (1, 2):
        # Round r's teacher is round r - 1's last checkpoint ...
        assert records[r]['teacher'] == records[r - 1]['checkpoint']
        header = json.loads(str(np.load(records[r]['pseudo_labels'])
                                ['header']))
        assert header['meta']['checkpoint'] == records[r - 1]['checkpoint']
        assert header['meta']['num_unlabeled'] == 1000
    # ... and round 1's checkpoint holds the STS average of round 1's
    # student as its model (EMAHook swaps it in), not the raw student.
    ckpt = torch.load(records[1]['checkpoint'], map_location='cpu',
                      weights_only=False)
    assert int(ckpt['ema_state_dict']['steps']) == 2
    key = 'head.fc.weight'
    assert not torch.equal(ckpt['state_dict'][key],
                           ckpt['ema_state_dict'][f'module.{key}'])
    assert any(k.startswith('sts/')
               for k in ckpt['message_hub']['runtime_info'])

    # Run again: every round is done, nothing is retrained.
    calls.clear()
    assert driver.run() == records and calls == []


@pytest.mark.parametrize('text,message', [
    ('noisy_student = dict(rounds=0)', r'`noisy_student.rounds` must be an '
     r'integer >= 1, but got 0'),
    ('noisy_student = dict(threshold=1.5)', r'`threshold` must be a number '
     r'in \[0, 1\], but got 1\.5'),
    ("noisy_student = dict(teacher_config='nowhere.py')",
     r"`noisy_student.teacher_config` must be a config file, but got "
     r"'nowhere.py'"),
    ('noisy_student = dict(epochs=3)', r"Unknown keys \['epochs'\] in "
     r'`noisy_student`'),
])
def test_bad_settings_fail_at_start_up(workspace, text, message):
    root, _ = workspace
    config = root / 'bad.py'
    config.write_text(f'_base_ = [{STS_CONFIG!r}]\n{text}\n')
    with pytest.raises(ValueError, match=message):
        noisy_student.NoisyStudent(str(config), str(root / 'ns'))


def test_a_given_teacher_checkpoint_replaces_round_0(workspace):
    """With ``teacher_checkpoint``, round 0 trains nothing and round 1's
    pseudo-labels come from the given checkpoint; a missing file is refused
    at start-up."""
    root, config = workspace
    given = root / 'teacher.pth'
    given.write_bytes(b'weights')
    calls = []

    def fake_tool(tool, args):
        calls.append((tool, list(args)))
        if tool == 'train':  # what MMEngine leaves in the work dir
            work_dir = args[args.index('--work-dir') + 1]
            with open(osp.join(work_dir, 'last_checkpoint'), 'w') as f:
                f.write(osp.join(work_dir, 'iter_2.pth'))

    records = noisy_student.NoisyStudent(
        config, str(root / 'ns'), TINY, rounds=1,
        teacher_checkpoint=str(given), run_tool=fake_tool).run()
    assert [c[0] for c in calls] == ['pseudo_label', 'train']
    assert records[0] == dict(round=0, checkpoint=str(given))
    assert calls[0][1][1] == str(given)  # the teacher that labels round 1
    assert records[1]['teacher'] == str(given)
    assert records[1]['checkpoint'] == str(root / 'ns' / 'round1' /
                                           'iter_2.pth')
    with pytest.raises(ValueError, match=r"--teacher-checkpoint must be a "
                       r"checkpoint file, but got '.*nowhere\.pth'"):
        noisy_student.NoisyStudent(config, str(root / 'ns2'),
                                   teacher_checkpoint=str(root /
                                                          'nowhere.pth'))


def test_the_teacher_normalises_as_in_training(workspace):
    """The pseudo-labeling teacher gets the config's top-level
    ``data_preprocessor`` (mmpretrain's mean/std), as MMEngine's Runner
    gives it in training; without it the teacher saw raw 0-255 pixels and
    its labels were mostly wrong."""
    from mmengine.config import Config
    root, config = workspace
    pseudo_label = _load_tool('pseudo_label')
    cfg = Config.fromfile(config)
    expected = torch.tensor(cfg.data_preprocessor.mean).view(-1)
    model, _ = pseudo_label.build(cfg, _random_checkpoint(cfg, root))
    assert torch.allclose(model.data_preprocessor.mean.view(-1), expected)
    assert not torch.allclose(expected, torch.zeros_like(expected))


def test_the_teacher_runs_on_the_process_device(workspace, monkeypatch):
    """Under ``torchrun`` each process labels its chunks on its own GPU:
    the teacher goes to MMEngine's ``get_device()`` ('meta' stands in for
    a GPU here), as the runner puts a model in training; it stayed on the
    host before."""
    from mmengine.config import Config
    root, config = workspace
    pseudo_label = _load_tool('pseudo_label')
    cfg = Config.fromfile(config)
    checkpoint = _random_checkpoint(cfg, root)
    monkeypatch.setattr(pseudo_label, 'get_device', lambda: 'meta')
    model, _ = pseudo_label.build(cfg, checkpoint)
    assert {p.device.type for p in model.parameters()} == {'meta'}
    assert model.data_preprocessor.device.type == 'meta'


def _random_checkpoint(cfg, root):
    from mmpretrain.registry import MODELS
    model = MODELS.build(dict(cfg.model,
                              data_preprocessor=cfg.data_preprocessor))
    path = str(root / 'random.pth')
    torch.save({'state_dict': model.state_dict()}, path)
    return path
