"""Tests of the pure-PyTorch STS update (:mod:`mmsts.smoothing`).

Every expectation is computed independently of the code under test: with
``torch.lerp`` / explicit arithmetic, MMEngine's ``ExponentialMovingAverage``
or mmpretrain's ``CosineEMA``.
"""
import copy
import math
import uuid

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.logging import MessageHub
from mmengine.model import ExponentialMovingAverage
from mmpretrain.models.utils import CosineEMA

from mmsts.smoothing import (ConstantMomentum, CosineMomentum,
                             FragmentMaskGenerator, NonFiniteStudentError,
                             SpatialTemporalSmoother, build_momentum_schedule,
                             check_unit_interval, devices,
                             relative_distance, stream_id)
from mmsts.smoothing import smoother as smoother_module
from mmsts.smoothing.fine import TorchFineUpdate
from mmsts.smoothing.guards import (DeviceGuard, Guard, HostGuard,
                                    NonFiniteCounter, build_guard)
from mmsts.smoothing.host_fine import HostFineUpdate

from conftest import requires_cuda

GRANULARITIES = ('tensor', 'channel', 'element')
# Shapes of a small "model": conv weights, a linear weight, biases, a scalar.
SHAPES = [(6, 3, 3, 3), (6, ), (5, 24), (5, ), (), (4, 7)]


def make_tensors(shapes, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]


def far_student(teacher, seed):
    """A student at least 1 away from the teacher in every element, so that
    a lerp with momentum 0.5 moves every element by at least 0.5."""
    gen = torch.Generator().manual_seed(seed)
    return [
        t +
        (1 + torch.rand(t.shape, generator=gen, dtype=t.dtype)) * torch.where(
            torch.rand(t.shape, generator=gen) < 0.5, -1.0, 1.0).to(t.dtype)
        for t in teacher
    ]


def fragments(tensor, granularity):
    """The fragments of one tensor, as views."""
    if granularity == 'tensor' or tensor.dim() == 0:
        return [tensor]
    if granularity == 'channel':
        return list(tensor)
    return list(tensor.reshape(-1))


def count_updated(old, new, expected, granularity):
    """Classify every fragment as exactly preserved or lerped (never a mix);
    return (updated, total)."""
    updated = total = 0
    for o, n, e in zip(old, new, expected):
        for fo, fn, fe in zip(
                fragments(o, granularity), fragments(n, granularity),
                fragments(e, granularity)):
            preserved = torch.equal(fn, fo)
            lerped = torch.allclose(fn, fe, rtol=1e-6, atol=1e-6)
            assert preserved != lerped, (
                f'a {granularity} fragment is neither exactly preserved nor '
                f'exactly lerped: old={fo}, new={fn}, lerp={fe}')
            updated += int(lerped)
            total += 1
    return updated, total


def binomial_tolerance(prob, n):
    """Seven standard deviations of a binomial fraction (a false failure
    has probability < 1e-11), plus the 1/65536 resolution of the bulk
    masks."""
    return 7 * math.sqrt(prob * (1 - prob) / n) + 1 / 65536


class ToyNet(nn.Module):

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.bn(self.conv(x)).relu().mean((2, 3))
        return self.fc(x)


@torch.no_grad()
def perturb(model, gen):
    """A training step stand-in: move the weights, update BN statistics."""
    for p in model.parameters():
        p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model.train()
    model(torch.randn(2, 3, 6, 6, generator=gen))


@pytest.fixture
def max_iters():
    """A fresh current MessageHub whose ``max_iters`` the test sets; it is
    removed afterwards (the hub stays current), so that the length of
    training does not leak into later tests."""
    hub = MessageHub.get_instance(f'test_smoothing_{uuid.uuid4().hex}')

    def set_max_iters(value):
        hub.update_info('max_iters', value)
        assert MessageHub.get_current_instance() is hub
        return hub

    yield set_max_iters
    hub.pop_info('max_iters')


# ----------------------------------------------------------------------
# Rule semantics
# ----------------------------------------------------------------------
@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_preserve_prob_one_keeps_teacher(granularity):
    teacher = make_tensors(SHAPES, 0)
    old = [t.clone() for t in teacher]
    smoother = SpatialTemporalSmoother(
        preserve_prob=1.0, momentum=0.5, granularity=granularity)
    for step in range(1, 6):
        smoother.step(teacher, far_student(teacher, step), step)
    for o, t in zip(old, teacher):
        assert torch.equal(o, t)
    assert smoother.pop_statistics()['update_fraction'] == 0.0


