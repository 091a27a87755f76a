"""One teacher, one lifecycle: an STS teacher behaves the same whichever
way it was built.

Three real MMEngine runs train the same tiny classifier with the same STS
settings, the teacher being

* ``model``: built by the model itself and updated in ``loss()`` (what
  FixMatch does),
* ``hook``: an MMEngine ``ExponentialMovingAverage`` inside the model, taken
  over by ``SpatialTemporalSmoothingHook``,
* ``ema_hook``: built by MMEngine's ``EMAHook(ema_type=
  'SpatialTemporalSmoothing')`` and updated after each iteration.

They must draw the same masks (keyed by the run's seed), report the same
statistics and warnings, raise the same errors and record the same settings
in checkpoints; a resumed run with other settings warns and keeps the
history; the update works inside a ``torch.compile``-d ``train_step``.
"""
import logging
import uuid

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.hooks import Hook
from mmengine.model import BaseModel, ExponentialMovingAverage
from mmengine.runner import Runner
from torch.utils.data import Dataset

from mmsts.models import SpatialTemporalSmoothing
from mmsts.smoothing import NonFiniteStudentError, SpatialTemporalSmoother

PATHS = ('model', 'hook', 'ema_hook')
STS = dict(preserve_prob=0.6, momentum=0.1, granularity='tensor',
           log_interval=3)
NAN_ITER = 2  # the iteration whose student BN statistics are NaN


def tiny_net():
    return nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


class Classifier(BaseModel):
    """A tiny classifier on 4-d inputs (the EMAHook path averages it)."""

    def __init__(self):
        super().__init__()
        self.student = tiny_net()

    def forward(self, inputs, labels=None, mode='tensor'):
        logits = self.student(inputs)
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, labels))
        return logits


class WithTeacher(Classifier):
    """A classifier with a momentum teacher of its student, updated at the
    start of ``loss()`` as mmpretrain's BYOL and mmsts's FixMatch do.

    Args:
        teacher (dict | None): Arguments of an STS teacher built here; None
            builds MMEngine's ``ExponentialMovingAverage`` instead.
    """

    def __init__(self, teacher=None):
        super().__init__()
        if teacher is None:
            self.teacher = ExponentialMovingAverage(
                self.student, momentum=STS['momentum'])
        else:
            self.teacher = SpatialTemporalSmoothing(self.student, **teacher)

    def forward(self, inputs, labels=None, mode='tensor'):
        if mode == 'loss':
            self.teacher.update_parameters(self.student)
        return super().forward(inputs, labels, mode)


class Blobs(Dataset):
    """Three Gaussian blobs in 4-d, a fixed draw."""

    def __init__(self, num=48):
        gen = torch.Generator().manual_seed(0)
        self.labels = torch.arange(num) % 3
        self.inputs = torch.randn(num, 4, generator=gen) + \
            F.one_hot(self.labels, 4).float() * 3

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return dict(inputs=self.inputs[index], labels=self.labels[index])


class NaNStatistics(Hook):
    """Make the student's BN running mean NaN during one iteration (it does
    not enter the loss, so training goes on) and repair it afterwards, after
    every teacher update of that iteration."""

    priority = 'LOWEST'

    def __init__(self, student, iteration):
        self.bn = student[1]
        self.iteration = iteration

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter == self.iteration:
            self.saved = self.bn.running_mean.clone()
            self.bn.running_mean.fill_(float('nan'))

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if runner.iter == self.iteration:
            self.bn.running_mean.copy_(self.saved)


class MaskSpy:
    """Records, for every smoother step, the seed, stream, step and the
    update flags the smoother draws."""

    def __init__(self, monkeypatch):
        self.calls = []
        step = SpatialTemporalSmoother.step
        spy = self

        def recorded(self, teacher, student, step_, *args, **kwargs):
            spy.calls.append((self.seed, self.masks.stream, step_,
                              tuple(self.masks.update_flags(
                                  step_, len(teacher)).tolist())))
            return step(self, teacher, student, step_, *args, **kwargs)

        monkeypatch.setattr(SpatialTemporalSmoother, 'step', recorded)


