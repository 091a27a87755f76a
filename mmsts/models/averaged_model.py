"""The STS teacher as an MMEngine averaged model.

The teacher owns its whole lifecycle, whichever way it was built (by a model
such as :class:`~mmsts.models.FixMatch`, by MMEngine's ``EMAHook`` with
``ema_type='SpatialTemporalSmoothing'``, or taken over from a model's own
EMA by :class:`~mmsts.engine.SpatialTemporalSmoothingHook`): it keys its masks
by the run's seed, enforces and reports its NaN/Inf policy, writes its
statistics to the :class:`~mmengine.logging.MessageHub` and records its
settings there, which MMEngine saves in every checkpoint and restores on
resume.
"""
import logging
import weakref
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.dist import broadcast_object_list, get_world_size
from mmengine.logging import MessageHub, print_log
from mmengine.model import BaseAveragedModel, ExponentialMovingAverage
from mmpretrain.models.utils import CosineEMA
from mmpretrain.registry import MODELS
from torch import Tensor

from mmsts.smoothing import (SpatialTemporalSmoother, build_momentum_schedule,
                             check_unit_interval, relative_distance,
                             stream_id)

#: The smoothing settings of a teacher and their defaults. They are what a
#: resumed run compares with the checkpoint's record.
DEFAULT_SETTINGS = dict(
    preserve_prob=0.5,
    momentum=0.01,
    momentum_schedule='constant',
    end_momentum=0.0,
    granularity='tensor',
    seed=None,
    nonfinite='skip',
    buffers='copy')
#: What an update does to the teacher's buffers (e.g. BN statistics).
BUFFER_POLICIES = ('copy', 'keep', 'smooth')
#: Where a teacher's record lives in the message hub (and so in checkpoints,
#: under ``checkpoint['message_hub']['runtime_info']``).
RECORD_KEY = 'sts/{name}'


#: Where a model's parameters or buffers live: ``(module, names)`` pairs,
#: the modules held by weak references.
_Slots = List[Tuple[weakref.ref, List[str]]]


def _tensor_slots(model: nn.Module, kind: str) -> _Slots:
    """Where ``model.parameters()`` (``kind='_parameters'``) or
    ``model.buffers()`` (``'_buffers'``) live, in their order, each tensor
    once (a tensor shared by two modules is read from the first)."""
    seen = set()
    slots = []
    for module in model.modules():
        names = []
        for name, tensor in getattr(module, kind).items():
            if tensor is not None and id(tensor) not in seen:
                seen.add(id(tensor))
                names.append(name)
        if names:
            slots.append((weakref.ref(module), names))
    return slots


def _read_slots(slots: _Slots, kind: str) -> Optional[List[Tensor]]:
    """The tensors in ``slots``, read afresh from their modules (so tensors
    replaced in place, e.g. by ``load_state_dict(assign=True)``, are
    seen): one dictionary per module, no walk of the model. None if one of
    the modules was freed (replaced in the model)."""
    tensors = []
    for ref, names in slots:
        module = ref()
        if module is None:
            return None
        table = getattr(module, kind)
        tensors += [table[name] for name in names]
    return tensors


def build_smoother(name: str, settings: dict) -> SpatialTemporalSmoother:
    """Validate ``settings`` (keys of :data:`DEFAULT_SETTINGS`) and build the
    smoother of the teacher called ``name``.

    Raises:
        ValueError, TypeError: naming the key and the value, for an unknown
            key or a value out of range.
    """
    unknown = sorted(set(settings) - set(DEFAULT_SETTINGS))
    if unknown:
        raise ValueError(f'Unknown STS settings {unknown}; expected some of '
                         f'{sorted(DEFAULT_SETTINGS)}')
    settings = {**DEFAULT_SETTINGS, **settings}
    check_unit_interval('end_momentum', settings['end_momentum'])
    if settings['buffers'] not in BUFFER_POLICIES:
        raise ValueError(f'`buffers` must be one of {BUFFER_POLICIES}, but '
                         f'got {settings["buffers"]!r}')
    seed = settings['seed']
    if seed is not None and (isinstance(seed, bool)
                             or not isinstance(seed, int) or seed < 0):
        raise TypeError('`seed` must be a non-negative int or None (the '
                        f'run\'s seed), but got {seed!r}')
    kwargs = {'end_momentum': settings['end_momentum']} \
        if settings['momentum_schedule'] == 'cosine' else {}
    schedule = build_momentum_schedule(settings['momentum_schedule'],
                                       settings['momentum'], **kwargs)
    return SpatialTemporalSmoother(
        preserve_prob=settings['preserve_prob'],
        momentum=schedule,
        granularity=settings['granularity'],
        seed=seed or 0,
        stream=stream_id(name),
        nonfinite=settings['nonfinite'])


