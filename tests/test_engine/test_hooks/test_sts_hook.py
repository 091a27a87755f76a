"""SpatialTemporalSmoothingHook in mmpretrain's own BYOL and MoCo v2 configs,
trained by MMEngine's runner.

Every teacher update of the run is recorded and checked against the STS
rule computed here: each tensor is either kept bitwise or moved by
``torch.lerp(before, student, momentum)`` with the momentum of the host
model's schedule, and the updated tensors are those the counter-based masks
of (runner seed, teacher name, step) select.
"""
import glob
import json
import math
import os.path as osp
import uuid

import pytest
import torch
from conftest import (BYOL_CFG, MOCOV2_CFG, TeacherUpdateRecorder,
                      assert_follows_sts, small_selfsup_cfg)
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from mmpretrain.models.utils import CosineEMA
from mmpretrain.registry import MODELS

from mmsts.engine.hooks import SpatialTemporalSmoothingHook
from mmsts.models import SpatialTemporalSmoothing
from mmsts.smoothing import FragmentMaskGenerator, stream_id


def byol_momentum(base, end=0.0):
    """mmpretrain ``CosineEMA``: ``end - (end - base) * (cos(pi k / K) + 1)
    / 2`` at update count ``k`` of ``K = max_iters``."""

    def momentum_at(step, max_iters):
        return end - (end - base) * (math.cos(math.pi * step / max_iters) +
                                     1) / 2

    return momentum_at


def constant_momentum(value):
    return lambda step, max_iters: value


# (config, teacher attribute, preserve_prob, expected momentum schedule)
CASES = {
    'byol': (BYOL_CFG, 'target_net', 0.7, byol_momentum(0.01)),
    'mocov2': (MOCOV2_CFG, 'encoder_k', 0.5, constant_momentum(0.001)),
}


def run_with_recorder(case, imagenet_root, work_dir):
    base, name, prob, momentum_at = CASES[case]
    cfg = small_selfsup_cfg(
        base,
        str(work_dir),
        imagenet_root,
        max_epochs=2,
        hooks=[
            dict(
                type='SpatialTemporalSmoothingHook',
                preserve_prob=prob,
                log_interval=1)
        ])
    cfg.experiment_name = f'{case}-{uuid.uuid4().hex}'
    runner = Runner.from_cfg(cfg)
    recorder = TeacherUpdateRecorder(lambda r: r.model.get_submodule(name),
                                     momentum_at)
    runner.register_hook(recorder)
    runner.train()
    return cfg, runner, recorder


@pytest.fixture(scope='module', params=sorted(CASES))
def sts_run(request, imagenet_root, tmp_path_factory):
    case = request.param
    cfg, runner, recorder = run_with_recorder(case, imagenet_root,
                                              tmp_path_factory.mktemp(case))
    return case, cfg, runner, recorder


def test_host_momentum_is_the_one_expected(sts_run):
    """Guard the expectations below: mmpretrain's configs set these."""
    case, cfg, runner, _ = sts_run
    if case == 'byol':
        assert cfg.model.base_momentum == 0.01
    else:
        assert cfg.model.momentum == 0.001


def test_teacher_follows_sts_rule(sts_run):
    case, _, runner, recorder = sts_run
    _, name, prob, _ = CASES[case]
    teacher = runner.model.get_submodule(name)
    assert type(teacher) is SpatialTemporalSmoothing
    assert runner.max_iters == 4  # 8 images, batch 4, 2 epochs
    # mmpretrain updates the teacher once per forward, from update count 0.
    assert len(recorder.calls) == runner.max_iters
    assert int(teacher.steps) == runner.max_iters
    masks = FragmentMaskGenerator(
        prob, seed=runner.seed, stream=stream_id(name))
    seen = assert_follows_sts(recorder.calls, masks)
    # The run must tell the two outcomes apart for the check to mean much.
    total = sum(seen.values())
    assert seen['kept'] > 0 and seen['updated'] > 0
    assert seen['either'] <= 0.1 * total, seen
    assert seen['neither'] == 0
    # Masks of another seed do not fit: the check above discriminates.
    with pytest.raises(AssertionError):
        assert_follows_sts(
            recorder.calls,
            FragmentMaskGenerator(
                prob, seed=runner.seed + 1, stream=stream_id(name)))
    expected_fraction = sum(
        masks.update_flags(c['step'], len(c['kinds'])).sum()
        for c in recorder.calls[1:]) / total
    assert abs(expected_fraction - (1 - prob)) < 0.15


def test_checkpoint_keys_unchanged(sts_run, tmp_path):
    case, cfg, runner, _ = sts_run
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        vanilla = MODELS.build(cfg.model)
    _, name, _, _ = CASES[case]
    host = vanilla.get_submodule(name)
    assert not isinstance(host, SpatialTemporalSmoothing)
    assert isinstance(host, CosineEMA) == (case == 'byol')
    assert list(runner.model.state_dict()) == list(vanilla.state_dict())
    ckpt = torch.load(osp.join(cfg.work_dir, 'epoch_2.pth'))
    assert list(ckpt['state_dict']) == list(vanilla.state_dict())


