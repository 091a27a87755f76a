"""Tests of the STS teacher wrapper
(:class:`mmsts.models.SpatialTemporalSmoothing`).

References are MMEngine's ``ExponentialMovingAverage``, mmpretrain's
``CosineEMA`` and explicit arithmetic, never the code under test.
"""
import copy
import gc
import math
import uuid
import warnings
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
from mmengine.logging import MessageHub
from mmengine.model import ExponentialMovingAverage
from mmengine.registry import DefaultScope
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmpretrain.models.utils import CosineEMA
from mmpretrain.registry import MODELS

from mmsts.models import SpatialTemporalSmoothing
from mmsts.smoothing import NonFiniteStudentError

GRANULARITIES = ('tensor', 'channel', 'element')


class ToyNet(nn.Module):
    """Conv + BN + MLP: float parameters and buffers and an int buffer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        x = self.bn(self.conv(x)).relu().mean((2, 3))
        return self.fc2(self.fc1(x).relu())


def toy_net(seed=0):
    torch.manual_seed(seed)
    return ToyNet()


@torch.no_grad()
def perturb(model, gen):
    """A training step stand-in: move the weights, update BN statistics."""
    for p in model.parameters():
        p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model.train()
    model(torch.randn(2, 3, 6, 6, generator=gen))


@torch.no_grad()
def move_far(student, teacher, gen):
    """Put every student weight at least 1 away from the teacher's."""
    for s, t in zip(student.parameters(), teacher.parameters()):
        sign = torch.where(torch.rand(t.shape, generator=gen) < 0.5, -1.0, 1.0)
        s.copy_(t + sign * (1 + torch.rand(t.shape, generator=gen)))


def assert_same_state(actual, expected, exact=False, msg=''):
    a_state, e_state = actual.state_dict(), expected.state_dict()
    assert list(a_state) == list(e_state)
    for key in e_state:
        if exact or not e_state[key].is_floating_point():
            assert torch.equal(a_state[key], e_state[key]), f'{key} {msg}'
        else:
            torch.testing.assert_close(
                a_state[key],
                e_state[key],
                rtol=1e-5,
                atol=1e-6,
                msg=f'{key} {msg}')


@pytest.fixture
def message_hub():
    """A fresh current MessageHub."""
    hub = MessageHub.get_instance(f'test_averaged_model_{uuid.uuid4().hex}')
    assert MessageHub.get_current_instance() is hub
    return hub


# ----------------------------------------------------------------------
# Rule semantics
# ----------------------------------------------------------------------
@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_preserve_prob_zero_is_mmengine_ema(granularity):
    """Including the first-update copy and the copy of the buffers."""
    gen = torch.Generator().manual_seed(0)
    student = toy_net()
    sts = SpatialTemporalSmoothing(
        student, preserve_prob=0.0, momentum=0.05, granularity=granularity)
    ema = ExponentialMovingAverage(student, momentum=0.05)
    for step in range(8):
        perturb(student, gen)  # the first update must copy these
        sts.update_parameters(student)
        ema.update_parameters(student)
        assert_same_state(sts, ema, msg=f'at step {step}')
    assert int(sts.steps) == 8
    assert not torch.equal(sts.module.fc1.weight, student.fc1.weight)
    assert torch.equal(sts.module.bn.running_var, student.bn.running_var)


@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_update_buffers_is_mmengine_ema(granularity):
    """``update_buffers=True`` smooths float buffers and leaves int buffers
    (``num_batches_tracked``) alone after the first copy, like MMEngine."""
    gen = torch.Generator().manual_seed(0)
    student = toy_net()
    sts = SpatialTemporalSmoothing(
        student,
        preserve_prob=0.0,
        momentum=0.2,
        granularity=granularity,
        update_buffers=True)
    ema = ExponentialMovingAverage(student, momentum=0.2, update_buffers=True)
    for step in range(6):
        perturb(student, gen)
        running_mean = sts.module.bn.running_mean.clone()
        sts.update_parameters(student)
        ema.update_parameters(student)
        assert_same_state(sts, ema, msg=f'at step {step}')
        if step > 0:
            torch.testing.assert_close(
                sts.module.bn.running_mean,
                0.8 * running_mean + 0.2 * student.bn.running_mean)
    assert int(sts.module.bn.num_batches_tracked) == 1  # the first copy
    assert int(student.bn.num_batches_tracked) == 6