def _positive_int(key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'`{key}` must be a positive int, but got {value!r}')
    return value


def host_settings(averaged: BaseAveragedModel) -> Optional[dict]:
    """The momentum settings of an MMEngine/mmpretrain averaged model.

    ``CosineEMA`` -> cosine from ``momentum`` to ``end_momentum``;
    ``ExponentialMovingAverage`` -> constant; ``SpatialTemporalSmoothing``
    -> all its settings. None for teachers whose schedule STS cannot
    reproduce (e.g. ``MomentumAnnealingEMA``, ``StochasticWeightAverage``).
    """
    if isinstance(averaged, SpatialTemporalSmoothing):
        return dict(averaged.settings)
    buffers = 'smooth' if averaged.update_buffers else 'copy'
    if isinstance(averaged, CosineEMA):
        return dict(
            momentum=averaged.momentum,
            momentum_schedule='cosine',
            end_momentum=averaged.end_momentum,
            buffers=buffers)
    if type(averaged) is ExponentialMovingAverage:
        return dict(
            momentum=averaged.momentum,
            momentum_schedule='constant',
            buffers=buffers)
    return None


@MODELS.register_module()
class SpatialTemporalSmoothing(BaseAveragedModel):
    r"""Spatial-Temporal Smoothing (STS) of a model's weights.

    A drop-in replacement for :class:`ExponentialMovingAverage` and
    mmpretrain's ``CosineEMA``: at every update, each fragment of the
    averaged model is preserved with probability ``preserve_prob`` and
    otherwise moved toward the source model,

    .. math::

        X'_{t+1} = X'_t \text{ with prob. } p, \quad
        X'_{t+1} = (1 - momentum) X'_t + momentum X_t \text{ otherwise.}

    ``momentum`` is the weight given to the *source* (student) model, as in
    MMEngine: the paper's teacher weight m = 0.99 is ``momentum=0.01``.
    ``preserve_prob=0`` is plain EMA (TMA); ``momentum=1`` is Spatial
    Ensemble alone (SE). The first update copies the source, like every
    MMEngine averaged model (under the NaN/Inf policy). The state dict has
    the keys of the model it replaces (``module.*``, ``steps``), so
    checkpoints load without mmsts.

    The update is a few fused ``torch._foreach_*`` kernels over the selected
    tensors and never synchronises host and device. It runs outside
    ``torch.compile`` graphs (mask draws and step bookkeeping are host
    work), so models that update it inside a compiled ``train_step`` work.

    The teacher's lifecycle is the same however it was built:

    * **Seed.** Masks are a pure function of (seed, ``name``, update count):
      identical on every rank, redrawn exactly after a resume. With
      ``seed=None`` the seed is the one torch was seeded with (MMEngine's
      ``randomness.seed``), rank 0's on every rank; a resumed run keeps the
      seed recorded in its checkpoint.
    * **NaN/Inf.** ``nonfinite='skip'`` skips an update whose source holds
      NaN/Inf (the first copy included) and counts it; ``'raise'`` raises
      :class:`~mmsts.smoothing.NonFiniteStudentError` at once on CPU and, on
      an accelerator (where checking would synchronise), when the
      statistics are next read.
    * **Statistics.** Every ``log_interval`` updates, at the last update of
      training and before the model is put in eval mode (points where the
      host waits for the device anyway), the statistics are read and
      written to the message hub as ``train/sts/{name}/{momentum,
      update_fraction, distance, nonfinite_steps}``; skipped steps are also
      reported as a warning.
    * **Record.** The settings are logged at the first update and recorded
      in the message hub under ``sts/{name}`` (MMEngine saves it in the
      checkpoint and restores it on resume). A resumed run whose settings
      differ from the record warns, naming the old and new values, and
      appends them to the record's ``history``.

    Args:
        model (nn.Module): The model to be averaged.
        preserve_prob (float): Probability that a fragment is preserved at an
            update, in [0, 1]. Defaults to 0.5.
        momentum (float): Weight given to the source model when a fragment is
            updated (at the first step of a schedule), in [0, 1]. Defaults to
            0.01, i.e. teacher weight 0.99.
        momentum_schedule (str): ``'constant'`` or ``'cosine'`` (annealed to
            ``end_momentum`` over ``total_steps``, as ``CosineEMA``).
            Defaults to ``'constant'``.
        end_momentum (float): Final momentum of the cosine schedule.
            Defaults to 0.
        granularity (str): Fragment: ``'tensor'`` (paper), ``'channel'`` or
            ``'element'`` (mmsts extensions). Defaults to ``'tensor'``.
        seed (int, optional): Seed of the counter-based masks. None uses the
            run's seed, see above. Defaults to None.
        name (str): Name of this teacher; with the seed and the step it keys
            the masks, so that two teachers of a run draw different masks,
            and it names the teacher's statistics and record. Defaults to
            ``'teacher'``.
        total_steps (int, optional): Length of training in updates, for the
            cosine schedule. If None, the ``max_iters`` of the current
            :class:`MessageHub` is used, as ``CosineEMA`` does.
        nonfinite (str): ``'skip'``, ``'raise'`` or ``'none'`` (no check):
            what to do when the source holds NaN/Inf. Defaults to
            ``'skip'``.
        log_interval (int): Updates between two reads of the statistics
            (each one host synchronisation on an accelerator). Defaults to
            50.
        interval (int): Interval between two updates. Defaults to 1.
        device (torch.device, optional): If provided, the averaged model is
            stored on this device. Defaults to None.
        buffers (str, optional): What an update does to the buffers (BN
            running statistics): ``'copy'`` them from the source (as
            mmpretrain's teachers do; they are checked for NaN/Inf with the
            parameters, and a step whose source holds any is skipped as a
            whole), ``'keep'`` the teacher's own (updated
            only by the teacher's own forward passes in train mode, as in the
            official STS code) or ``'smooth'`` them with the parameters'
            rule. None follows ``update_buffers``. Defaults to None.
        update_buffers (bool): MMEngine's switch: True is
            ``buffers='smooth'``, False ``'copy'``. Defaults to False.
    """

    def __init__(self,
                 model: nn.Module,
                 preserve_prob: float = 0.5,
                 momentum: float = 0.01,
                 momentum_schedule: str = 'constant',
                 end_momentum: float = 0.0,
                 granularity: str = 'tensor',
                 seed: Optional[int] = None,
                 name: str = 'teacher',
                 total_steps: Optional[int] = None,
                 nonfinite: str = 'skip',
                 log_interval: int = 50,
                 buffers: Optional[str] = None,
                 interval: int = 1,
                 device: Optional[torch.device] = None,
                 update_buffers: bool = False) -> None:
        _positive_int('interval', interval)
        if buffers is None:
            buffers = 'smooth' if update_buffers else 'copy'
        elif update_buffers and buffers != 'smooth':
            raise ValueError('`update_buffers=True` smooths the buffers, '
                             f'which contradicts buffers={buffers!r}')
        super().__init__(model, interval, device, buffers == 'smooth')
        self._setup(
            name,
            dict(
                preserve_prob=preserve_prob,
                momentum=momentum,
                momentum_schedule=momentum_schedule,
                end_momentum=end_momentum,
                granularity=granularity,
                seed=seed,
                nonfinite=nonfinite,
                buffers=buffers),
            total_steps=total_steps,
            log_interval=log_interval)

    def _setup(self, name: str, settings: dict,
               total_steps: Optional[int], log_interval: int) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f'`name` must be a non-empty str, got {name!r}')
        if total_steps is not None:
            _positive_int('total_steps', total_steps)
        self.smoother = build_smoother(name, settings)
        momentum = self.smoother.schedule.momentum
        if 0.5 < momentum < 1:
            print_log(
                f'STS teacher `{name}`: momentum={momentum} is the weight of '
                'the *student* (MMEngine convention), so the teacher follows '
                'the student almost at once. A teacher weight (decay) of '
                f'{momentum} is momentum={1 - momentum:.6g}.',
                logger='current',
                level=logging.WARNING)
        # The validated values, as plain Python numbers.
        self.settings = {
            **DEFAULT_SETTINGS,
            **settings, 'preserve_prob': self.smoother.preserve_prob,
            'momentum': self.smoother.schedule.momentum,
            'end_momentum': float(settings.get('end_momentum', 0.0))
        }
        self.name = name
        self.total_steps = total_steps
        self.log_interval = _positive_int('log_interval', log_interval)
        self.update_buffers = self.settings['buffers'] == 'smooth'
        self._bind_tensors()

    @classmethod
    def take_over(cls,
                  averaged: BaseAveragedModel,
                  name: Optional[str] = None,
                  **overrides) -> 'SpatialTemporalSmoothing':
        """Put STS in charge of an existing averaged model.

        An STS teacher is reconfigured in place: it keeps its own settings
        except the ``overrides`` (None values are ignored). Another averaged
        model (``ExponentialMovingAverage``, mmpretrain's ``CosineEMA``) is
        wrapped by a new STS teacher that shares its tensors and update
        count (nothing is copied; the state dict keys are unchanged) and
        keeps its momentum schedule unless overridden.

        Args:
            averaged (BaseAveragedModel): e.g. BYOL's ``target_net``.
            name (str, optional): The name of a new teacher (it keys the
                masks). An STS teacher keeps its own. Defaults to
                ``'teacher'``.
            **overrides: Settings (:data:`DEFAULT_SETTINGS` keys) and
                ``log_interval``, ``total_steps``.

        Returns:
            SpatialTemporalSmoothing: ``averaged`` itself if it was an STS
            teacher, else the new teacher to put in its place.
        """
        overrides = {k: v for k, v in overrides.items() if v is not None}
        extra = {
            k: overrides.pop(k)
            for k in ('log_interval', 'total_steps') if k in overrides
        }
        if isinstance(averaged, cls):
            averaged._setup(
                averaged.name, {
                    **averaged.settings,
                    **overrides
                },
                total_steps=extra.get('total_steps', averaged.total_steps),
                log_interval=extra.get('log_interval',
                                       averaged.log_interval))
            return averaged
        settings = host_settings(averaged)
        if settings is None and 'momentum' not in overrides:
            raise ValueError(
                f'Cannot take over the momentum of teacher `{name}` of type '
                f'{type(averaged).__name__}; set `momentum` (and '
                '`momentum_schedule`).')
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.module = averaged.module
        new.register_buffer('steps', averaged.steps)  # shared, not copied
        new.interval = averaged.interval
        new.update_buffers = averaged.update_buffers
        new.train(averaged.training)
        new._setup(
            name or 'teacher', {
                **(settings or {}),
                **overrides
            },
            total_steps=extra.get('total_steps'),
            log_interval=extra.get('log_interval', 50))
        return new

    def _bind_tensors(self) -> None:
        """Cache the tensors the update reads and writes, and forget the
        source model."""
        self._bind_teacher()
        self._host_steps: Optional[int] = None
        # The source model last checked, and where its parameters and
        # buffers live (weak references: a deep copy or pickle of the
        # teacher must not take the student).
        self._source_ref: Optional[weakref.ref] = None
        self._source_slots: Dict[str, _Slots] = {}
        self._last_source: List[Tensor] = []
        self._unread = 0  # updates since the statistics were last read
        if not getattr(self, '_rebinds_after_load', False):
            self.register_load_state_dict_post_hook(_rebind_after_load)
            self._rebinds_after_load = True

    def _bind_teacher(self) -> None:
        """Cache the teacher's tensors that the update reads and writes;
        again whenever they are replaced (see :meth:`_apply`)."""
        if self.update_buffers:
            self.avg_parameters = self.module.state_dict()
        else:
            self.avg_parameters = dict(self.module.named_parameters())
        self._keys = [
            k for k, v in self.avg_parameters.items()
            if v.dtype.is_floating_point
        ]
        self._avg = [self.avg_parameters[k] for k in self._keys]
        self._buffers_avg = list(self.module.buffers()) \
            if self.settings['buffers'] == 'copy' else []

    def _apply(self, fn, *args, **kwargs) -> 'SpatialTemporalSmoothing':
        """Move or convert the teacher (``to()``, ``cuda()``, ``half()``...)
        and cache its new tensors: MMEngine's runner moves a model built on
        the host, with a teacher built inside it (FixMatch, distillation),
        to its device, which replaces the teacher's buffers (and, for
        ``buffers='smooth'``, the state-dict tensors the update writes)."""
        super()._apply(fn, *args, **kwargs)
        if hasattr(self, '_avg'):  # bound once set up
            self._bind_teacher()
        return self

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._host_steps = None  # re-read ``steps`` (and the record) next

    def _source_tensors(self, model: nn.Module, kind: str) -> List[Tensor]:
        """The source's parameters (``kind='_parameters'``) or buffers
        (``'_buffers'``), read afresh from where they were found when the
        source model was first seen (walking a ResNet-50's modules at every
        update would cost a tenth of the update); a new source model, or
        one with a module replaced since (and freed: a replaced module that
        something else keeps alive goes unnoticed), is walked and checked
        against the teacher first. With ``update_buffers``, the parameters
        are the state dict's floating point entries in the teacher's
        order."""
        if self._source_ref is None or self._source_ref() is not model:
            self._walk_source(model)
        if kind == '_parameters' and self.update_buffers:
            state = model.state_dict()
            return [state[k] for k in self._keys]
        tensors = _read_slots(self._source_slots[kind], kind)
        if tensors is None:  # a module of the source was replaced
            self._walk_source(model)
            tensors = _read_slots(self._source_slots[kind], kind)
        return tensors

    def _walk_source(self, model: nn.Module) -> None:
        """Check a source model against the teacher and find where its
        tensors live."""
        self._check_source(model)
        self._source_ref = weakref.ref(model)
        self._source_slots = {
            k: _tensor_slots(model, k)
            for k in ('_parameters', '_buffers')
        }

    def _check_source(self, model: nn.Module) -> None:
        """Fail early, naming the tensor, if the source does not match."""
        if self.update_buffers:
            state = model.state_dict()
            names = [k for k in state if k in set(self._keys)]
            source = [state[k] for k in names]
        else:
            named = list(model.named_parameters())
            names = [name for name, _ in named]
            source = [tensor for _, tensor in named]
        if len(source) != len(self._avg):
            raise ValueError(
                f'{type(self).__name__} `{self.name}`: the student has '
                f'{len(source)} tensors to average but the teacher has '
                f'{len(self._avg)}')
        for key, name, t, s in zip(self._keys, names, self._avg, source):
            if t.shape != s.shape:
                raise ValueError(
                    f'{type(self).__name__} `{self.name}`: shape mismatch '
                    f'between teacher `{key}` {tuple(t.shape)} and student '
                    f'`{name}` {tuple(s.shape)}')
        n_buffers = len(list(model.buffers()))
        if self._buffers_avg and n_buffers != len(self._buffers_avg):
            raise ValueError(
                f'{type(self).__name__} `{self.name}`: the student has '
                f'{n_buffers} buffers but the teacher has '
                f'{len(self._buffers_avg)}')

    @property
    def momentum(self) -> float:
        """The momentum at the first step of the schedule."""
        return self.smoother.schedule.momentum

    def _total_steps(self) -> Optional[int]:
        if self.total_steps is not None:
            return self.total_steps
        return MessageHub.get_current_instance().get_info('max_iters')

    # ------------------------------------------------------------------
    # Lifecycle
    # ------------------------------------------------------------------
    def _start(self, steps: int) -> None:
        """Resolve the seed and record the settings, at the first update
        after construction or loading a state dict (``steps`` updates
        done)."""
        hub = MessageHub.get_current_instance()
        key = RECORD_KEY.format(name=self.name)
        record = hub.get_info(key) if steps > 0 else None
        seed = self.settings['seed']
        if seed is None:
            seed = record['settings']['seed'] if record else _run_seed()
        self.smoother.seed = seed
        current = {**self.settings, 'seed': self.smoother.seed}
        history = list(record['history']) if record else []
        if record and record['settings'] != current:
            changes = ', '.join(
                f'{k}: {record["settings"].get(k)!r} -> {v!r}'
                for k, v in current.items()
                if record['settings'].get(k) != v)
            print_log(
                f'STS teacher `{self.name}` resumes at update {steps} with '
                f'settings that differ from its checkpoint ({changes}); '
                'the earlier ones stay in the record\'s history.',
                logger='current',
                level=logging.WARNING)
        if not history or {k: v
                           for k, v in history[-1].items()
                           if k != 'step'} != current:
            history.append(dict(step=steps, **current))
        hub.update_info(
            key, dict(settings=current, history=history), resumed=True)
        print_log(
            f'STS teacher `{self.name}` from update {steps}: '
            f'{self.smoother!r}',
            logger='current')

    @torch.compiler.disable
    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """Update the averaged model toward ``model`` with the STS rule.

        Args:
            model (nn.Module): The source (student) model.
        """
        source = self._source_tensors(model, '_parameters')
        if self._host_steps is None:
            self._host_steps = int(self.steps)  # one sync after (re)loading
            self._start(self._host_steps)
        steps = self._host_steps
        # buffers='copy': the BN statistics are copied at every update,
        # checked with the parameters (NaN statistics stay out too).
        buffers = (self._buffers_avg, self._source_tensors(
            model, '_buffers')) if self._buffers_avg else ([], [])
        if steps == 0:
            # The first update copies the source, guarded like the others.
            self.smoother.copy_(self._avg + buffers[0], source + buffers[1],
                                steps)
            if self.update_buffers:
                # Like MMEngine, the first update also copies the entries
                # that are never averaged (e.g. BN `num_batches_tracked`).
                state = model.state_dict()
                for key, value in self.avg_parameters.items():
                    if not value.dtype.is_floating_point:
                        value.copy_(state[key])
        elif steps % self.interval == 0:
            self.smoother.step(
                self._avg,
                source,
                steps,
                self._total_steps(),
                copies=buffers)
        else:
            self.smoother.copy_(*buffers, steps)
        self.steps.add_(1)
        self._host_steps = steps + 1
        self._last_source = source
        self._unread += 1
        if self._host_steps % self.log_interval == 0 or \
                self._host_steps == self._total_steps():
            self.log_statistics()

    def avg_func(self, averaged_param: Tensor, source_param: Tensor,
                 steps: int) -> None:
        """Not used: :meth:`update_parameters` updates all tensors at once."""
        raise NotImplementedError(
            f'{type(self).__name__} updates all tensors in one fused pass; '
            'call update_parameters()')

    # ------------------------------------------------------------------
    # Statistics
    # ------------------------------------------------------------------
    def pop_statistics(self) -> Dict[str, float]:
        """Statistics since the last call (one host sync): ``momentum``,
        ``update_fraction``, ``nonfinite_steps`` and ``distance``, the
        relative teacher-student distance ``||T - S|| / ||S||``.

        Raises:
            NonFiniteStudentError: under ``nonfinite='raise'``, if an update
                was skipped on an accelerator since the last call.
        """
        self._unread = 0
        stats = self.smoother.pop_statistics()
        if self._last_source:
            stats['distance'] = float(
                relative_distance(self._avg, self._last_source))
        return stats

    def log_statistics(self) -> Dict[str, float]:
        """Read the statistics (:meth:`pop_statistics`), write them to the
        message hub as ``train/sts/{name}/{stat}`` and warn about skipped
        updates. Called by the teacher itself; see the class docstring."""
        stats = self.pop_statistics()
        hub = MessageHub.get_current_instance()
        for stat, value in stats.items():
            hub.update_scalar(f'train/sts/{self.name}/{stat}', value)
        if stats.get('nonfinite_steps'):
            print_log(
                f'STS teacher `{self.name}`: the student held NaN/Inf at '
                f'{stats["nonfinite_steps"]} update(s) since the last report; '
                'those updates were skipped.',
                logger='current',
                level=logging.WARNING)
        return stats

    def train(self, mode: bool = True) -> 'SpatialTemporalSmoothing':
        """Set the mode; leaving training reads the pending statistics
        (validation waits for the device anyway)."""
        if not mode and getattr(self, '_unread', 0):
            self.log_statistics()
        return super().train(mode)


