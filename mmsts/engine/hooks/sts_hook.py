"""Put Spatial-Temporal Smoothing in charge of a model's teachers."""
import logging
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.dist import broadcast_object_list
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import BaseAveragedModel, is_model_wrapper
from mmpretrain.registry import HOOKS

from mmsts.models import SpatialTemporalSmoothing, momentum_schedule_of
from mmsts.smoothing import (GRANULARITIES, MOMENTUM_SCHEDULES,
                             NONFINITE_POLICIES, CosineMomentum,
                             SpatialTemporalSmoother,
                             build_momentum_schedule, check_unit_interval,
                             relative_distance, stream_id)

DATA_BATCH = Optional[Union[dict, tuple, list]]


@HOOKS.register_module()
class SpatialTemporalSmoothingHook(Hook):
    """Replace the EMA of a model's momentum teachers by STS.

    The hook finds the teachers of the model: every
    :class:`~mmengine.model.BaseAveragedModel` submodule (BYOL ``target_net``,
    MoCo v2 / DenseCL ``encoder_k``, MoCo v3 ``momentum_encoder``, ...) or the
    attributes named in ``teachers``. Each is handed the STS rule through
    :class:`~mmsts.models.SpatialTemporalSmoothing`, which shares its tensors,
    so the model still updates it where it did before (e.g. inside
    ``loss()``) and the checkpoint keys do not change. A model with a plain
    ``teacher`` module (not an averaged model) next to a ``student``, as in
    mmdet's mean teachers, is updated by the hook after every iteration.

    By default each teacher keeps its own momentum and schedule (mmpretrain
    ``CosineEMA`` -> cosine, ``ExponentialMovingAverage`` -> constant), so
    adding the hook changes only the smoothing. Masks are a pure function of
    (seed, teacher name, step): identical on every rank, redrawn exactly
    after a resume.

    Args:
        preserve_prob (float): Probability that a fragment is preserved at a
            step, in [0, 1]. The paper uses 0.7 for BYOL and 0.5 for MoCo v2
            and FixMatch. Defaults to 0.5.
        momentum (float, optional): Weight given to the student, in [0, 1]
            (MMEngine convention: the paper's teacher weight 0.99 is
            ``momentum=0.01``; 1 gives Spatial Ensemble alone). None keeps
            each teacher's own. Defaults to None.
        momentum_schedule (str, optional): ``'constant'`` or ``'cosine'``
            (from ``momentum`` to ``end_momentum`` over the run's
            ``max_iters``). None keeps each teacher's own. Defaults to None.
        end_momentum (float, optional): Final momentum of the cosine
            schedule; None keeps the teacher's own, or 0. Defaults to None.
        granularity (str): ``'tensor'`` (the paper's fragments),
            ``'channel'`` or ``'element'`` (mmsts extensions). Defaults to
            ``'tensor'``.
        teachers (Sequence[str], optional): Dotted attribute names of the
            teachers in the model. None finds every averaged model, or a
            plain ``teacher`` module. Defaults to None.
        student (str): Attribute of the student, for plain teacher modules
            only. Defaults to ``'student'``.
        seed (int, optional): Seed of the masks; None uses the runner's
            seed on rank 0, on every rank (``diff_rank_seed`` offsets
            ``runner.seed`` by the rank). Defaults to None.
        nonfinite (str): ``'skip'`` the update when the student holds
            NaN/Inf (and warn), or ``'raise'``, or ``'none'`` (no check).
            Defaults to ``'skip'``.
        copy_buffers (bool): For plain teacher modules: copy the student's
            buffers (BN statistics) into the teacher after each update, as
            mmpretrain's teachers do. Defaults to True.
        log_interval (int, optional): Log momentum, fraction of fragments
            updated and teacher-student distance every this many
            iterations. None uses the LoggerHook's interval. Defaults to
            None.
    """

    priority = 'NORMAL'  # before LoggerHook, so our scalars are in its line

    def __init__(self,
                 preserve_prob: float = 0.5,
                 momentum: Optional[float] = None,
                 momentum_schedule: Optional[str] = None,
                 end_momentum: Optional[float] = None,
                 granularity: str = 'tensor',
                 teachers: Optional[Sequence[str]] = None,
                 student: str = 'student',
                 seed: Optional[int] = None,
                 nonfinite: str = 'skip',
                 copy_buffers: bool = True,
                 log_interval: Optional[int] = None) -> None:
        self.preserve_prob = check_unit_interval('preserve_prob',
                                                 preserve_prob)
        if momentum is not None:
            momentum = check_unit_interval('momentum', momentum)
        if end_momentum is not None:
            end_momentum = check_unit_interval('end_momentum', end_momentum)
        if momentum_schedule is not None and \
                momentum_schedule not in MOMENTUM_SCHEDULES:
            raise ValueError(
                f'`momentum_schedule` must be one of '
                f'{sorted(MOMENTUM_SCHEDULES)} or None, but got '
                f'{momentum_schedule!r}')
        if granularity not in GRANULARITIES:
            raise ValueError(f'`granularity` must be one of {GRANULARITIES}, '
                             f'but got {granularity!r}')
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f'`nonfinite` must be one of '
                             f'{NONFINITE_POLICIES}, but got {nonfinite!r}')
        if teachers is not None and (isinstance(teachers, str) or not all(
                isinstance(t, str) for t in teachers)):
            raise TypeError('`teachers` must be a list of attribute names, '
                            f'but got {teachers!r}')
        if seed is not None and not isinstance(seed, int):
            raise TypeError(f'`seed` must be an int or None, got {seed!r}')
        if log_interval is not None and (not isinstance(log_interval, int)
                                         or log_interval < 1):
            raise ValueError('`log_interval` must be a positive int or None, '
                             f'but got {log_interval!r}')
        self.momentum = momentum
        self.momentum_schedule = momentum_schedule
        self.end_momentum = end_momentum
        self.granularity = granularity
        self.teacher_names = list(teachers) if teachers is not None else None
        self.student_name = student
        self.seed = seed
        self.nonfinite = nonfinite
        self.copy_buffers = copy_buffers
        self.log_interval = log_interval
        # name -> SpatialTemporalSmoothing (averaged teachers)
        self.averaged: Dict[str, SpatialTemporalSmoothing] = {}
        # name -> (teacher module, student module, smoother) (plain teachers)
        self.plain: Dict[str, tuple] = {}

    # ------------------------------------------------------------------
    # Set-up
    # ------------------------------------------------------------------
    def before_run(self, runner) -> None:
        """Find the teachers and put STS in charge of them."""
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        for name, teacher in self._find_teachers(model).items():
            if isinstance(teacher, BaseAveragedModel):
                self._adopt(model, name, teacher)
            else:
                self._adopt_plain(model, name, teacher)
        if self.log_interval is None:
            logger_hook = next((h for h in runner.hooks
                                if type(h).__name__ == 'LoggerHook'), None)
            self.log_interval = getattr(logger_hook, 'interval', 50)
        self._log_latest_values(runner)
        for name, teacher in self.averaged.items():
            runner.logger.info(f'STS teacher `{name}`: {teacher.smoother!r}')
        for name, (_, _, smoother) in self.plain.items():
            runner.logger.info(f'STS plain teacher `{name}` (updated after '
                               f'each iteration): {smoother!r}')

    def _find_teachers(self, model: nn.Module) -> Dict[str, nn.Module]:
        averaged = _outermost_averaged_models(model)
        if self.teacher_names is None:
            if averaged:
                return averaged
            teacher = getattr(model, 'teacher', None)
            if isinstance(teacher, nn.Module):
                return {'teacher': teacher}
            raise ValueError(
                'SpatialTemporalSmoothingHook found no teacher in '
                f'{type(model).__name__}: no BaseAveragedModel submodule and '
                'no `teacher` attribute. Its submodules are '
                f'{[n for n, _ in model.named_children()]}; name the teacher '
                'with `teachers=[...]`.')
        found = {}
        for name in self.teacher_names:
            try:
                found[name] = model.get_submodule(name)
            except AttributeError:
                raise ValueError(
                    f'`teachers` names {name!r}, which is not a submodule of '
                    f'{type(model).__name__}. Averaged models found: '
                    f'{sorted(averaged)}; submodules: '
                    f'{[n for n, _ in model.named_children()]}') from None
        return found

    def _adopt(self, model: nn.Module, name: str,
               teacher: BaseAveragedModel) -> None:
        """Replace ``teacher`` by an STS model sharing its tensors."""
        host_schedule = momentum_schedule_of(teacher)
        if host_schedule is None and self.momentum is None:
            raise ValueError(
                f'Cannot take over the momentum of teacher `{name}` of type '
                f'{type(teacher).__name__}; set `momentum` (and '
                '`momentum_schedule`) of SpatialTemporalSmoothingHook.')
        schedule = self._schedule(host_schedule)
        new = SpatialTemporalSmoothing.from_averaged_model(
            teacher,
            preserve_prob=self.preserve_prob,
            granularity=self.granularity,
            name=name,
            nonfinite=self.nonfinite)
        new.smoother.schedule = schedule
        parent_name, _, attr = name.rpartition('.')
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, new)
        self.averaged[name] = new

    def _adopt_plain(self, model: nn.Module, name: str,
                     teacher: nn.Module) -> None:
        student = getattr(model, self.student_name, None)
        if not isinstance(student, nn.Module):
            raise ValueError(
                f'Teacher `{name}` is a plain module, so the hook needs the '
                f'student: `student={self.student_name!r}` is not a module of '
                f'{type(model).__name__} (found {type(student).__name__}).')
        if self.momentum is None:
            raise ValueError(
                f'Teacher `{name}` is a plain {type(teacher).__name__}, with '
                'no momentum of its own: set `momentum` of '
                'SpatialTemporalSmoothingHook.')
        _check_same_shapes(name, teacher, student)
        smoother = SpatialTemporalSmoother(
            preserve_prob=self.preserve_prob,
            momentum=self._schedule(None),
            granularity=self.granularity,
            stream=stream_id(name),
            nonfinite=self.nonfinite)
        self.plain[name] = (teacher, student, smoother)

    def _schedule(self, host_schedule):
        """The hook's momentum options over the host teacher's schedule."""
        kind = self.momentum_schedule or (
            'cosine' if isinstance(host_schedule, CosineMomentum) else
            'constant')
        momentum = self.momentum if self.momentum is not None else \
            host_schedule.momentum
        if kind == 'constant':
            return build_momentum_schedule(kind, momentum)
        end = self.end_momentum
        if end is None:
            end = getattr(host_schedule, 'end_momentum', 0.0)
        return build_momentum_schedule(kind, momentum, end_momentum=end)

    def _log_latest_values(self, runner) -> None:
        """Our scalars are pushed once per log interval: make the log
        processor print the latest value, not a window mean."""
        custom_cfg = runner.log_processor.custom_cfg
        known = {c.get('data_src') for c in custom_cfg}
        for key in self._scalar_keys():
            if key not in known:
                custom_cfg.append(dict(data_src=key, method_name='current'))

    def _scalar_keys(self) -> List[str]:
        return [
            f'sts/{name}/{stat}' for name in [*self.averaged, *self.plain]
            for stat in ('momentum', 'update_fraction', 'distance',
                         'nonfinite_steps')
        ]

    def before_train(self, runner) -> None:
        """Set the seed and the schedules' length; initialise plain
        teachers."""
        seed = self.seed if self.seed is not None else _run_seed(runner)
        for teacher in self.averaged.values():
            teacher.smoother.seed = seed
            teacher.total_steps = runner.max_iters
        for teacher, student, smoother in self.plain.values():
            smoother.seed = seed
            if runner.iter == 0:
                _copy_module(teacher, student)

    # ------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------
    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch: DATA_BATCH = None,
                         outputs: Optional[dict] = None) -> None:
        """Update plain teachers; log every ``log_interval`` iterations."""
        for teacher, student, smoother in self.plain.values():
            # Step 0 was the copy in before_train; iteration k is step k+1.
            smoother.step(
                list(teacher.parameters()),
                list(student.parameters()),
                step=runner.iter + 1,
                total_steps=runner.max_iters)
            if self.copy_buffers:
                smoother.copy_(
                    list(teacher.buffers()), list(student.buffers()),
                    step=runner.iter + 1)
        if self.every_n_train_iters(runner, self.log_interval):
            self._log(runner)

    def _log(self, runner) -> None:
        stats = {
            name: teacher.pop_statistics()
            for name, teacher in self.averaged.items()
        }
        for name, (teacher, student, smoother) in self.plain.items():
            stats[name] = smoother.pop_statistics()
            stats[name]['distance'] = float(
                relative_distance(
                    list(teacher.parameters()), list(student.parameters())))
        for name, values in stats.items():
            if values.get('nonfinite_steps'):
                print_log(
                    f'STS teacher `{name}`: the student held NaN/Inf at '
                    f'{values["nonfinite_steps"]} step(s); those updates '
                    'were skipped.',
                    logger='current',
                    level=logging.WARNING)
            for stat, value in values.items():
                runner.message_hub.update_scalar(f'train/sts/{name}/{stat}',
                                                 value)

    # ------------------------------------------------------------------
    # Checkpoints
    # ------------------------------------------------------------------
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Record the STS set-up (the state itself lives in the model)."""
        teachers = {
            name: t.smoother for name, t in self.averaged.items()
        }
        teachers.update({n: s for n, (_, _, s) in self.plain.items()})
        checkpoint.setdefault('meta', {})['sts'] = {
            name: dict(
                seed=s.seed,
                preserve_prob=s.preserve_prob,
                granularity=s.granularity,
                schedule=repr(s.schedule))
            for name, s in teachers.items()
        }

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """On resume, keep the masks of the interrupted run: its seed wins."""
        saved = checkpoint.get('meta', {}).get('sts')
        if not saved or not getattr(runner, '_resume', False):
            return
        seeds = {v['seed'] for v in saved.values()}
        if len(seeds) == 1:
            (saved_seed, ) = seeds
            if self.seed is not None and self.seed != saved_seed:
                print_log(
                    f'SpatialTemporalSmoothingHook: seed={self.seed} differs '
                    f'from the resumed checkpoint\'s {saved_seed}; using '
                    f'{saved_seed} so the masks continue exactly.',
                    logger='current',
                    level=logging.WARNING)
            self.seed = saved_seed


def _run_seed(runner) -> int:
    """The run's seed, the same on every rank.

    With ``randomness=dict(diff_rank_seed=True)`` MMEngine adds the rank to
    ``runner.seed``; masks keyed on it would differ across ranks, so rank
    0's seed (the configured one) is used everywhere.
    """
    seed = [runner.seed if runner.seed is not None else 0]
    broadcast_object_list(seed)  # a no-op when not distributed
    return seed[0]


def _outermost_averaged_models(
        model: nn.Module) -> Dict[str, BaseAveragedModel]:
    """Every BaseAveragedModel in ``model`` that is not inside another."""
    found: Dict[str, BaseAveragedModel] = {}
    for name, module in model.named_modules():
        if isinstance(module, BaseAveragedModel) and not any(
                name.startswith(f'{outer}.') for outer in found):
            found[name] = module
    return found


def _check_same_shapes(name: str, teacher: nn.Module,
                       student: nn.Module) -> None:
    t_params = list(teacher.named_parameters())
    s_params = list(student.named_parameters())
    if len(t_params) != len(s_params):
        raise ValueError(
            f'Teacher `{name}` has {len(t_params)} parameters but the student '
            f'has {len(s_params)}')
    for (tn, tp), (sn, sp) in zip(t_params, s_params):
        if tp.shape != sp.shape:
            raise ValueError(
                f'Shape mismatch between teacher `{name}.{tn}` '
                f'{tuple(tp.shape)} and student `{sn}` {tuple(sp.shape)}')


@torch.no_grad()
def _copy_module(dst: nn.Module, src: nn.Module) -> None:
    """Start a plain teacher as a copy of the student."""
    for dst_tensors, src_tensors in ((dst.parameters(), src.parameters()),
                                     (dst.buffers(), src.buffers())):
        dst_tensors = list(dst_tensors)
        if dst_tensors:
            torch._foreach_copy_(dst_tensors, list(src_tensors))