@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_preserve_prob_one_keeps_teacher_but_copies_buffers(granularity):
    gen = torch.Generator().manual_seed(0)
    student = toy_net()
    sts = SpatialTemporalSmoothing(
        student, preserve_prob=1.0, momentum=0.5, granularity=granularity)
    sts.update_parameters(student)
    first = copy.deepcopy(sts.module)
    for _ in range(4):
        perturb(student, gen)
        sts.update_parameters(student)
    for p, q in zip(sts.module.parameters(), first.parameters()):
        assert torch.equal(p, q)
    for b, s in zip(sts.module.buffers(), student.buffers()):
        assert torch.equal(b, s)


@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_momentum_one_preserve_zero_copies_student(granularity):
    gen = torch.Generator().manual_seed(0)
    student = toy_net()
    sts = SpatialTemporalSmoothing(
        student, preserve_prob=0.0, momentum=1.0, granularity=granularity)
    for _ in range(3):
        perturb(student, gen)
        sts.update_parameters(student)
        for key, value in student.state_dict().items():
            assert torch.equal(sts.module.state_dict()[key], value), key


def _fragments(tensor, granularity):
    if granularity == 'tensor' or tensor.dim() == 0:
        return [tensor]
    if granularity == 'channel':
        return list(tensor)
    return list(tensor.reshape(-1))


@pytest.mark.parametrize('granularity,steps',
                         [('tensor', 250), ('channel', 40), ('element', 4)])
def test_fragments_preserved_or_lerped_at_rate(granularity, steps):
    preserve_prob, momentum = 0.7, 0.5
    gen = torch.Generator().manual_seed(0)
    student = toy_net()
    sts = SpatialTemporalSmoothing(
        student,
        preserve_prob=preserve_prob,
        momentum=momentum,
        granularity=granularity,
        seed=2,
        log_interval=10**6)  # the test reads the statistics itself
    sts.update_parameters(student)  # the copy
    sts.pop_statistics()
    updated = total = 0
    for _ in range(steps):
        move_far(student, sts.module, gen)
        old = [p.clone() for p in sts.module.parameters()]
        sts.update_parameters(student)
        for o, n, s in zip(old, sts.module.parameters(), student.parameters()):
            expected = torch.lerp(o, s, momentum)
            for fo, fn, fe in zip(
                    _fragments(o, granularity), _fragments(n, granularity),
                    _fragments(expected, granularity)):
                preserved = torch.equal(fn, fo)
                lerped = torch.allclose(fn, fe, rtol=1e-6, atol=1e-6)
                assert preserved != lerped, 'a fragment is partly updated'
                updated += int(lerped)
                total += 1
    fraction = updated / total
    tolerance = 7 * math.sqrt(preserve_prob *
                              (1 - preserve_prob) / total) + 1 / 65536
    assert abs(fraction - (1 - preserve_prob)) <= tolerance, (fraction, total)
    stats = sts.pop_statistics()
    assert stats['update_fraction'] == pytest.approx(fraction, abs=1e-12)
    assert stats['momentum'] == momentum


def test_distance_statistic():
    gen = torch.Generator().manual_seed(0)
    student = toy_net()
    sts = SpatialTemporalSmoothing(student, preserve_prob=0.5, momentum=0.1)
    for _ in range(3):
        perturb(student, gen)
        sts.update_parameters(student)
    teacher = torch.cat([p.flatten() for p in sts.module.parameters()])
    source = torch.cat([p.detach().flatten() for p in student.parameters()])
    expected = float((teacher - source).norm() / source.norm())
    assert expected > 0
    with warnings.catch_warnings():
        # e.g. "Converting a tensor with requires_grad=True to a scalar"
        warnings.simplefilter('error')
        stats = sts.pop_statistics()
    assert stats['distance'] == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------
def _train(granularity, seed, name='teacher', steps=6):
    gen = torch.Generator().manual_seed(0)
    student = toy_net()
    sts = SpatialTemporalSmoothing(
        student,
        preserve_prob=0.5,
        momentum=0.3,
        granularity=granularity,
        seed=seed,
        name=name)
    for _ in range(steps):
        perturb(student, gen)
        sts.update_parameters(student)
    return sts


