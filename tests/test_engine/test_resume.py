"""Resuming a BYOL + STS run continues it exactly, through MMEngine's own
weights-only checkpoint loading on torch >= 2.6.

A run of 2 epochs is compared with a run interrupted after epoch 1 and
resumed by a new runner with ``resume=True`` (what ``tools/train.py
--resume`` does): the model (student, teacher, ``steps``) and the momentum
must be bitwise identical.
"""
import argparse
import io
import os
import os.path as osp
import pickle
import subprocess
import sys
import uuid

import pytest
import torch
from conftest import REPO_ROOT, BYOL_CFG, StopAfterEpoch, small_selfsup_cfg
from mmengine.hooks import Hook
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner import Runner, set_random_seed
from mmengine.utils import digit_version

from mmsts.models import SpatialTemporalSmoothing

STS_HOOK = dict(type='SpatialTemporalSmoothingHook', preserve_prob=0.7)
MOMENTUM_KEY = 'train/sts/target_net/momentum'


class ReseedEachEpoch(Hook):
    """Seed the global RNGs from (seed, epoch) before every epoch.

    MMEngine does not checkpoint the global random state, which the random
    augmentations of BYOL's pipeline draw from; seeding each epoch makes an
    epoch's images independent of the epochs run before in the process, so
    that the comparison below is about the model's state only.
    """

    priority = 'HIGHEST'

    def before_train_epoch(self, runner):
        set_random_seed(runner.seed + runner.epoch)


def build_runner(work_dir, imagenet_root, resume=False, extra_hooks=()):
    cfg = small_selfsup_cfg(
        BYOL_CFG, str(work_dir), imagenet_root, max_epochs=2, hooks=[STS_HOOK])
    cfg.experiment_name = f'resume-{uuid.uuid4().hex}'
    cfg.resume = resume  # `--resume`: the latest checkpoint of work_dir
    runner = Runner.from_cfg(cfg)
    runner.register_hook(ReseedEachEpoch())
    for hook in extra_hooks:
        runner.register_hook(hook)
    return runner


@pytest.fixture(scope='module')
def runs(imagenet_root, tmp_path_factory):
    straight = build_runner(tmp_path_factory.mktemp('straight'), imagenet_root)
    straight.train()

    work_dir = tmp_path_factory.mktemp('interrupted')
    first = build_runner(
        work_dir, imagenet_root, extra_hooks=[StopAfterEpoch(1)])
    first.train()
    assert first.iter == 2 and first.epoch == 1
    assert osp.isfile(osp.join(work_dir, 'epoch_1.pth'))

    loads = []
    original_load = torch.load

    def spy_load(*args, **kwargs):
        loads.append(kwargs.get('weights_only'))
        return original_load(*args, **kwargs)

    resumed = build_runner(work_dir, imagenet_root, resume=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, 'load', spy_load)
        resumed.train()
    return dict(
        straight=straight,
        first=first,
        resumed=resumed,
        loads=loads,
        work_dir=str(work_dir))


def test_resume_went_through_weights_only_load(runs):
    resumed = runs['resumed']
    assert resumed._has_loaded and resumed._resume
    # MMEngine called torch.load without turning weights-only loading off,
    # and torch's default is weights-only here.
    assert runs['loads'] and all(w in (None, True) for w in runs['loads'])
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ
    assert digit_version(torch.__version__) >= digit_version('2.6.0')