def make_runner(path, work_dir, sts=None, seed=0, max_iters=6, resume=False,
                extra_hooks=(), compile=None, nan_iter=NAN_ITER):
    """A runner training ``Classifier`` with an STS teacher built by
    ``path``; returns ``(runner, get_teacher)``."""
    sts = dict(STS if sts is None else sts)
    if path == 'model':
        model = WithTeacher(sts)
        hooks = []
    elif path == 'hook':
        model = WithTeacher(None)
        hooks = [dict(type='SpatialTemporalSmoothingHook', **sts)]
    else:
        model = Classifier()
        hooks = [dict(type='EMAHook', ema_type='SpatialTemporalSmoothing',
                      **sts)]
    hooks = hooks + [NaNStatistics(model.student, nan_iter)] + \
        list(extra_hooks)
    runner = Runner(
        model=model,
        work_dir=str(work_dir),
        experiment_name=f'{path}-{uuid.uuid4().hex}',
        default_scope='mmpretrain',
        train_dataloader=dict(
            dataset=Blobs(),
            sampler=dict(type='DefaultSampler', shuffle=True),
            batch_size=8,
            num_workers=0,
            collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=1),
            checkpoint=dict(type='CheckpointHook', interval=3,
                            by_epoch=False)),
        custom_hooks=hooks,
        randomness=dict(seed=seed),
        resume=resume,
        load_from=resume if isinstance(resume, str) else None,
        log_level='WARNING',
        cfg=dict(compile=compile) if compile else None)
    return runner


def teacher_of(runner, path):
    if path == 'ema_hook':
        hook = next(h for h in runner.hooks if type(h).__name__ == 'EMAHook')
        return hook.ema_model
    return runner.model.teacher


def sts_scalars(runner):
    prefix = 'train/sts/teacher/'
    return {
        key[len(prefix):]: [float(v) for v in buf.data[0]]
        for key, buf in runner.message_hub.log_scalars.items()
        if key.startswith(prefix) and key != prefix + 'distance'
    }


@pytest.fixture
def spy(monkeypatch):
    return MaskSpy(monkeypatch)


def warnings_of(caplog):
    return [
        r.getMessage().replace('\n', ' ') for r in caplog.records
        if r.levelno >= logging.WARNING and 'STS' in r.getMessage()
    ]


def _mmengine_logs_to_caplog(caplog):
    """MMEngine's logger does not propagate: attach pytest's handler."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    logger.addHandler(caplog.handler)
    return logger


def test_same_masks_statistics_and_warnings_on_every_path(
        tmp_path, spy, caplog):
    """Seed 123 keys the masks on every path (not seed 0); the NaN step is
    skipped, counted and reported the same way; the record is the same."""
    results = {}
    for path in PATHS:
        spy.calls.clear()
        caplog.clear()
        runner = make_runner(path, tmp_path / path, seed=123)
        logger = _mmengine_logs_to_caplog(caplog)
        try:
            runner.train()
        finally:
            logger.removeHandler(caplog.handler)
        teacher = teacher_of(runner, path)
        assert isinstance(teacher, SpatialTemporalSmoothing), path
        record = runner.message_hub.get_info('sts/teacher')
        results[path] = dict(
            calls=list(spy.calls),
            seed=teacher.smoother.seed,
            stats=sts_scalars(runner),
            warnings=warnings_of(caplog),
            record=record)
    reference = results['model']
    assert reference['seed'] == 123
    assert [c[2] for c in reference['calls']] == [1, 2, 3, 4, 5]
    assert all(c[0] == 123 for c in reference['calls'])
    # Statistics read at updates 3 and 6: the NaN step counted once.
    assert reference['stats']['nonfinite_steps'] == [1.0, 0.0]
    assert len(reference['warnings']) == 1
    assert 'NaN/Inf at 1 update' in reference['warnings'][0]
    assert reference['record']['settings']['seed'] == 123
    assert reference['record']['settings']['preserve_prob'] == 0.6
    for path in PATHS[1:]:
        for key, value in reference.items():
            assert results[path][key] == value, (path, key)


def test_masks_follow_the_run_seed(tmp_path, spy):
    """Two seeds, two mask sequences (the 5-seed sweep used to share
    one)."""
    flags = {}
    for seed in (1, 2):
        spy.calls.clear()
        make_runner('ema_hook', tmp_path / str(seed), seed=seed).train()
        flags[seed] = [c[3] for c in spy.calls]
        assert {c[0] for c in spy.calls} == {seed}
    assert flags[1] != flags[2]


@pytest.mark.parametrize('path', PATHS)
def test_raise_policy_raises_on_every_path(tmp_path, path):
    sts = dict(STS, nonfinite='raise')
    runner = make_runner(path, tmp_path, sts=sts)
    with pytest.raises(NonFiniteStudentError):
        runner.train()
    assert runner.iter == NAN_ITER  # at once, on the host


@pytest.mark.parametrize('path', PATHS)
def test_raise_policy_raises_on_accelerators_without_the_hook(
        tmp_path, path, accelerator_path):
    """On an accelerator the NaN step is found when the statistics are
    read: at the teacher's log interval (update 3), whatever built it."""
    sts = dict(STS, nonfinite='raise')
    runner = make_runner(path, tmp_path, sts=sts)
    with pytest.raises(NonFiniteStudentError, match='1 step'):
        runner.train()
    assert runner.iter == 2  # the iteration of update 3 (counts from 0)