def sts_records(checkpoint: dict) -> Dict[str, dict]:
    """The records of the STS teachers in an MMEngine checkpoint.

    Args:
        checkpoint (dict): A checkpoint saved by MMEngine's runner.

    Returns:
        dict: teacher name -> ``{'settings': {...}, 'history': [...]}``,
        where each history entry is the settings used from update
        ``step`` on. Empty for checkpoints without STS teachers.
    """
    info = (checkpoint.get('message_hub') or {}).get('runtime_info') or {}
    prefix = RECORD_KEY.format(name='')
    return {
        key[len(prefix):]: value
        for key, value in info.items() if key.startswith(prefix)
    }


def _rebind_after_load(teacher: SpatialTemporalSmoothing,
                       incompatible_keys) -> None:
    """A state-dict post-hook: ``load_state_dict(assign=True)`` replaces the
    teacher's tensors, which the update must then write. Module-level, so
    that a teacher still pickles."""
    teacher._bind_teacher()


def _run_seed() -> int:
    """The seed torch was seeded with (MMEngine's ``randomness.seed``), rank
    0's on every rank: with ``randomness=dict(diff_rank_seed=True)`` MMEngine
    adds the rank to each process's seed, and masks must not differ across
    ranks."""
    seed = [torch.initial_seed()]
    if get_world_size() > 1:
        broadcast_object_list(seed)
    return int(seed[0])