def test_resumed_run_is_bitwise_identical(runs):
    straight, resumed = runs['straight'], runs['resumed']
    assert straight.iter == resumed.iter == 4
    assert straight.epoch == resumed.epoch == 2
    t_straight = straight.model.target_net
    t_resumed = resumed.model.target_net
    assert type(t_resumed) is SpatialTemporalSmoothing
    assert int(t_resumed.steps) == int(t_straight.steps) == 4

    state_straight = straight.model.state_dict()
    state_resumed = resumed.model.state_dict()
    assert list(state_straight) == list(state_resumed)
    different = [
        k for k in state_straight
        if not torch.equal(state_straight[k], state_resumed[k])
    ]
    assert not different, different[:5]

    # The last update used the same momentum, and drew the same masks.
    assert t_resumed.smoother.last_momentum == \
        t_straight.smoother.last_momentum
    assert resumed.message_hub.get_scalar(MOMENTUM_KEY).current() == \
        straight.message_hub.get_scalar(MOMENTUM_KEY).current()
    assert t_resumed.smoother.seed == t_straight.smoother.seed


def test_resume_is_not_trivially_identical(runs):
    """The second epoch changed the teacher (so the comparison above is not
    one of two copies of the first checkpoint)."""
    first, resumed = runs['first'], runs['resumed']
    assert int(first.model.target_net.steps) == 2
    after_epoch_1 = first.model.target_net.state_dict()
    final = resumed.model.target_net.state_dict()
    assert any(not torch.equal(after_epoch_1[k], final[k]) for k in final
               if k.startswith('module.'))


def run_python(code):
    env = {
        k: v
        for k, v in os.environ.items() if not k.startswith('TORCH_FORCE_')
    }
    env['OMP_NUM_THREADS'] = '1'
    return subprocess.run([sys.executable, '-c', code],
                          cwd=REPO_ROOT,
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=300)


def test_allow_list_is_necessary_and_sufficient(runs):
    """In a fresh process with the whole stack but mmsts, MMEngine's own
    checkpoint loading (the resume path) refuses the checkpoint on torch
    >= 2.6; after ``import mmsts`` the same call loads it, weights-only."""
    ckpt = osp.join(runs['work_dir'], 'epoch_1.pth')
    code = f"""
import pickle, sys
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import _load_checkpoint
from mmpretrain.utils import register_all_modules
register_all_modules()
try:
    _load_checkpoint({ckpt!r}, map_location='cpu')
except pickle.UnpicklingError as e:
    print('REFUSED', str(e).splitlines()[0])
else:
    print('LOADED without mmsts')
assert 'mmsts' not in sys.modules

import mmsts
ckpt = _load_checkpoint({ckpt!r}, map_location='cpu')
loss = ckpt['message_hub']['log_scalars']['train/loss']
assert isinstance(loss, HistoryBuffer), type(loss)
assert loss.mean() == loss.mean()  # its statistics methods are restored
assert int(ckpt['state_dict']['target_net.steps']) == 2
print('LOADED with mmsts, epoch', ckpt['meta']['epoch'])
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # MMEngine prints a line per load; keep ours.
    lines = [
        line for line in proc.stdout.splitlines()
        if line.startswith(('REFUSED', 'LOADED'))
    ]
    assert len(lines) == 2, proc.stdout
    assert lines[0].startswith('REFUSED Weights only load failed'), lines[0]
    assert lines[1] == 'LOADED with mmsts, epoch 1'


class _Getattr:
    """Pickles as ``getattr(owner, name)``."""

    def __init__(self, owner, name):
        self.owner, self.name = owner, name

    def __reduce__(self):
        return getattr, (self.owner, self.name)


@pytest.mark.parametrize(
    'payload', [
        argparse.Namespace(a=1),
        _Getattr(HistoryBuffer, '__init__'),
        _Getattr(io.BytesIO, 'write'),
    ],
    ids=['unlisted-class', 'other-attribute', 'other-owner'])
def test_allow_list_stays_narrow(payload):
    """mmsts does not turn weights-only loading into full unpickling."""
    buffer = io.BytesIO()
    torch.save({'payload': payload}, buffer)
    buffer.seek(0)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(buffer)
    # The statistics methods themselves are allowed.
    buffer = io.BytesIO()
    torch.save({'m': _Getattr(HistoryBuffer, 'mean')}, buffer)
    buffer.seek(0)
    assert torch.load(buffer)['m'] is HistoryBuffer.mean