@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_same_seed_gives_bitwise_identical_teacher(granularity):
    first = _train(granularity, seed=3)
    assert_same_state(_train(granularity, seed=3), first, exact=True)
    for other in (_train(granularity, seed=4),
                  _train(granularity, seed=3, name='target_net')):
        assert not all(
            torch.equal(p, q)
            for p, q in zip(other.parameters(), first.parameters()))


# ----------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------
@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_cosine_schedule_is_cosine_ema(granularity, message_hub):
    """``total_steps=None`` reads ``max_iters`` from the MessageHub, as
    ``CosineEMA`` does."""
    total = 10
    message_hub.update_info('max_iters', total)
    gen = torch.Generator().manual_seed(0)
    student = toy_net()
    sts = SpatialTemporalSmoothing(
        student,
        preserve_prob=0.0,
        momentum=0.3,
        momentum_schedule='cosine',
        end_momentum=0.02,
        granularity=granularity)
    ema = CosineEMA(student, momentum=0.3, end_momentum=0.02)
    for step in range(total + 1):
        perturb(student, gen)
        sts.update_parameters(student)
        ema.update_parameters(student)
        assert_same_state(sts, ema, msg=f'at step {step}')
        if step > 0:
            assert sts.pop_statistics()['momentum'] == pytest.approx(
                0.02 - (0.02 - 0.3) *
                (math.cos(math.pi * step / total) + 1) / 2)


def test_explicit_total_steps_wins_over_max_iters(message_hub):
    message_hub.update_info('max_iters', 1000)
    student = toy_net()
    sts = SpatialTemporalSmoothing(
        student,
        preserve_prob=0.0,
        momentum=0.3,
        momentum_schedule='cosine',
        total_steps=4)
    for _ in range(3):
        sts.update_parameters(student)
    # Last update at step 2 of 4: half way, (0.3 + 0) / 2.
    assert sts.pop_statistics()['momentum'] == pytest.approx(0.15)
    sts.total_steps = None
    sts.update_parameters(student)  # step 3 of 1000
    assert sts.pop_statistics()['momentum'] == pytest.approx(
        0.3 * (math.cos(math.pi * 3 / 1000) + 1) / 2)


# ----------------------------------------------------------------------
# Contract with MMEngine / mmpretrain
# ----------------------------------------------------------------------
@pytest.mark.parametrize('update_buffers', [False, True])
def test_state_dict_is_interchangeable_with_ema(update_buffers):
    gen = torch.Generator().manual_seed(0)
    student = toy_net()
    sts = SpatialTemporalSmoothing(student, update_buffers=update_buffers)
    ema = ExponentialMovingAverage(
        student, momentum=0.01, update_buffers=update_buffers)
    assert list(sts.state_dict()) == list(ema.state_dict())
    assert 'steps' in sts.state_dict()
    assert all(k == 'steps' or k.startswith('module.')
               for k in sts.state_dict())
    for _ in range(3):
        perturb(student, gen)
        sts.update_parameters(student)
    # Both ways, strictly.
    ema.load_state_dict(sts.state_dict())
    assert_same_state(ema, sts, exact=True)
    other = SpatialTemporalSmoothing(toy_net(1))
    other.load_state_dict(ExponentialMovingAverage(student).state_dict())
    assert int(other.steps) == 0
    assert torch.equal(other.module.fc2.weight, student.fc2.weight)


@pytest.mark.parametrize('host_type', ['ema', 'cosine'])
def test_take_over_shares_tensors_and_steps(host_type):
    gen = torch.Generator().manual_seed(0)
    student = toy_net()
    if host_type == 'ema':
        host = ExponentialMovingAverage(student, momentum=0.01, interval=2)
    else:  # reads the length of training from the message hub
        MessageHub.get_current_instance().update_info('max_iters', 100)
        host = CosineEMA(student, momentum=0.01, update_buffers=True)
    for _ in range(5):
        perturb(student, gen)
        host.update_parameters(student)
    keys = list(host.state_dict())
    sts = SpatialTemporalSmoothing.take_over(
        host,
        preserve_prob=0.0,
        momentum=0.25,
        momentum_schedule='constant',
        name='target_net')
    assert list(sts.state_dict()) == keys
    for key, value in host.state_dict().items():
        assert sts.state_dict()[key].data_ptr() == value.data_ptr(), key
    assert int(sts.steps) == 5
    assert sts.interval == host.interval
    assert sts.update_buffers == host.update_buffers
    # The next update uses step 5 and updates the shared tensors.
    old = copy.deepcopy(host.module)
    perturb(student, gen)
    sts.update_parameters(student)
    assert int(host.steps) == 6  # `steps` is shared too
    for (name, p), o, s in zip(host.module.named_parameters(),
                               old.parameters(), student.parameters()):
        if host.interval == 2:  # step 5 is not an update step
            assert torch.equal(p, o), name
        else:
            torch.testing.assert_close(p, torch.lerp(o, s, 0.25))


