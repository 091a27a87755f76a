"""The STS teacher as an MMEngine averaged model."""
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn
from mmengine.logging import MessageHub
from mmengine.model import BaseAveragedModel, ExponentialMovingAverage
from mmpretrain.models.utils import CosineEMA
from mmpretrain.registry import MODELS
from torch import Tensor

from mmsts.smoothing import (CosineMomentum, MomentumSchedule,
                             SpatialTemporalSmoother, build_momentum_schedule,
                             check_unit_interval, relative_distance,
                             stream_id)


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
    MMEngine averaged model. The state dict has the keys of the model it
    replaces (``module.*``, ``steps``), so checkpoints load without mmsts.

    The update is a few fused ``torch._foreach_*`` kernels over the selected
    tensors and never synchronises host and device.

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
        seed (int): Seed of the counter-based masks. Defaults to 0.
        name (str): Name of this teacher; with ``seed`` and the step it keys
            the masks, so that two teachers of a run draw different masks.
            Defaults to ``'teacher'``.
        total_steps (int, optional): Length of training in updates, for the
            cosine schedule. If None, the ``max_iters`` of the current
            :class:`MessageHub` is used, as ``CosineEMA`` does.
        nonfinite (str): ``'skip'``, ``'raise'`` or ``'none'``: what to do
            when the source holds NaN/Inf, see
            :class:`mmsts.smoothing.SpatialTemporalSmoother`. Defaults to
            ``'skip'``.
        interval (int): Interval between two updates. Defaults to 1.
        device (torch.device, optional): If provided, the averaged model is
            stored on this device. Defaults to None.
        update_buffers (bool): If True, buffers are smoothed too; otherwise
            they are copied from the source model at every update (as
            mmpretrain's teachers do). Defaults to False.
    """

    def __init__(self,
                 model: nn.Module,
                 preserve_prob: float = 0.5,
                 momentum: float = 0.01,
                 momentum_schedule: str = 'constant',
                 end_momentum: float = 0.0,
                 granularity: str = 'tensor',
                 seed: int = 0,
                 name: str = 'teacher',
                 total_steps: Optional[int] = None,
                 nonfinite: str = 'skip',
                 interval: int = 1,
                 device: Optional[torch.device] = None,
                 update_buffers: bool = False) -> None:
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(
                f'`interval` must be a positive int, but got {interval!r}')
        # Checked even where the schedule does not use it.
        check_unit_interval('end_momentum', end_momentum)
        super().__init__(model, interval, device, update_buffers)
        kwargs = {'end_momentum': end_momentum} \
            if momentum_schedule == 'cosine' else {}
        schedule = build_momentum_schedule(momentum_schedule, momentum,
                                           **kwargs)
        self.smoother = SpatialTemporalSmoother(
            preserve_prob=preserve_prob,
            momentum=schedule,
            granularity=granularity,
            seed=seed,
            stream=stream_id(name),
            nonfinite=nonfinite)
        self.name = name
        self.total_steps = total_steps
        self._bind_tensors()

    @classmethod
    def from_averaged_model(cls, averaged: BaseAveragedModel,
                            **kwargs) -> 'SpatialTemporalSmoothing':
        """Put STS in charge of an existing averaged model, sharing its
        tensors (nothing is copied; the state dict is unchanged).

        Args:
            averaged (BaseAveragedModel): e.g. BYOL's ``target_net``.
            **kwargs: Arguments of :class:`SpatialTemporalSmoothing`, except
                ``model``, ``interval``, ``device`` and ``update_buffers``,
                which are taken from ``averaged``.
        """
        new = cls(
            nn.Module(),
            interval=averaged.interval,
            update_buffers=averaged.update_buffers,
            **kwargs)
        new.module = averaged.module
        new.steps = averaged.steps
        new.training = averaged.training
        new._bind_tensors()
        return new

    def _bind_tensors(self) -> None:
        """Cache the tensors the update reads and writes."""
        if self.update_buffers:
            self.avg_parameters = self.module.state_dict()
        else:
            self.avg_parameters = dict(self.module.named_parameters())
        self._keys = [
            k for k, v in self.avg_parameters.items()
            if v.dtype.is_floating_point
        ]
        self._avg = [self.avg_parameters[k] for k in self._keys]
        self._buffers_avg = [] if self.update_buffers else list(
            self.module.buffers())
        self._host_steps: Optional[int] = None
        self._checked = False
        self._last_source: List[Tensor] = []

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._host_steps = None  # re-read ``steps`` once after loading

    def _source_tensors(self, model: nn.Module) -> List[Tensor]:
        if self.update_buffers:
            state = model.state_dict()
            return [state[k] for k in self._keys]
        return list(model.parameters())

    def _check_source(self, model: nn.Module, source: List[Tensor]) -> None:
        """Fail early, naming the tensor, if the source does not match."""
        if self.update_buffers:
            names = [k for k in model.state_dict() if k in set(self._keys)]
        else:
            names = [n for n, _ in model.named_parameters()]
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
        if not self.update_buffers and n_buffers != len(self._buffers_avg):
            raise ValueError(
                f'{type(self).__name__} `{self.name}`: the student has '
                f'{n_buffers} buffers but the teacher has '
                f'{len(self._buffers_avg)}')
        self._checked = True

    @property
    def momentum(self) -> float:
        """The momentum at the first step of the schedule."""
        return self.smoother.schedule.momentum

    def _total_steps(self) -> Optional[int]:
        if self.total_steps is not None:
            return self.total_steps
        return MessageHub.get_current_instance().get_info('max_iters')

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """Update the averaged model toward ``model`` with the STS rule.

        Args:
            model (nn.Module): The source (student) model.
        """
        source = self._source_tensors(model)
        if not self._checked:
            self._check_source(model, source)
        if self._host_steps is None:
            self._host_steps = int(self.steps)  # one sync after (re)loading
        steps = self._host_steps
        if steps == 0:
            torch._foreach_copy_(self._avg, [s.to(t) for s, t in zip(
                source, self._avg)])
            if self.update_buffers:
                # Like MMEngine, the first update also copies the entries
                # that are never averaged (e.g. BN `num_batches_tracked`).
                state = model.state_dict()
                for key, value in self.avg_parameters.items():
                    if not value.dtype.is_floating_point:
                        value.copy_(state[key])
        elif steps % self.interval == 0:
            self.smoother.step(self._avg, source, steps, self._total_steps())
        if not self.update_buffers and self._buffers_avg:
            # Guarded like the parameters: NaN BN statistics stay out.
            self.smoother.copy_(self._buffers_avg, list(model.buffers()),
                                steps)
        self.steps.add_(1)
        self._host_steps = steps + 1
        self._last_source = source

    def avg_func(self, averaged_param: Tensor, source_param: Tensor,
                 steps: int) -> None:
        """Not used: :meth:`update_parameters` updates all tensors at once."""
        raise NotImplementedError(
            f'{type(self).__name__} updates all tensors in one fused pass; '
            'call update_parameters()')

    def pop_statistics(self) -> Dict[str, float]:
        """Statistics since the last call (one host sync): ``momentum``,
        ``update_fraction``, ``nonfinite_steps`` and ``distance``, the
        relative teacher-student distance ``||T - S|| / ||S||``."""
        stats = self.smoother.pop_statistics()
        if self._last_source:
            stats['distance'] = float(
                relative_distance(self._avg, self._last_source))
        return stats


def momentum_schedule_of(
        averaged: BaseAveragedModel) -> Union[MomentumSchedule, None]:
    """The momentum schedule an mmpretrain/MMEngine teacher applies.

    ``CosineEMA`` -> cosine from ``momentum`` to ``end_momentum``;
    ``ExponentialMovingAverage`` -> constant; ``SpatialTemporalSmoothing`` ->
    its own. Returns None for teachers whose schedule STS cannot reproduce
    (e.g. ``MomentumAnnealingEMA``, ``StochasticWeightAverage``).
    """
    if isinstance(averaged, SpatialTemporalSmoothing):
        return averaged.smoother.schedule
    if isinstance(averaged, CosineEMA):
        return CosineMomentum(averaged.momentum, averaged.end_momentum)
    if type(averaged) is ExponentialMovingAverage:
        return build_momentum_schedule('constant', averaged.momentum)
    return None
