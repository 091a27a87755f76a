"""Bad configuration fails at start-up with an error naming the key and the
value (or what was found)."""
import re

import pytest
import torch.nn as nn
from mmengine.model import (ExponentialMovingAverage, MomentumAnnealingEMA,
                            StochasticWeightAverage)
from mmengine.runner import Runner
from mmpretrain.models.utils import CosineEMA

from mmsts.engine.hooks import SpatialTemporalSmoothingHook
from mmsts.models import SpatialTemporalSmoothing
from mmsts.smoothing import (CosineMomentum, SpatialTemporalSmoother,
                             build_momentum_schedule)


def net():
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def smoother(**kwargs):
    return SpatialTemporalSmoother(**kwargs)


def wrapper(**kwargs):
    return SpatialTemporalSmoothing(net(), **kwargs)


def hook(**kwargs):
    return SpatialTemporalSmoothingHook(**kwargs)


BUILDERS = {'smoother': smoother, 'wrapper': wrapper, 'hook': hook}


def message(key, value):
    """A regex: the key, then the repr of the bad value."""
    return re.escape(key) + '.*' + re.escape(repr(value))


# Values outside [0, 1] (ValueError) or not numbers (TypeError).
OUT_OF_RANGE = [-0.1, 1.5, float('nan'), float('inf')]
NOT_A_NUMBER = ['0.5', True, [0.5]]


def _bad_unit_values():
    for value in OUT_OF_RANGE:
        yield pytest.param(value, ValueError, id=repr(value))
    for value in NOT_A_NUMBER:
        yield pytest.param(value, TypeError, id=repr(value))


@pytest.mark.parametrize('target', list(BUILDERS))
@pytest.mark.parametrize('key', ['preserve_prob', 'momentum'])
@pytest.mark.parametrize('value,error', list(_bad_unit_values()))
def test_unit_interval_options(target, key, value, error):
    with pytest.raises(error, match=message(key, value)):
        BUILDERS[target](**{key: value})


@pytest.mark.parametrize('value,error', list(_bad_unit_values()))
def test_end_momentum(value, error):
    match = message('end_momentum', value)
    with pytest.raises(error, match=match):
        CosineMomentum(0.01, end_momentum=value)
    with pytest.raises(error, match=match):
        build_momentum_schedule('cosine', 0.01, end_momentum=value)
    with pytest.raises(error, match=match):
        wrapper(momentum_schedule='cosine', end_momentum=value)
    with pytest.raises(error, match=match):
        hook(end_momentum=value)


@pytest.mark.parametrize('value', [-0.5, 2.0, float('nan')])
def test_end_momentum_checked_with_constant_schedule(value):
    """A bad value is an error even where the default schedule ignores
    it."""
    with pytest.raises(ValueError, match=message('end_momentum', value)):
        wrapper(end_momentum=value)


def _unknown_choices():
    for key in ('granularity', 'nonfinite'):
        bad = ('layer', 'Tensor') if key == 'granularity' else ('ignore', )
        for target in BUILDERS:
            # None is the hook's "keep the teacher's own", not a choice.
            values = bad if target == 'hook' else bad + (None, )
            for value in values:
                yield pytest.param(
                    target, key, value, id=f'{key}-{value!r}-{target}')


@pytest.mark.parametrize('target,key,value', list(_unknown_choices()))
def test_unknown_choices(target, key, value):
    with pytest.raises(ValueError, match=message(key, value)):
        BUILDERS[target](**{key: value})


def test_hook_none_keeps_the_teachers_own():
    """The positive control: None is accepted by the hook (and means
    "not set"), while the teacher and the smoother refuse it."""
    assert SpatialTemporalSmoothingHook(
        granularity=None, nonfinite=None).overrides == {}


@pytest.mark.parametrize('value', ['linear', 'Cosine', 'step'])
def test_unknown_momentum_schedule(value):
    match = message('momentum_schedule', value)
    with pytest.raises(ValueError, match=match):
        build_momentum_schedule(value, 0.01)
    with pytest.raises(ValueError, match=match):
        wrapper(momentum_schedule=value)
    with pytest.raises(ValueError, match=match):
        hook(momentum_schedule=value)


@pytest.mark.parametrize('value', [0, -1, 1.5, '2'])
def test_wrapper_interval(value):
    with pytest.raises(ValueError, match=message('interval', value)):
        wrapper(interval=value)


@pytest.mark.parametrize('value', [0, -3, 2.5])
def test_hook_log_interval(value):
    with pytest.raises(ValueError, match=message('log_interval', value)):
        hook(log_interval=value)


@pytest.mark.parametrize('key,value', [('teachers', 'target_net'),
                                       ('teachers', ['target_net', 3]),
                                       ('seed', '0'), ('seed', 1.0)])
def test_hook_types(key, value):
    with pytest.raises(TypeError, match=message(key, value)):
        hook(**{key: value})