def _cosine_sts(seed=1):
    return SpatialTemporalSmoothing(
        toy_net(),
        preserve_prob=0.5,
        momentum=0.3,
        momentum_schedule='cosine',
        total_steps=20,
        seed=seed,
        name='target_net')


@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_loaded_steps_key_the_next_update(granularity):
    """After ``load_state_dict`` with steps=k, the next update uses the
    masks and momentum of step k, as the uninterrupted run does."""
    gen = torch.Generator().manual_seed(0)
    student = toy_net(5)
    run = _cosine_sts()
    run.smoother.granularity = granularity
    for _ in range(6):
        perturb(student, gen)
        run.update_parameters(student)
    checkpoint = copy.deepcopy(nn.ModuleDict({'target_net': run}).state_dict())
    resumed = _cosine_sts()
    resumed.smoother.granularity = granularity
    for _ in range(3):  # its host mirror of `steps` now says 3
        resumed.update_parameters(toy_net(7))
    nn.ModuleDict({'target_net': resumed}).load_state_dict(checkpoint)
    assert int(resumed.steps) == 6
    for _ in range(2):
        perturb(student, gen)
        run.update_parameters(student)
        resumed.update_parameters(student)
        assert_same_state(resumed, run, exact=True)
    assert int(resumed.steps) == 8
    assert resumed.pop_statistics()['momentum'] == pytest.approx(
        0.3 * (math.cos(math.pi * 7 / 20) + 1) / 2)


def test_interval_two_updates_every_other_step():
    gen = torch.Generator().manual_seed(0)
    student = toy_net()
    sts = SpatialTemporalSmoothing(
        student, preserve_prob=0.0, momentum=0.1, interval=2)
    ema = ExponentialMovingAverage(student, momentum=0.1, interval=2)
    for step in range(7):
        perturb(student, gen)
        old = copy.deepcopy(sts.module)
        sts.update_parameters(student)
        ema.update_parameters(student)
        assert_same_state(sts, ema, msg=f'at step {step}')
        moved = [
            not torch.equal(p, o)
            for p, o in zip(sts.module.parameters(), old.parameters())
        ]
        assert all(moved) if step % 2 == 0 else not any(moved), step
        assert torch.equal(sts.module.bn.running_mean, student.bn.running_mean)


def test_built_from_the_registries(monkeypatch):
    model = toy_net()
    # No default scope (a Runner of another test may have left one).
    monkeypatch.setattr(DefaultScope, '_instance_dict', OrderedDict())
    sts = MODELS.build(
        dict(
            type='SpatialTemporalSmoothing',
            preserve_prob=0.7,
            momentum=0.01,
            momentum_schedule='cosine',
            granularity='channel',
            name='target_net'),
        default_args=dict(model=model))
    assert isinstance(sts, SpatialTemporalSmoothing)
    assert sts.smoother.preserve_prob == 0.7
    assert sts.momentum == 0.01
    assert sts.smoother.granularity == 'channel'
    assert torch.equal(sts.module.fc1.weight, model.fc1.weight)
    # As MMEngine's EMAHook builds its `ema_type` (from MMEngine's root
    # registry, in the mmpretrain scope).
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        ema_hook_style = MMENGINE_MODELS.build(
            dict(type='SpatialTemporalSmoothing', preserve_prob=0.5),
            default_args=dict(model=model))
    assert isinstance(ema_hook_style, SpatialTemporalSmoothing)
    # In the default scope of a Runner built without one, with the scope
    # written out.
    with DefaultScope.overwrite_default_scope('mmengine'):
        scoped = MMENGINE_MODELS.build(
            dict(type='mmpretrain.SpatialTemporalSmoothing'),
            default_args=dict(model=model))
    assert isinstance(scoped, SpatialTemporalSmoothing)