@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_preserve_prob_zero_is_mmengine_ema(granularity):
    """p = 0 is plain EMA: compare with MMEngine's, step by step."""
    gen = torch.Generator().manual_seed(0)
    student = ToyNet()
    ema = ExponentialMovingAverage(student, momentum=0.1)
    teacher = copy.deepcopy(student)
    smoother = SpatialTemporalSmoother(
        preserve_prob=0.0, momentum=0.1, granularity=granularity)
    ema.update_parameters(student)  # the first MMEngine update copies
    for step in range(1, 8):
        perturb(student, gen)
        ema.update_parameters(student)
        smoother.step(
            list(teacher.parameters()), list(student.parameters()), step)
        for (name, t), e in zip(teacher.named_parameters(),
                                ema.module.parameters()):
            torch.testing.assert_close(
                t, e, rtol=1e-6, atol=1e-7, msg=f'{name} at step {step}')
            assert not torch.equal(t, student.get_parameter(name))
    assert smoother.pop_statistics()['update_fraction'] == 1.0


@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_momentum_one_preserve_zero_copies_student(granularity):
    teacher = make_tensors(SHAPES, 0)
    smoother = SpatialTemporalSmoother(
        preserve_prob=0.0, momentum=1.0, granularity=granularity)
    for step in range(1, 4):
        student = make_tensors(SHAPES, 100 + step)
        smoother.step(teacher, student, step)
        for t, s in zip(teacher, student):
            assert torch.equal(t, s)


@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_momentum_zero_keeps_teacher(granularity):
    teacher = make_tensors(SHAPES, 0)
    old = [t.clone() for t in teacher]
    smoother = SpatialTemporalSmoother(
        preserve_prob=0.0, momentum=0.0, granularity=granularity)
    smoother.step(teacher, far_student(teacher, 1), 1)
    for o, t in zip(old, teacher):
        assert torch.equal(o, t)


@pytest.mark.parametrize('granularity,steps',
                         [('tensor', 300), ('channel', 60), ('element', 10)])
@pytest.mark.parametrize('preserve_prob', [0.3, 0.7])
def test_fragments_preserved_or_lerped_at_rate(granularity, steps,
                                               preserve_prob):
    """Each fragment is either exactly preserved or exactly lerped, and the
    fraction updated is 1 - p within a binomial tolerance."""
    shapes = SHAPES * 3
    momentum = 0.5
    smoother = SpatialTemporalSmoother(
        preserve_prob=preserve_prob,
        momentum=momentum,
        granularity=granularity,
        seed=3)
    teacher = make_tensors(shapes, 0)
    updated = total = 0
    per_step = []
    for step in range(1, steps + 1):
        student = far_student(teacher, step)
        old = [t.clone() for t in teacher]
        expected = [torch.lerp(o, s, momentum) for o, s in zip(old, student)]
        smoother.step(teacher, student, step)
        u, n = count_updated(old, teacher, expected, granularity)
        updated += u
        total += n
        per_step.append(u)
    fraction = updated / total
    assert abs(fraction - (1 - preserve_prob)) <= binomial_tolerance(
        preserve_prob, total), (fraction, total)
    # The masks change from step to step.
    assert len(set(per_step)) > 1
    # The statistics count the same fragments.
    stats = smoother.pop_statistics()
    assert stats['update_fraction'] == pytest.approx(fraction, abs=1e-12)
    assert stats['momentum'] == momentum
    assert stats['nonfinite_steps'] == 0
    # Reset: no fragment drawn since, so no fraction to report.
    assert 'update_fraction' not in smoother.pop_statistics()


def test_mixed_dtypes_are_updated():
    """Tensors of several dtypes go through separate fused groups."""
    teacher = make_tensors(SHAPES, 0) + make_tensors(SHAPES, 1, torch.float64)
    student = far_student(teacher, 2)
    old = [t.clone() for t in teacher]
    for granularity in GRANULARITIES:
        ts = [t.clone() for t in old]
        SpatialTemporalSmoother(
            preserve_prob=0.0, momentum=0.25,
            granularity=granularity).step(ts, student, 1)
        for o, s, t in zip(old, student, ts):
            assert t.dtype == o.dtype
            torch.testing.assert_close(t, o + 0.25 * (s - o))


# ----------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------
def test_update_flags_are_a_function_of_seed_stream_step():
    gen = FragmentMaskGenerator(0.5, seed=1, stream=2)
    flags = gen.update_flags(7, 256)
    assert flags.dtype == np.bool_ and flags.shape == (256, )
    assert np.array_equal(
        flags,
        FragmentMaskGenerator(0.5, 1, 2).update_flags(7, 256))
    for other in (FragmentMaskGenerator(0.5, 9, 2).update_flags(7, 256),
                  FragmentMaskGenerator(0.5, 1, 3).update_flags(7, 256),
                  gen.update_flags(8, 256)):
        assert not np.array_equal(flags, other)
    # A prefix does not depend on how many fragments are drawn.
    assert np.array_equal(flags[:10], gen.update_flags(7, 10))
    assert not FragmentMaskGenerator(1.0).update_flags(0, 100).any()
    assert FragmentMaskGenerator(0.0).update_flags(0, 100).all()