def test_statistics_logged(sts_run):
    case, cfg, runner, recorder = sts_run
    _, name, prob, momentum_at = CASES[case]
    last = recorder.calls[-1]
    masks = FragmentMaskGenerator(
        prob, seed=runner.seed, stream=stream_id(name))
    flags = masks.update_flags(last['step'], len(last['kinds']))
    hub = runner.message_hub
    prefix = f'train/sts/{name}'
    assert hub.get_scalar(f'{prefix}/momentum').current() == momentum_at(
        last['step'], runner.max_iters)
    assert hub.get_scalar(f'{prefix}/update_fraction').current() == \
        pytest.approx(flags.mean())
    assert hub.get_scalar(f'{prefix}/nonfinite_steps').current() == 0

    # The distance between the teacher and the student it was given at the
    # last update (before that iteration's optimizer step).
    distance = hub.get_scalar(f'{prefix}/distance').current()
    assert distance > 0
    assert distance == pytest.approx(last['distance'], rel=1e-4)

    # And in the JSON scalars log, once per iteration (LoggerHook interval
    # 1): iteration i logs the statistics of update count i - 1.
    (path, ) = glob.glob(
        osp.join(cfg.work_dir, '*', 'vis_data', 'scalars.json'))
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    records = [r for r in records if 'iter' in r and 'loss' in r]
    assert [r['iter'] for r in records] == [1, 2, 3, 4]
    key = f'sts/{name}'
    for record, call in zip(records, recorder.calls):
        step = call['step']
        assert f'{key}/distance' in record
        if step == 0:  # the copy: nothing drawn, so no fraction (not 0)
            assert f'{key}/update_fraction' not in record
            continue
        assert record[f'{key}/momentum'] == pytest.approx(
            momentum_at(step, runner.max_iters), rel=1e-12)
        expected = masks.update_flags(step, len(call['kinds'])).mean()
        assert record[f'{key}/update_fraction'] == pytest.approx(expected)


# ----------------------------------------------------------------------
# The hook is wiring: overrides only, one hook per teacher
# ----------------------------------------------------------------------
class _Runner:
    """What ``before_run`` reads of a runner."""

    def __init__(self, model):
        self.model = model


def _fixmatch(**teacher):
    return MODELS.build(
        dict(
            type='FixMatch',
            backbone=dict(type='WideResNet', depth=10, widen_factor=1),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=3, in_channels=64),
            teacher=teacher))


def test_hook_overrides_only_what_is_set():
    """A FixMatch STS teacher keeps its own settings; the hook changes only
    the momentum it was given (it used to reset the rest to its
    defaults)."""
    model = _fixmatch(
        preserve_prob=0.9,
        momentum=0.001,
        granularity='channel',
        nonfinite='raise',
        log_interval=7)
    teacher = model.teacher
    SpatialTemporalSmoothingHook(momentum=0.02).before_run(_Runner(model))
    assert model.teacher is teacher  # reconfigured, not re-wrapped
    assert teacher.settings == dict(
        preserve_prob=0.9,
        momentum=0.02,
        momentum_schedule='constant',
        end_momentum=0.0,
        granularity='channel',
        seed=None,
        nonfinite='raise',
        buffers='copy')
    assert teacher.smoother.preserve_prob == 0.9
    assert teacher.smoother.granularity == 'channel'
    assert teacher.smoother.nonfinite == 'raise'
    assert teacher.momentum == 0.02
    assert teacher.log_interval == 7
    assert teacher.name == 'teacher'  # the masks' stream is unchanged


def test_hook_without_options_changes_nothing():
    model = _fixmatch(preserve_prob=0.3, momentum=0.004, seed=5)
    before = dict(model.teacher.settings)
    SpatialTemporalSmoothingHook().before_run(_Runner(model))
    assert model.teacher.settings == before


def test_two_hooks_on_one_teacher_fail_at_start_up():
    model = _fixmatch(preserve_prob=0.5, momentum=0.001)
    first = SpatialTemporalSmoothingHook(preserve_prob=0.7)
    first.before_run(_Runner(model))
    with pytest.raises(ValueError,
                       match='Two SpatialTemporalSmoothingHooks.*`teacher`'):
        SpatialTemporalSmoothingHook(preserve_prob=0.2).before_run(
            _Runner(model))
    assert model.teacher.settings['preserve_prob'] == 0.7
    # The same hook running again (e.g. a second `train()`) is fine.
    first.before_run(_Runner(model))


def test_two_hooks_in_one_config_fail_before_training(imagenet_root,
                                                      tmp_path):
    cfg = small_selfsup_cfg(
        BYOL_CFG,
        str(tmp_path),
        imagenet_root,
        max_epochs=1,
        hooks=[
            dict(type='SpatialTemporalSmoothingHook', preserve_prob=0.7),
            dict(type='SpatialTemporalSmoothingHook', momentum=0.02)
        ])
    cfg.experiment_name = f'two-hooks-{uuid.uuid4().hex}'
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match='target_net'):
        runner.train()
    assert runner.iter == 0