def test_avg_func_is_not_used():
    with pytest.raises(NotImplementedError, match='update_parameters'):
        SpatialTemporalSmoothing(toy_net()).avg_func(
            torch.zeros(1), torch.ones(1), 1)


# ----------------------------------------------------------------------
# The student's tensors (walked once per student model)
# ----------------------------------------------------------------------
def test_replaced_student_tensors_are_read_afresh():
    """The modules are remembered, not the tensors: parameters and buffers
    replaced in place (``load_state_dict(assign=True)``) are the ones
    averaged."""
    student = toy_net()
    sts = SpatialTemporalSmoothing(
        student, preserve_prob=0.0, momentum=1.0, update_buffers=False)
    sts.update_parameters(student)
    replacement = toy_net(seed=1)
    replacement.bn.running_mean.fill_(3.0)
    student.load_state_dict(replacement.state_dict(), assign=True)
    sts.update_parameters(student)
    assert_same_state(sts.module, replacement, exact=True)


def test_replaced_student_modules_are_walked_again():
    """A module of the student replaced after the first update (model
    surgery, ``convert_sync_batchnorm``) is found again, and checked."""
    student = toy_net()
    sts = SpatialTemporalSmoothing(
        student, preserve_prob=0.0, momentum=1.0, update_buffers=False)
    sts.update_parameters(student)
    student.fc2 = nn.Linear(8, 3)  # the old module is freed
    gc.collect()
    sts.update_parameters(student)
    assert_same_state(sts.module, student, exact=True)
    student.fc2 = nn.Linear(8, 5)
    gc.collect()
    with pytest.raises(ValueError, match=r'`fc2\.weight` \(3, 8\).*\(5, 8\)'):
        sts.update_parameters(student)


def test_a_new_student_model_is_checked():
    sts = SpatialTemporalSmoothing(toy_net())
    sts.update_parameters(toy_net(seed=1))
    wrong = toy_net()
    wrong.fc2 = nn.Linear(8, 5)
    for _ in range(2):  # refused again, not remembered as checked
        with pytest.raises(ValueError,
                           match=r'`fc2\.weight` \(3, 8\).*\(5, 8\)'):
            sts.update_parameters(wrong)
    assert int(sts.steps) == 1


@pytest.mark.parametrize('buffers', ['copy', 'smooth'])
@pytest.mark.parametrize('replace', ['to', 'load_assign'])
def test_teacher_updates_its_own_tensors_after_they_are_replaced(
        buffers, replace):
    """MMEngine's runner moves a model built on the host to its device
    (``model.to(get_device())``), and with it a teacher built inside the
    model (FixMatch, distillation): the update must then write the moved
    tensors, not stale copies of the old ones. ``double()`` takes the same
    path (``nn.Module._apply``) on CPU; ``load_state_dict(assign=True)``
    replaces the tensors too."""
    student = _bn_student()
    teacher = SpatialTemporalSmoothing(
        student, preserve_prob=0.0, momentum=0.5, buffers=buffers)
    teacher.update_parameters(student)  # update 0 copies the student
    if replace == 'to':
        student.double()
        teacher.double()
    else:
        state = {k: v.clone() for k, v in teacher.state_dict().items()}
        teacher.load_state_dict(state, assign=True)
    old = copy.deepcopy(teacher.module)
    with torch.no_grad():
        student(torch.randn(8, 3, dtype=student[0].weight.dtype) + 2)
        for p in student.parameters():
            p.add_(1.0)
    teacher.update_parameters(student)
    new = teacher.module
    torch.testing.assert_close(new[0].weight,
                               torch.lerp(old[0].weight, student[0].weight,
                                          0.5))
    mean = student[1].running_mean
    if buffers == 'copy':
        assert torch.equal(new[1].running_mean, mean)
    else:
        torch.testing.assert_close(new[1].running_mean,
                                   torch.lerp(old[1].running_mean, mean, 0.5))