def test_bulk_masks_are_a_function_of_seed_stream_step():
    gen = FragmentMaskGenerator(0.5, seed=1, stream=2)
    mask = gen.bulk_update_mask(7, 1000, 'cpu')
    assert mask.dtype == torch.bool and mask.shape == (1000, )
    assert torch.equal(
        mask,
        FragmentMaskGenerator(0.5, 1, 2).bulk_update_mask(7, 1000, 'cpu'))
    for other in (FragmentMaskGenerator(0.5, 9,
                                        2).bulk_update_mask(7, 1000, 'cpu'),
                  FragmentMaskGenerator(0.5, 1,
                                        3).bulk_update_mask(7, 1000, 'cpu'),
                  gen.bulk_update_mask(8, 1000, 'cpu'),
                  gen.bulk_update_mask(7, 1000, 'cpu', substream=1)):
        assert not torch.equal(mask, other)
    assert not FragmentMaskGenerator(1.0).bulk_update_mask(0, 999, 'cpu').any()
    assert FragmentMaskGenerator(0.0).bulk_update_mask(0, 999, 'cpu').all()
    # Odd sizes (not a multiple of the 4 draws per random word).
    assert FragmentMaskGenerator(0.5).bulk_update_mask(0, 5,
                                                       'cpu').shape == (5, )


def test_stream_id_is_stable():
    assert stream_id('target_net') == stream_id('target_net')
    assert stream_id('target_net') != stream_id('encoder_k')
    assert 0 <= stream_id('teacher') < 2**32


def _run(granularity, seed, stream=0, steps=6):
    teacher = make_tensors(SHAPES, 0)
    smoother = SpatialTemporalSmoother(
        preserve_prob=0.5,
        momentum=0.3,
        granularity=granularity,
        seed=seed,
        stream=stream)
    for step in range(1, steps + 1):
        smoother.step(teacher, make_tensors(SHAPES, 10 + step), step)
    return teacher


@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_same_seed_gives_bitwise_identical_teacher(granularity):
    first = _run(granularity, seed=5)
    again = _run(granularity, seed=5)  # re-created from scratch
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    for other in (_run(granularity, seed=6), _run(granularity, 5, stream=1)):
        assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_seed_setter_changes_masks():
    smoother = SpatialTemporalSmoother(seed=0)
    smoother.seed = 4
    assert smoother.seed == 4
    assert np.array_equal(
        smoother.masks.update_flags(3, 64),
        FragmentMaskGenerator(0.5, seed=4).update_flags(3, 64))


# ----------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------
def cosine_ema_momenta(momentum, end_momentum, total, steps):
    """The momentum mmpretrain's CosineEMA applies at each step, read off a
    one-parameter model: teacher 0, student 1 -> updated teacher = m."""
    student = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        student.weight.fill_(1.0)
    ema = CosineEMA(student, momentum=momentum, end_momentum=end_momentum)
    out = []
    for step in steps:
        with torch.no_grad():
            ema.module.weight.zero_()
        ema.steps.fill_(step)
        ema.update_parameters(student)
        out.append(ema.module.weight.item())
    return out