@pytest.mark.parametrize('path', PATHS)
def test_raise_surfaces_by_the_end_of_training(tmp_path, path,
                                               accelerator_path):
    """A NaN after the last log interval is still reported: the last
    update reads the statistics."""
    sts = dict(STS, nonfinite='raise', log_interval=100)
    runner = make_runner(path, tmp_path, sts=sts, max_iters=5, nan_iter=3)
    with pytest.raises(NonFiniteStudentError):
        runner.train()


def test_first_update_does_not_copy_a_nan_student():
    student = tiny_net()
    teacher = SpatialTemporalSmoothing(student, preserve_prob=0.0)
    before = {k: v.clone() for k, v in teacher.module.state_dict().items()}
    with torch.no_grad():
        student[0].weight[0, 0] = float('nan')
        student[3].weight.add_(1)
    teacher.update_parameters(student)  # update 0: the copy, skipped
    for key, value in teacher.module.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert teacher.pop_statistics()['nonfinite_steps'] == 1
    raising = SpatialTemporalSmoothing(student, nonfinite='raise')
    with pytest.raises(NonFiniteStudentError):
        raising.update_parameters(student)


@pytest.mark.parametrize('path', PATHS)
def test_resume_with_other_settings_warns_and_keeps_history(
        tmp_path, path, caplog):
    runner = make_runner(path, tmp_path, max_iters=3)
    runner.train()
    first = runner.message_hub.get_info('sts/teacher')
    checkpoint = str(tmp_path / 'iter_3.pth')
    saved = torch.load(checkpoint, weights_only=False)
    assert saved['message_hub']['runtime_info']['sts/teacher'] == first
    changed = dict(STS, preserve_prob=0.8, granularity='channel')
    resumed = make_runner(path, tmp_path, sts=changed, resume=checkpoint)
    logger = _mmengine_logs_to_caplog(caplog)
    try:
        resumed.train()
    finally:
        logger.removeHandler(caplog.handler)
    warning = [w for w in warnings_of(caplog) if 'differ' in w]
    assert len(warning) == 1
    assert 'preserve_prob: 0.6 -> 0.8' in warning[0]
    assert "granularity: 'tensor' -> 'channel'" in warning[0]
    teacher = teacher_of(resumed, path)
    # The interrupted run's seed is kept, so the masks continue exactly.
    assert teacher.smoother.seed == first['settings']['seed']
    record = torch.load(str(tmp_path / 'iter_6.pth'),
                        weights_only=False)['message_hub']['runtime_info'][
                            'sts/teacher']
    assert [h['step'] for h in record['history']] == [0, 3]
    assert [h['preserve_prob'] for h in record['history']] == [0.6, 0.8]
    assert record['settings']['granularity'] == 'channel'


def test_resume_with_the_same_settings_is_silent(tmp_path, caplog):
    make_runner('model', tmp_path, max_iters=3).train()
    resumed = make_runner(
        'model', tmp_path, resume=str(tmp_path / 'iter_3.pth'))
    logger = _mmengine_logs_to_caplog(caplog)
    try:
        resumed.train()
    finally:
        logger.removeHandler(caplog.handler)
    assert not [w for w in warnings_of(caplog) if 'differ' in w]
    record = resumed.message_hub.get_info('sts/teacher')
    assert [h['step'] for h in record['history']] == [0]


@pytest.mark.parametrize('path', ['model', 'hook'])
def test_update_inside_a_compiled_train_step(tmp_path, path):
    """``compile=True`` compiles ``train_step``; the teacher's update runs
    outside the graph (host-side mask draws and step bookkeeping)."""
    torch._dynamo.reset()
    runner = make_runner(
        path, tmp_path, max_iters=3, compile=True,
        nan_iter=-1)
    runner.train()
    teacher = teacher_of(runner, path)
    assert int(teacher.steps) == 3
    expected = SpatialTemporalSmoothing(tiny_net(), **STS)
    assert teacher.settings == expected.settings