def test_copies_of_the_teacher_leave_the_student_behind():
    student = toy_net()
    sts = SpatialTemporalSmoothing(student)
    sts.update_parameters(student)
    clone = copy.deepcopy(sts)
    ids = {id(t) for t in student.parameters()}
    assert not ids & {id(t) for t in clone.parameters()}
    assert clone._source_ref() is student  # a weak reference, not a copy
    other = toy_net(seed=2)
    clone.update_parameters(other)  # a new student: checked, then used
    assert int(clone.steps) == 2


# ----------------------------------------------------------------------
# Non-finite students and host/device synchronisation
# ----------------------------------------------------------------------
@pytest.fixture(params=[False, True], ids=['host', 'sync_free'])
def sync_free(request, monkeypatch):
    monkeypatch.setattr('mmsts.smoothing.devices.HOST_DEVICE_TYPES',
                        () if request.param else ('cpu', ))
    return request.param


@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_nonfinite_student_is_skipped(granularity, sync_free):
    student = toy_net()
    sts = SpatialTemporalSmoothing(
        student, preserve_prob=0.0, momentum=0.5, granularity=granularity)
    sts.update_parameters(student)
    with torch.no_grad():
        student.fc1.weight[0, 0] = float('nan')
    old = copy.deepcopy(sts.module)
    sts.update_parameters(student)
    for p, o in zip(sts.module.parameters(), old.parameters()):
        assert torch.isfinite(p).all()
        assert torch.equal(p, o)
    assert sts.pop_statistics()['nonfinite_steps'] == 1
    assert int(sts.steps) == 2


def test_nonfinite_raise(sync_free):
    student = toy_net()
    sts = SpatialTemporalSmoothing(
        student, preserve_prob=0.0, nonfinite='raise')
    sts.update_parameters(student)
    with torch.no_grad():
        student.conv.bias[1] = float('inf')
    if sync_free:
        sts.update_parameters(student)
        with pytest.raises(NonFiniteStudentError):
            sts.pop_statistics()
    else:
        with pytest.raises(NonFiniteStudentError):
            sts.update_parameters(student)
    assert all(torch.isfinite(p).all() for p in sts.module.parameters())


@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_sync_free_update_parameters_never_reads_device_values(
        granularity, monkeypatch):
    """After the first update (which reads ``steps`` once), the wrapper
    never synchronises host and device."""
    monkeypatch.setattr('mmsts.smoothing.devices.HOST_DEVICE_TYPES', ())
    gen = torch.Generator().manual_seed(0)
    student = toy_net()
    sts = SpatialTemporalSmoothing(
        student, preserve_prob=0.5, momentum=0.5, granularity=granularity)
    sts.update_parameters(student)

    def forbidden(*args, **kwargs):
        raise AssertionError('host-device synchronisation')

    for _ in range(3):
        perturb(student, gen)
        with monkeypatch.context() as patch:
            for name in ('item', '__bool__', '__float__', '__int__', 'tolist'):
                patch.setattr(torch.Tensor, name, forbidden)
            sts.update_parameters(student)
    assert int(sts.steps) == 4
    assert 0 < sts.pop_statistics()['update_fraction'] < 1


@pytest.mark.parametrize('sync_free', [False, True])
def test_nonfinite_buffers_stay_out_of_the_teacher(monkeypatch, sync_free):
    """BN statistics of a student that went NaN are not copied into the
    teacher, on the host path and on the sync-free (accelerator) path; the
    step counts once in ``nonfinite_steps`` although both its parameters and
    its buffers were non-finite."""
    monkeypatch.setattr('mmsts.smoothing.devices.HOST_DEVICE_TYPES',
                        () if sync_free else ('cpu', ))
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    teacher = SpatialTemporalSmoothing(student, preserve_prob=0.0,
                                       momentum=0.5)
    teacher.update_parameters(student)  # step 0: the copy
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        student[0].weight[0, 0, 0, 0] = float('nan')
        student[1].running_mean.fill_(float('nan'))
    teacher.update_parameters(student)
    after = teacher.state_dict()
    for key in ('module.0.weight', 'module.1.running_mean',
                'module.1.running_var'):
        assert torch.equal(after[key], before[key]), key
    assert teacher.pop_statistics()['nonfinite_steps'] == 1


