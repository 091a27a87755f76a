"""Put Spatial-Temporal Smoothing in charge of a model's teachers."""
import weakref
from typing import Dict, Optional, Sequence

import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.model import BaseAveragedModel, is_model_wrapper
from mmpretrain.registry import HOOKS

from mmsts.models import SpatialTemporalSmoothing
from mmsts.models.averaged_model import DEFAULT_SETTINGS, build_smoother


@HOOKS.register_module()
class SpatialTemporalSmoothingHook(Hook):
    """Replace the EMA of a model's momentum teachers by STS.

    The hook finds the teachers of the model, every
    :class:`~mmengine.model.BaseAveragedModel` submodule (BYOL ``target_net``,
    MoCo v2 / DenseCL ``encoder_k``, MoCo v3 ``momentum_encoder``, FixMatch's
    ``teacher``, ...) or the attributes named in ``teachers``, and hands each
    to :meth:`SpatialTemporalSmoothing.take_over
    <mmsts.models.SpatialTemporalSmoothing.take_over>`. The model still
    updates its teacher where it did before (e.g. inside ``loss()``) and the
    checkpoint keys do not change.

    The hook is wiring only: it passes on the options that are set (not
    None) and nothing else. A teacher that is already STS (e.g. FixMatch's)
    keeps its own settings otherwise; an EMA teacher keeps its momentum
    schedule (mmpretrain ``CosineEMA`` -> cosine, ``ExponentialMovingAverage``
    -> constant) and gets STS's defaults for the rest. Seeding, the NaN/Inf
    policy, statistics and the record of settings in checkpoints belong to
    the teacher, which behaves the same with or without this hook.

    For a supervised model (no momentum teacher inside), use MMEngine's
    ``EMAHook`` with ``ema_type='SpatialTemporalSmoothing'`` instead.

    Args:
        preserve_prob (float, optional): Probability that a fragment is
            preserved at a step, in [0, 1]. The paper uses 0.7 for BYOL and
            0.5 for MoCo v2 and FixMatch. Defaults to None (the teacher's
            own; 0.5 for an EMA teacher).
        momentum (float, optional): Weight given to the student, in [0, 1]
            (MMEngine convention: the paper's teacher weight 0.99 is
            ``momentum=0.01``; 1 gives Spatial Ensemble alone). Defaults to
            None.
        momentum_schedule (str, optional): ``'constant'`` or ``'cosine'``
            (from ``momentum`` to ``end_momentum`` over the run's
            ``max_iters``). Defaults to None.
        end_momentum (float, optional): Final momentum of the cosine
            schedule. Defaults to None.
        granularity (str, optional): ``'tensor'`` (the paper's fragments),
            ``'channel'`` or ``'element'`` (mmsts extensions). Defaults to
            None.
        teachers (Sequence[str], optional): Dotted attribute names of the
            teachers in the model. None finds every averaged model that is
            not inside another. Defaults to None.
        seed (int, optional): Seed of the masks. Defaults to None (the
            run's seed, see :class:`~mmsts.models.SpatialTemporalSmoothing`).
        nonfinite (str, optional): ``'skip'``, ``'raise'`` or ``'none'``.
            Defaults to None.
        log_interval (int, optional): Updates between two reads of the
            teacher's statistics. Defaults to None.
        buffers (str, optional): ``'copy'``, ``'keep'`` or ``'smooth'``:
            what an update does to the teacher's buffers (BN statistics).
            Defaults to None.

    Raises at start-up, naming the key and the value: an option out of
    range, no teacher found, a teacher whose momentum STS cannot take over
    without ``momentum``, or two hooks claiming the same teacher.
    """

    priority = 'NORMAL'

    def __init__(self,
                 preserve_prob: Optional[float] = None,
                 momentum: Optional[float] = None,
                 momentum_schedule: Optional[str] = None,
                 end_momentum: Optional[float] = None,
                 granularity: Optional[str] = None,
                 teachers: Optional[Sequence[str]] = None,
                 seed: Optional[int] = None,
                 nonfinite: Optional[str] = None,
                 log_interval: Optional[int] = None,
                 buffers: Optional[str] = None) -> None:
        self.overrides = {
            k: v
            for k, v in dict(
                preserve_prob=preserve_prob,
                momentum=momentum,
                momentum_schedule=momentum_schedule,
                end_momentum=end_momentum,
                granularity=granularity,
                seed=seed,
                nonfinite=nonfinite,
                log_interval=log_interval,
                buffers=buffers).items() if v is not None
        }
        # Validate now: a bad value fails when the hook is built.
        build_smoother('teacher', {
            k: v
            for k, v in self.overrides.items() if k in DEFAULT_SETTINGS
        })
        if log_interval is not None and (isinstance(log_interval, bool)
                                         or not isinstance(log_interval, int)
                                         or log_interval < 1):
            raise ValueError('`log_interval` must be a positive int or None, '
                             f'but got {log_interval!r}')
        if teachers is not None and (isinstance(teachers, str) or not all(
                isinstance(t, str) for t in teachers)):
            raise TypeError('`teachers` must be a list of attribute names, '
                            f'but got {teachers!r}')
        self.teacher_names = list(teachers) if teachers is not None else None
        self.teachers: Dict[str, SpatialTemporalSmoothing] = {}

    def before_run(self, runner) -> None:
        """Find the teachers and put STS in charge of them."""
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        for name, teacher in self._find_teachers(model).items():
            owner = getattr(teacher, '_sts_hook', None)
            if owner is not None and owner() not in (None, self):
                raise ValueError(
                    f'Two SpatialTemporalSmoothingHooks claim teacher '
                    f'`{name}` of {type(model).__name__}: keep one hook in '
                    '`custom_hooks` and give it all the options.')
            new = SpatialTemporalSmoothing.take_over(
                teacher, name=name, **self.overrides)
            new._sts_hook = weakref.ref(self)
            if new is not teacher:
                parent_name, _, attr = name.rpartition('.')
                parent = model.get_submodule(
                    parent_name) if parent_name else model
                setattr(parent, attr, new)
            self.teachers[name] = new

    def _find_teachers(self, model: nn.Module) -> Dict[str, nn.Module]:
        averaged = _outermost_averaged_models(model)
        if self.teacher_names is None:
            if averaged:
                return averaged
            raise ValueError(
                'SpatialTemporalSmoothingHook found no momentum teacher (a '
                f'BaseAveragedModel submodule) in {type(model).__name__}, '
                'whose submodules are '
                f'{[n for n, _ in model.named_children()]}. For a supervised '
                "model, use dict(type='EMAHook', "
                "ema_type='SpatialTemporalSmoothing', ...) instead of this "
                'hook; for a teacher under another name, set `teachers`.')
        found = {}
        for name in self.teacher_names:
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise ValueError(
                    f'`teachers` names {name!r}, which is not a submodule of '
                    f'{type(model).__name__}. Averaged models found: '
                    f'{sorted(averaged)}; submodules: '
                    f'{[n for n, _ in model.named_children()]}') from None
            if not isinstance(module, BaseAveragedModel):
                raise ValueError(
                    f'`teachers` names {name!r}, a {type(module).__name__}, '
                    'not an averaged model (BaseAveragedModel): STS takes '
                    'over the averaged models that a model updates itself. '
                    f'Averaged models found: {sorted(averaged)}')
            found[name] = module
        return found


def _outermost_averaged_models(
        model: nn.Module) -> Dict[str, BaseAveragedModel]:
    """Every BaseAveragedModel in ``model`` that is not inside another."""
    found: Dict[str, BaseAveragedModel] = {}
    for name, module in model.named_modules():
        if isinstance(module, BaseAveragedModel) and not any(
                name.startswith(f'{outer}.') for outer in found):
            found[name] = module
    return found
