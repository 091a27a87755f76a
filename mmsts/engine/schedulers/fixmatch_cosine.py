"""FixMatch's cosine learning-rate decay."""
import math
from typing import Optional, Union

from mmengine.optim import BaseOptimWrapper
from mmengine.optim.scheduler.lr_scheduler import LRSchedulerMixin
from mmengine.optim.scheduler.param_scheduler import INF, _ParamScheduler
from mmpretrain.registry import PARAM_SCHEDULERS
from torch.optim import Optimizer


@PARAM_SCHEDULERS.register_module()
class FixMatchCosineParamScheduler(_ParamScheduler):
    r"""Decay a parameter as ``cos(pi * num_cycles * t / T_max)``.

    FixMatch (Sohn et al., 2020) decays the learning rate as
    :math:`\eta_k = \eta_0 \cos(\frac{7 \pi k}{16 K})` over ``K`` steps,
    i.e. ``num_cycles=7/16``: it ends at ``cos(7 pi / 16) ~ 0.195`` of the
    initial value, which ``CosineAnnealingLR`` (a half cosine to
    ``eta_min``) cannot express. The value is held after ``T_max`` steps.
    It is computed in the chainable form, so it composes with other
    schedulers like MMEngine's.

    Args:
        optimizer (Optimizer | BaseOptimWrapper): The optimizer.
        param_name (str): The parameter to schedule, e.g. ``'lr'``.
        T_max (int, optional): Steps of the whole decay ``K``; None uses
            ``end - begin``. Defaults to None.
        num_cycles (float): The fraction of a half period covered over
            ``T_max`` steps, in (0, 0.5]. Defaults to ``7 / 16``.
        begin (int): Step at which to start. Defaults to 0.
        end (int): Step at which to stop. Defaults to INF.
        last_step (int): The index of the last step, for resuming without a
            state dict. Defaults to -1.
        by_epoch (bool): Whether steps are epochs. Defaults to True.
        verbose (bool): Whether to print each update. Defaults to False.
    """

    def __init__(self,
                 optimizer: Union[Optimizer, BaseOptimWrapper],
                 param_name: str,
                 T_max: Optional[int] = None,
                 num_cycles: float = 7 / 16,
                 begin: int = 0,
                 end: int = INF,
                 last_step: int = -1,
                 by_epoch: bool = True,
                 verbose: bool = False) -> None:
        if isinstance(num_cycles, bool) or not isinstance(
                num_cycles, (int, float)) or not 0 < num_cycles <= 0.5:
            raise ValueError(
                f'`num_cycles` must be in (0, 0.5], but got {num_cycles!r}')
        T_max = T_max if T_max is not None else end - begin
        if T_max == INF or not isinstance(T_max, int) or T_max < 1:
            raise ValueError('`T_max` must be a positive int (or `end` must '
                             f'be set), but got T_max={T_max!r}')
        self.T_max = T_max
        self.num_cycles = float(num_cycles)
        super().__init__(
            optimizer,
            param_name=param_name,
            begin=begin,
            end=end,
            last_step=last_step,
            by_epoch=by_epoch,
            verbose=verbose)

    @classmethod
    def build_iter_from_epoch(cls,
                              *args,
                              T_max: Optional[int] = None,
                              begin: int = 0,
                              end: int = INF,
                              by_epoch: bool = True,
                              epoch_length: Optional[int] = None,
                              **kwargs):
        """Build an iteration-based scheduler from epoch-based arguments."""
        if not by_epoch or not epoch_length:
            raise ValueError('Only an epoch-based scheduler with a positive '
                             f'`epoch_length` converts, got by_epoch='
                             f'{by_epoch!r}, epoch_length={epoch_length!r}')
        if T_max is not None:
            T_max = T_max * epoch_length
        begin = int(begin * epoch_length)
        if end != INF:
            end = int(end * epoch_length)
        return cls(
            *args, T_max=T_max, begin=begin, end=end, by_epoch=False, **kwargs)

    def _factor(self, step: int) -> float:
        return math.cos(math.pi * self.num_cycles * min(step, self.T_max) /
                        self.T_max)

    def _get_value(self) -> list:
        """Chainable form: scale the current values by the factor's ratio."""
        values = [
            group[self.param_name] for group in self.optimizer.param_groups
        ]
        if self.last_step == 0:
            return values
        previous = self._factor(self.last_step - 1)
        if previous == 0:  # reached the end of a half period: stay at 0
            return [0. for _ in values]
        ratio = self._factor(self.last_step) / previous
        return [value * ratio for value in values]


@PARAM_SCHEDULERS.register_module()
class FixMatchCosineLR(LRSchedulerMixin, FixMatchCosineParamScheduler):
    r"""FixMatch's learning-rate decay, ``lr_k = lr_0 cos(7 pi k / 16 K)``.

    See :class:`FixMatchCosineParamScheduler`.

    Args:
        optimizer (Optimizer | BaseOptimWrapper): The optimizer.
        T_max (int, optional): Steps of the whole decay; None uses
            ``end - begin``. Defaults to None.
        num_cycles (float): In (0, 0.5]. Defaults to ``7 / 16``.
        begin (int): Step at which to start. Defaults to 0.
        end (int): Step at which to stop. Defaults to INF.
        last_step (int): The index of the last step. Defaults to -1.
        by_epoch (bool): Whether steps are epochs. Defaults to True.
        verbose (bool): Whether to print each update. Defaults to False.
    """