def test_nonfinite_buffers_alone_skip_the_whole_step():
    """With ``buffers='copy'`` the BN statistics are checked with the
    parameters, in one read: NaN statistics alone skip the step, parameters
    included, and the next finite step goes through."""
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    teacher = SpatialTemporalSmoothing(student, preserve_prob=0.0,
                                       momentum=0.5)
    teacher.update_parameters(student)
    with torch.no_grad():
        student[0].weight.add_(1.0)
        student[1].running_mean.fill_(float('nan'))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher.update_parameters(student)
    after = teacher.state_dict()
    assert torch.equal(after['module.0.weight'], before['module.0.weight'])
    assert teacher.pop_statistics()['nonfinite_steps'] == 1
    student[1].running_mean.fill_(0.5)
    teacher.update_parameters(student)
    assert not torch.equal(teacher.module[0].weight, before['module.0.weight'])
    assert torch.equal(teacher.module[1].running_mean, torch.full((4, ), 0.5))


# ----------------------------------------------------------------------
# Buffer policy: copy (mmpretrain), keep (official STS code), smooth
# ----------------------------------------------------------------------
def _bn_student():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    student.train()
    return student


@pytest.mark.parametrize('buffers', ['copy', 'keep', 'smooth'])
def test_buffer_policies(buffers):
    student = _bn_student()
    teacher = SpatialTemporalSmoothing(
        student, preserve_prob=0.0, momentum=0.5, buffers=buffers)
    own = teacher.module[1].running_mean.clone()
    teacher.update_parameters(student)  # update 0
    student(torch.randn(8, 3) + 2)  # the student's statistics move
    old = teacher.module[1].running_mean.clone()
    teacher.update_parameters(student)
    new = teacher.module[1].running_mean
    target = student[1].running_mean
    assert not torch.equal(target, old)
    if buffers == 'copy':
        assert torch.equal(new, target)
    elif buffers == 'keep':
        assert torch.equal(new, own)  # never touched by an update
        assert int(teacher.module[1].num_batches_tracked) == 0
    else:
        torch.testing.assert_close(new, torch.lerp(old, target, 0.5))
    assert teacher.settings['buffers'] == buffers
    assert teacher.update_buffers == (buffers == 'smooth')


def test_update_buffers_maps_to_a_policy():
    assert SpatialTemporalSmoothing(
        _bn_student(), update_buffers=True).settings['buffers'] == 'smooth'
    assert SpatialTemporalSmoothing(
        _bn_student()).settings['buffers'] == 'copy'
    with pytest.raises(ValueError, match="contradicts buffers='keep'"):
        SpatialTemporalSmoothing(
            _bn_student(), update_buffers=True, buffers='keep')
    with pytest.raises(ValueError, match="`buffers`.*'own'"):
        SpatialTemporalSmoothing(_bn_student(), buffers='own')


def test_take_over_keeps_or_overrides_the_buffer_policy():
    student = _bn_student()
    host = CosineEMA(student, momentum=0.01, update_buffers=True)
    assert SpatialTemporalSmoothing.take_over(
        host).settings['buffers'] == 'smooth'
    host = ExponentialMovingAverage(student, momentum=0.01)
    sts = SpatialTemporalSmoothing.take_over(host, buffers='keep')
    assert sts.settings['buffers'] == 'keep'
    assert sts._buffers_avg == [] and not sts.update_buffers
    # Reconfiguring an STS teacher rebinds what it updates.
    same = SpatialTemporalSmoothing.take_over(sts, buffers='smooth')
    assert same is sts and sts.update_buffers
    assert '1.running_mean' in sts.avg_parameters


@pytest.mark.parametrize('momentum,warned', [(0.99, True), (0.6, True),
                                             (0.5, False), (1.0, False),
                                             (0.01, False)])
def test_decay_written_as_momentum_warns(momentum, warned, caplog):
    """``momentum=0.99`` (a decay, as timm writes it) makes the teacher
    almost the student: warn, spelling out the conversion."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    logger.addHandler(caplog.handler)
    try:
        SpatialTemporalSmoothing(toy_net(), momentum=momentum)
    finally:
        logger.removeHandler(caplog.handler)
    messages = [r.getMessage() for r in caplog.records
                if 'weight of the *student*' in r.getMessage()]
    assert bool(messages) == warned
    if warned:
        assert f'momentum={1 - momentum:.6g}' in messages[0]