def test_cosine_momentum_matches_cosine_ema(max_iters):
    total = 50
    max_iters(total)
    steps = list(range(1, total + 1))
    for momentum, end in [(0.01, 0.0), (0.004, 0.0), (0.2, 0.05)]:
        schedule = CosineMomentum(momentum, end)
        ours = [schedule(k, total) for k in steps]
        reference = cosine_ema_momenta(momentum, end, total, steps)
        # CosineEMA computes its factor in float32.
        np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-9)
    # And from CosineEMA's documented formula, end points included.
    schedule = CosineMomentum(0.01, 0.0)
    assert schedule(0, total) == pytest.approx(0.01)
    assert schedule(total // 2, total) == pytest.approx(0.005)
    assert schedule(total, total) == pytest.approx(0.0, abs=1e-15)


def test_cosine_momentum_needs_total_steps():
    with pytest.raises(ValueError, match='total_steps'):
        CosineMomentum(0.01)(3, None)


def test_constant_and_built_schedules():
    assert ConstantMomentum(0.3)(0) == ConstantMomentum(0.3)(10**6, 5) == 0.3
    built = build_momentum_schedule('cosine', 0.1, end_momentum=0.02)
    assert isinstance(built, CosineMomentum)
    assert (built.momentum, built.end_momentum) == (0.1, 0.02)
    assert isinstance(
        build_momentum_schedule('constant', 0.1), ConstantMomentum)


@pytest.mark.parametrize('value,expected', [(np.float32(0.5), 0.5),
                                            (np.float16(0.25), 0.25),
                                            (np.float64(0.75), 0.75),
                                            (np.int64(1), 1.0),
                                            (np.int32(0), 0.0)])
def test_unit_interval_accepts_numpy_scalars(value, expected):
    """Values read from numpy (configs, sweeps) are numbers too."""
    checked = check_unit_interval('momentum', value)
    assert type(checked) is float and checked == expected
    assert ConstantMomentum(value)(3) == expected
    assert SpatialTemporalSmoother(
        preserve_prob=value).preserve_prob == expected


@pytest.mark.parametrize('value,error', [
    (True, TypeError), (np.bool_(False), TypeError), ('0.5', TypeError),
    (None, TypeError), (float('nan'), ValueError),
    (np.float32('nan'), ValueError), (-0.1, ValueError),
    (np.float32(1.5), ValueError), (np.int64(2), ValueError),
    (float('inf'), ValueError)
])
def test_unit_interval_rejects(value, error):
    with pytest.raises(error, match='`momentum`'):
        check_unit_interval('momentum', value)


@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_smoother_with_cosine_schedule_matches_cosine_ema(
        granularity, max_iters):
    total = 12
    max_iters(total)
    gen = torch.Generator().manual_seed(1)
    student = ToyNet()
    ema = CosineEMA(student, momentum=0.3, end_momentum=0.05)
    teacher = copy.deepcopy(student)
    smoother = SpatialTemporalSmoother(
        preserve_prob=0.0,
        momentum=CosineMomentum(0.3, 0.05),
        granularity=granularity)
    ema.update_parameters(student)
    for step in range(1, total + 1):
        perturb(student, gen)
        ema.update_parameters(student)
        smoother.step(
            list(teacher.parameters()), list(student.parameters()), step,
            total)
        for t, e in zip(teacher.parameters(), ema.module.parameters()):
            torch.testing.assert_close(t, e, rtol=1e-5, atol=1e-6)
        assert smoother.pop_statistics()['momentum'] == pytest.approx(
            0.05 - (0.05 - 0.3) * (math.cos(math.pi * step / total) + 1) / 2)


# ----------------------------------------------------------------------
# Non-finite students
# ----------------------------------------------------------------------
BAD_VALUES = [float('nan'), float('inf'), -float('inf')]


def poisoned_student(teacher, bad, index=2):
    student = far_student(teacher, 1)
    student[index].view(-1)[3] = bad
    return student


@pytest.fixture(params=[False, True], ids=['host', 'sync_free'])
def sync_free(request, monkeypatch):
    """Run a test on the CPU host path and on the accelerator path."""
    if request.param:
        monkeypatch.setattr(devices, 'HOST_DEVICE_TYPES', ())
    return request.param


@pytest.mark.parametrize('granularity', GRANULARITIES)
@pytest.mark.parametrize('bad', BAD_VALUES)
def test_nonfinite_skip(granularity, bad, sync_free):
    teacher = make_tensors(SHAPES, 0)
    old = [t.clone() for t in teacher]
    smoother = SpatialTemporalSmoother(
        preserve_prob=0.0,
        momentum=0.5,
        granularity=granularity,
        nonfinite='skip')
    smoother.step(teacher, poisoned_student(teacher, bad), 1)
    for o, t in zip(old, teacher):
        assert torch.isfinite(t).all()
        assert torch.equal(o, t)
    assert smoother.pop_statistics()['nonfinite_steps'] == 1
    # A finite student afterwards is used as usual.
    student = far_student(teacher, 2)
    smoother.step(teacher, student, 2)
    for o, s, t in zip(old, student, teacher):
        torch.testing.assert_close(t, torch.lerp(o, s, 0.5))
    assert smoother.pop_statistics()['nonfinite_steps'] == 0


def test_nonfinite_in_unselected_tensor_does_not_block_update():
    """Tensor granularity: a NaN in a tensor that is preserved at this step
    is never read; the other selected tensors are updated."""
    teacher = make_tensors(SHAPES, 0)
    smoother = SpatialTemporalSmoother(
        preserve_prob=0.5,
        momentum=0.5,
        granularity='tensor',
        seed=0,
        stream=0)
    reference = FragmentMaskGenerator(0.5, seed=0, stream=0)
    step = next(
        k for k in range(1, 100)
        if not reference.update_flags(k, len(SHAPES))[2]
        and reference.update_flags(k, len(SHAPES)).any())
    old = [t.clone() for t in teacher]
    student = poisoned_student(teacher, float('nan'), index=2)
    smoother.step(teacher, student, step)
    flags = reference.update_flags(step, len(SHAPES))
    for o, s, t, flag in zip(old, student, teacher, flags):
        if flag:
            torch.testing.assert_close(t, torch.lerp(o, s, 0.5))
        else:
            assert torch.equal(t, o)
    assert smoother.pop_statistics()['nonfinite_steps'] == 0


@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_nonfinite_raise_on_host(granularity):
    teacher = make_tensors(SHAPES, 0)
    old = [t.clone() for t in teacher]
    smoother = SpatialTemporalSmoother(
        preserve_prob=0.0,
        momentum=0.5,
        granularity=granularity,
        nonfinite='raise')
    with pytest.raises(NonFiniteStudentError, match='NaN/Inf'):
        smoother.step(teacher, poisoned_student(teacher, float('nan')), 1)
    assert all(torch.equal(o, t) for o, t in zip(old, teacher))


@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_nonfinite_raise_sync_free_raises_at_pop(granularity, monkeypatch):
    monkeypatch.setattr(devices, 'HOST_DEVICE_TYPES', ())
    teacher = make_tensors(SHAPES, 0)
    old = [t.clone() for t in teacher]
    smoother = SpatialTemporalSmoother(
        preserve_prob=0.0,
        momentum=0.5,
        granularity=granularity,
        nonfinite='raise')
    smoother.step(teacher, poisoned_student(teacher, float('inf')), 1)
    assert all(torch.equal(o, t) for o, t in zip(old, teacher))
    with pytest.raises(NonFiniteStudentError, match='1 step'):
        smoother.pop_statistics()
    # The count was reset: the next read is clean.
    assert smoother.pop_statistics()['nonfinite_steps'] == 0


@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_nonfinite_none_lets_nan_through(granularity, sync_free):
    teacher = make_tensors(SHAPES, 0)
    smoother = SpatialTemporalSmoother(
        preserve_prob=0.0,
        momentum=0.5,
        granularity=granularity,
        nonfinite='none')
    smoother.step(teacher, poisoned_student(teacher, float('nan')), 1)
    assert torch.isnan(teacher[2]).any()
    assert smoother.pop_statistics()['nonfinite_steps'] == 0


@pytest.mark.parametrize('granularity', GRANULARITIES)
@pytest.mark.parametrize('momentum', [0.3, 1.0])
def test_sync_free_path_matches_reference(granularity, momentum, monkeypatch):
    """The accelerator path gives the plain rule on finite students."""
    monkeypatch.setattr(devices, 'HOST_DEVICE_TYPES', ())
    for dtype in (torch.float32, torch.float64):
        teacher = make_tensors(SHAPES, 0, dtype)
        old = [t.clone() for t in teacher]
        student = far_student(teacher, 1)
        smoother = SpatialTemporalSmoother(
            preserve_prob=0.0, momentum=momentum, granularity=granularity)
        smoother.step(teacher, student, 1)
        for o, s, t in zip(old, student, teacher):
            torch.testing.assert_close(t, o + momentum * (s - o))
        stats = smoother.pop_statistics()
        assert stats['nonfinite_steps'] == 0
        assert stats['update_fraction'] == 1.0


SYNCING_METHODS = ('item', '__bool__', '__float__', '__int__', 'tolist')


def _forbid_syncs(patch):

    def forbidden(*args, **kwargs):
        raise AssertionError('host-device synchronisation in step()')

    for name in SYNCING_METHODS:
        patch.setattr(torch.Tensor, name, forbidden)


@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_sync_free_step_never_reads_device_values(granularity, monkeypatch):
    """No ``.item()``, ``bool()``, ``float()``, ``int()`` or ``.tolist()``
    on a tensor during ``step`` on the accelerator path."""
    monkeypatch.setattr(devices, 'HOST_DEVICE_TYPES', ())
    teacher = make_tensors(SHAPES, 0)
    smoother = SpatialTemporalSmoother(
        preserve_prob=0.5,
        momentum=0.5,
        granularity=granularity,
        nonfinite='skip')
    poisoned = far_student(teacher, 2)
    for s in poisoned:  # every tensor, so that a selected one is poisoned
        s.view(-1)[0] = float('nan')
    students = [far_student(teacher, 1), poisoned]

    with monkeypatch.context() as patch:
        _forbid_syncs(patch)
        for step, student in enumerate(students, 1):
            smoother.step(teacher, student, step)
    assert smoother.pop_statistics()['nonfinite_steps'] == 1
    assert all(torch.isfinite(t).all() for t in teacher)


def test_sync_probe_catches_the_host_path(monkeypatch):
    """The probe above is able to fail: the CPU host path reads its
    non-finite flag with ``bool()``."""
    teacher = make_tensors(SHAPES, 0)
    smoother = SpatialTemporalSmoother(preserve_prob=0.0, nonfinite='skip')
    with monkeypatch.context() as patch:
        _forbid_syncs(patch)
        with pytest.raises(AssertionError, match='synchronisation'):
            smoother.step(teacher, far_student(teacher, 1), 1)


# ----------------------------------------------------------------------
# Guards and fine kernels, chosen by device type
# ----------------------------------------------------------------------
@pytest.mark.parametrize('host_types,guard_type,fine_type,granularity',
                         [(('cpu', ), HostGuard, HostFineUpdate, 'element'),
                          (('cpu', ), HostGuard, TorchFineUpdate, 'channel'),
                          ((), DeviceGuard, TorchFineUpdate, 'element'),
                          ((), DeviceGuard, TorchFineUpdate, 'channel')])
def test_one_switch_selects_guard_and_fine_kernel(host_types, guard_type,
                                                  fine_type, granularity,
                                                  monkeypatch):
    """HOST_DEVICE_TYPES alone picks the guard and the fine kernel of a
    group, once per group; 'channel' takes the torch kernel everywhere
    (one dense pass beats gathering rows on the host too)."""
    monkeypatch.setattr(devices, 'HOST_DEVICE_TYPES', host_types)
    counter = NonFiniteCounter()
    assert type(build_guard('skip', torch.device('cpu'),
                            counter)) is guard_type
    assert type(build_guard('none', torch.device('cpu'), counter)) is Guard
    calls = []
    for cls in (HostFineUpdate, TorchFineUpdate):
        original = cls.__call__

        def spy(self, *args, cls=cls, original=original):
            calls.append(cls)
            return original(self, *args)

        monkeypatch.setattr(cls, '__call__', spy)
    teacher = make_tensors(SHAPES, 0) + make_tensors(SHAPES, 1, torch.float64)
    smoother = SpatialTemporalSmoother(
        preserve_prob=0.5, momentum=0.5, granularity=granularity)
    smoother.step(teacher, far_student(teacher, 2), 1)
    assert calls == [fine_type, fine_type]  # one call per dtype group


def test_host_guard_checks_at_once():
    counter = NonFiniteCounter()
    student = make_tensors(SHAPES, 0)
    calls = []
    update = lambda s, scale: calls.append((s, scale))  # noqa: E731
    assert HostGuard('skip', counter)(student, 1, update)
    assert calls == [(student, 1.0)]
    student[2].view(-1)[0] = float('inf')
    assert not HostGuard('skip', counter)(student, 2, update)
    assert len(calls) == 1
    with pytest.raises(NonFiniteStudentError):
        HostGuard('raise', counter)(student, 3, update)
    assert len(calls) == 1
    assert counter.pop() == 2 and counter.pop() == 0


def test_host_guard_checks_small_and_large_tensors():
    """Tiny tensors are checked together, large ones one by one; a NaN in
    any of them counts."""
    student = [torch.zeros(3), torch.zeros(1 << 15), torch.zeros(()),
               torch.zeros(7, dtype=torch.float64), torch.zeros(2, 1 << 14)]
    for index in range(len(student)):
        poisoned = [s.clone() for s in student]
        poisoned[index].view(-1)[-1] = float('nan')
        counter = NonFiniteCounter()
        assert not HostGuard('skip', counter)(poisoned, 1,
                                              lambda s, scale: None)
        assert counter.pop() == 1


def test_device_guard_masks_without_sync(monkeypatch):
    """The device guard hands the update a zeroed student and a 0 scale
    (an exact no-op lerp) when the student is not finite, never reading a
    device value; the step counts once across groups."""
    counter = NonFiniteCounter()
    finite = make_tensors(SHAPES, 0)
    poisoned = make_tensors(SHAPES, 1)
    poisoned[1].view(-1)[0] = float('nan')
    seen = []
    with monkeypatch.context() as patch:
        _forbid_syncs(patch)
        for student in (finite, poisoned, finite):
            assert DeviceGuard('skip', counter)(
                student, 7, lambda s, scale: seen.append((s, scale)))
    (s0, k0), (s1, k1), (s2, k2) = seen
    assert float(k0) == 1.0 and float(k1) == 0.0 and float(k2) == 1.0
    assert all(torch.equal(a, b) for a, b in zip(s0, finite))
    assert all(torch.equal(s, torch.zeros_like(s)) for s in s1)
    assert counter.pop() == 1


# ----------------------------------------------------------------------
# Large tensors: many mask blocks and pieces, threads
# ----------------------------------------------------------------------
# > 2**20 fragments for 'element', tensors straddling internal boundaries.
LARGE_SHAPES = [(1000, 1100), (70001, ), (3, 5), ()]


def _classify_rows(old, new, expected, granularity):
    """Vectorised :func:`count_updated` for large tensors."""
    updated = total = 0
    for o, n, e in zip(old, new, expected):
        rows = 1 if granularity == 'tensor' or o.dim() == 0 else o.shape[0]
        if granularity == 'element':
            rows = o.numel()
        o, n, e = (x.reshape(rows, -1) for x in (o, n, e))
        preserved = (n == o).all(1)
        lerped = torch.isclose(n, e, rtol=1e-6, atol=1e-6).all(1)
        assert torch.equal(preserved, ~lerped), 'a fragment is partly updated'
        updated += int(lerped.sum())
        total += rows
    return updated, total


@pytest.mark.parametrize('granularity', GRANULARITIES)
@pytest.mark.parametrize('momentum', [0.5, 1.0])
def test_large_tensors_preserved_or_updated(granularity, momentum):
    preserve_prob = 0.3
    teacher = make_tensors(LARGE_SHAPES, 0)
    smoother = SpatialTemporalSmoother(
        preserve_prob=preserve_prob,
        momentum=momentum,
        granularity=granularity)
    updated = total = 0
    for step in (1, 2):
        student = far_student(teacher, step)
        old = [t.clone() for t in teacher]
        smoother.step(teacher, student, step)
        # With momentum 1, updated fragments must be exact copies.
        expected = student if momentum == 1.0 else [
            torch.lerp(o, s, momentum) for o, s in zip(old, student)
        ]
        u, n = _classify_rows(old, teacher, expected, granularity)
        updated += u
        total += n
        if momentum == 1.0:  # bit-exact: every element is old or student
            for t, o, s in zip(teacher, old, student):
                assert bool(((t == o) | (t == s)).all())
    fraction = updated / total
    assert abs(fraction - (1 - preserve_prob)) <= binomial_tolerance(
        preserve_prob, total), (fraction, total)
    assert smoother.pop_statistics()['update_fraction'] == pytest.approx(
        fraction, abs=1e-12)


@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_large_update_independent_of_thread_count(granularity):
    """Ranks with different thread counts draw the same masks."""
    results = []
    threads = torch.get_num_threads()
    try:
        for num_threads in (1, 2):
            torch.set_num_threads(num_threads)
            teacher = make_tensors(LARGE_SHAPES, 0)
            smoother = SpatialTemporalSmoother(
                preserve_prob=0.5, momentum=0.3, granularity=granularity)
            smoother.step(teacher, far_student(teacher, 1), 1)
            results.append(teacher)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_relative_distance_builds_no_graph():
    """The distance statistic reads parameters that require grad; it must
    not record a graph (nor warn when read with ``float``)."""
    student = [torch.ones(3, requires_grad=True), torch.zeros(2)]
    teacher = [torch.zeros(3), torch.zeros(2)]
    distance = relative_distance(teacher, student)
    assert not distance.requires_grad
    assert float(distance) == pytest.approx(1.0)


@pytest.mark.parametrize('host_types', [('cpu', ), ()],
                         ids=['host', 'sync_free'])
def test_relative_distance_matches_float64(host_types, monkeypatch):
    """The host computes the distance piece by piece in one buffer; pieces
    that straddle tensors of several sizes and dtypes, and a student of
    another dtype, give the float64 value, as the accelerator path does."""
    monkeypatch.setattr(devices, 'HOST_DEVICE_TYPES', host_types)
    monkeypatch.setattr(smoother_module, '_DISTANCE_PIECE', 7)
    monkeypatch.setattr(smoother_module, '_DEVICE_DISTANCE_CHUNK', 9)
    gen = torch.Generator().manual_seed(0)
    shapes = [(5, 3), (16, ), (), (2, 2, 2)]
    student = [torch.randn(s, generator=gen) for s in shapes]
    teacher = [
        (s + 0.1 * torch.randn(s.shape, generator=gen)).to(dtype)
        for s, dtype in zip(student, [torch.float32, torch.float64] * 2)
    ]
    if not host_types:  # the fused kernels need matching dtypes
        student = [s.to(t.dtype) for s, t in zip(student, teacher)]
    num = sum(((t.double() - s.double())**2).sum()
              for t, s in zip(teacher, student))
    den = sum((s.double()**2).sum() for s in student)
    expected = float(num.sqrt() / den.sqrt())
    assert float(relative_distance(teacher, student)) == pytest.approx(
        expected, rel=1e-6)


@pytest.mark.parametrize('sizes,budget,expected', [
    ((4, 4, 4), 8, [(0, 2), (2, 3)]),
    ((20, 3, 3), 8, [(0, 1), (1, 3)]),  # a larger tensor alone
    ((3, 20, 3), 8, [(0, 1), (1, 2), (2, 3)]),
    ((1, 1), 8, [(0, 2)]),
    ((), 8, []),
])
def test_distance_chunks_stay_within_the_budget(sizes, budget, expected):
    """The accelerators form the differences one chunk of tensors at a
    time: consecutive, covering every tensor once, at most ``budget``
    elements unless a single tensor is larger."""
    tensors = [torch.zeros(n) for n in sizes]
    slices = smoother_module._chunk_slices(tensors, budget)
    assert [(c.start, c.stop) for c in slices] == expected


@requires_cuda('test_distance_chunks_stay_within_the_budget and '
               'test_relative_distance_matches_float64[sync_free] cover the '
               'chunks on CPU')
def test_relative_distance_on_cuda_needs_no_copy_of_the_model():
    """Reading the distance on a GPU allocates about one chunk of
    differences, not a copy of the model."""
    gen = torch.Generator(device='cuda').manual_seed(0)
    student = [
        torch.randn(1 << 22, device='cuda', generator=gen) for _ in range(16)
    ]
    teacher = [s + 0.5 for s in student]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    distance = relative_distance(teacher, student)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    model_bytes = sum(s.numel() * s.element_size() for s in student)
    chunk_bytes = smoother_module._DEVICE_DISTANCE_CHUNK * 4
    assert extra <= chunk_bytes + (1 << 20) < model_bytes
    expected = 0.5 * math.sqrt(16 * (1 << 22)) / float(
        torch.linalg.vector_norm(torch.cat(student)))
    assert float(distance) == pytest.approx(expected, rel=1e-4)


# ----------------------------------------------------------------------
# Copies checked with the update (e.g. BN statistics)
# ----------------------------------------------------------------------
@pytest.mark.parametrize('host_types', [('cpu', ), ()],
                         ids=['host', 'sync_free'])
@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_copies_are_applied_or_skipped_with_the_update(
        host_types, granularity, monkeypatch):
    """The copies of a step ride on the update's guard: both happen when
    everything is finite, neither when the copies' sources are not (and
    the step counts once); an int copy and a copy of another dtype (no
    update group of its own) are done all the same."""
    monkeypatch.setattr(devices, 'HOST_DEVICE_TYPES', host_types)
    teacher = make_tensors(SHAPES, 0)
    student = far_student(teacher, 1)
    dst = [torch.zeros(3), torch.zeros(2, dtype=torch.float64),
           torch.zeros((), dtype=torch.long)]
    src = [torch.ones(3), torch.ones(2, dtype=torch.float64),
           torch.tensor(7)]
    smoother = SpatialTemporalSmoother(
        preserve_prob=0.0, momentum=0.5, granularity=granularity)
    before = [t.clone() for t in teacher]
    smoother.step(teacher, student, 1, copies=(dst, src))
    assert all(not torch.equal(t, b) for t, b in zip(teacher, before))
    assert [d.tolist() for d in dst] == [[1.0] * 3, [1.0] * 2, 7]
    # A NaN among the copies' sources skips the update of that group.
    moved = [t.clone() for t in teacher]
    src[0][1] = float('nan')
    dst[0].zero_()
    smoother.step(teacher, far_student(teacher, 2), 2, copies=(dst, src))
    assert all(torch.equal(t, m) for t, m in zip(teacher, moved))
    assert dst[0].tolist() == [0.0] * 3
    assert smoother.pop_statistics()['nonfinite_steps'] == 1


def test_copies_without_an_update_are_still_guarded():
    """Where no tensor is updated at a step (momentum 0 here), the copies
    are done under their own guard."""
    smoother = SpatialTemporalSmoother(momentum=0.0)
    dst, src = [torch.zeros(2)], [torch.tensor([1.0, float('inf')])]
    smoother.step([torch.zeros(3)], [torch.ones(3)], 1, copies=(dst, src))
    assert dst[0].tolist() == [0.0, 0.0]
    src[0][1] = 2.0
    smoother.step([torch.zeros(3)], [torch.ones(3)], 2, copies=(dst, src))
    assert dst[0].tolist() == [1.0, 2.0]
    assert smoother.pop_statistics()['nonfinite_steps'] == 1