def test_good_values_are_accepted():
    """The boundaries of every range are valid (the checks above are not
    rejecting everything)."""
    for value in (0, 0.0, 1, 1.0):
        smoother(preserve_prob=value, momentum=value)
        wrapper(preserve_prob=value, momentum=value)
        hook(preserve_prob=value, momentum=value, end_momentum=value)
    for granularity in ('tensor', 'channel', 'element'):
        wrapper(
            granularity=granularity,
            momentum_schedule='cosine',
            nonfinite='none',
            interval=3)
    hook(
        momentum_schedule='constant',
        nonfinite='raise',
        log_interval=1,
        teachers=['target_net'],
        seed=3)


# ----------------------------------------------------------------------
# Teacher discovery, with a real Runner
# ----------------------------------------------------------------------
class ByolLike(nn.Module):
    """A momentum teacher as mmpretrain builds it."""

    def __init__(self, teacher_type=CosineEMA, **kwargs):
        super().__init__()
        self.backbone = net()
        self.head = nn.Linear(3, 2)
        self.target_net = teacher_type(self.backbone, **kwargs)


class PlainTeacher(nn.Module):
    """A mean teacher as in mmdet: plain ``teacher`` and ``student``."""

    def __init__(self, teacher, student):
        super().__init__()
        self.teacher = teacher
        self.student = student


@pytest.fixture(scope='module')
def runner(tmp_path_factory):
    """One real, cheap Runner; each test gives it its model."""
    return Runner(
        model=nn.Linear(1, 1),
        work_dir=str(tmp_path_factory.mktemp('runner')),
        log_level='WARNING')


def before_run(runner, hook, model):
    runner.model = model
    hook.before_run(runner)


def test_named_teacher_not_found(runner):
    model = ByolLike()
    with pytest.raises(ValueError) as info:
        before_run(runner, hook(teachers=['nope']), model)
    text = str(info.value)
    assert "'nope'" in text and 'teachers' in text
    assert "['target_net']" in text  # the averaged models found
    assert 'backbone' in text and 'head' in text  # the submodules
    assert isinstance(model.target_net, CosineEMA)  # nothing was replaced


def test_model_without_teacher(runner):
    model = nn.Module()
    model.backbone = net()
    model.neck = nn.Linear(3, 3)
    with pytest.raises(ValueError, match='found no momentum teacher') as info:
        before_run(runner, hook(), model)
    assert "['backbone', 'neck']" in str(info.value)
    # The error points supervised models to the EMAHook route.
    assert "ema_type='SpatialTemporalSmoothing'" in str(info.value)


def test_plain_teacher_module_is_refused(runner):
    """A plain ``teacher`` module (an mmdet-style mean teacher, updated by
    some other hook) is not an averaged model: STS does not take it over,
    found or named."""
    model = PlainTeacher(net(), net())
    with pytest.raises(ValueError, match='found no momentum teacher'):
        before_run(runner, hook(), model)
    with pytest.raises(ValueError,
                       match="'teacher', a Sequential, not an averaged"):
        before_run(runner, hook(teachers=['teacher']), model)
    assert isinstance(model.teacher, nn.Sequential)


@pytest.mark.parametrize('teacher_type,kwargs', [
    (StochasticWeightAverage, {}),
    (MomentumAnnealingEMA, dict(momentum=0.01)),
])
def test_schedule_that_cannot_be_inferred(runner, teacher_type, kwargs):
    model = ByolLike(teacher_type, **kwargs)
    with pytest.raises(
            ValueError, match=f'target_net.*{teacher_type.__name__}'):
        before_run(runner, hook(), model)
    # Given a momentum, the hook takes the teacher over.
    model = ByolLike(teacher_type, **kwargs)
    sts_hook = hook(momentum=0.02)
    before_run(runner, sts_hook, model)
    assert isinstance(model.target_net, SpatialTemporalSmoothing)
    assert model.target_net.momentum == 0.02


def test_known_teachers_need_no_momentum(runner):
    """The positive control of the test above: EMA and CosineEMA teachers
    keep their own momentum."""
    for teacher_type in (ExponentialMovingAverage, CosineEMA):
        model = ByolLike(teacher_type, momentum=0.004)
        before_run(runner, hook(), model)
        assert isinstance(model.target_net, SpatialTemporalSmoothing)
        assert model.target_net.momentum == 0.004


# ----------------------------------------------------------------------
# Teacher/student mismatch at the first update
# ----------------------------------------------------------------------
def test_wrapper_student_shape_mismatch():
    sts = SpatialTemporalSmoothing(net())
    student = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    student[0] = nn.Linear(5, 3)
    with pytest.raises(
            ValueError,
            match=r'teacher.*`0\.weight` \(3, 4\).*student.*\(3, 5\)'):
        sts.update_parameters(student)
    assert int(sts.steps) == 0


def test_wrapper_student_tensor_count_mismatch():
    sts = SpatialTemporalSmoothing(net(), name='target_net')
    with pytest.raises(ValueError, match='target_net.*2 tensors.*4'):
        sts.update_parameters(nn.Linear(4, 3))


def test_adopted_teacher_checks_its_student(runner):
    """A teacher taken over by the hook checks the student it is given at
    its first update, even after the host model updated it."""
    model = ByolLike(CosineEMA, momentum=0.01)
    model.target_net.update_parameters(model.backbone)
    before_run(runner, hook(), model)
    wrong = nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2))
    with pytest.raises(ValueError, match=r'target_net.*0\.weight'):
        model.target_net.update_parameters(wrong)
