"""Validation of both models of a teacher-student pair."""
from typing import Dict, List, Sequence, Union

from mmengine.evaluator import Evaluator
from mmengine.model import is_model_wrapper
from mmengine.runner import ValLoop
from mmengine.runner.loops import _parse_losses
from mmpretrain.registry import LOOPS
from torch.utils.data import DataLoader


@LOOPS.register_module()
class TeacherStudentValLoop(ValLoop):
    """Validate the teacher and the student, one after the other.

    The loop runs the validation set once per model, switching the model's
    ``semi_test_cfg['predict_on']`` (the switch of
    :class:`~mmsts.models.FixMatch` and of mmdet's semi-supervised
    detectors), and reports every metric prefixed by the model's name, e.g.
    ``teacher/accuracy/top1`` and ``student/accuracy/top1``; use one of these
    as ``save_best`` of the ``CheckpointHook``.

    Args:
        runner (Runner): The runner.
        dataloader (DataLoader | dict): The validation data loader.
        evaluator (Evaluator | dict | list): The evaluator.
        fp16 (bool): Whether to validate in fp16. Defaults to False.
        predict_on (Sequence[str]): The models to validate, in order.
            Defaults to ``('teacher', 'student')``.
    """

    def __init__(
        self,
        runner,
        dataloader: Union[DataLoader, Dict],
        evaluator: Union[Evaluator, Dict, List],
        fp16: bool = False,
        predict_on: Sequence[str] = ('teacher', 'student')
    ) -> None:
        if isinstance(predict_on, str) or not predict_on or not all(
                isinstance(name, str) for name in predict_on):
            raise TypeError('`predict_on` must be a non-empty list of model '
                            f'names, but got {predict_on!r}')
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        if not isinstance(getattr(model, 'semi_test_cfg', None), dict):
            raise TypeError(
                f'TeacherStudentValLoop needs a model with a `semi_test_cfg` '
                f'dict (e.g. FixMatch), but {type(model).__name__} has none')
        super().__init__(runner, dataloader, evaluator, fp16)
        self.predict_on = list(predict_on)

    def run(self) -> dict:
        """Validate every model of ``predict_on``; return all metrics."""
        self.runner.call_hook('before_val')
        self.runner.call_hook('before_val_epoch')
        self.runner.model.eval()
        model = self.runner.model.module if is_model_wrapper(
            self.runner.model) else self.runner.model
        cfg = model.semi_test_cfg
        default = cfg.get('predict_on')
        metrics = {}
        try:
            for name in self.predict_on:
                cfg['predict_on'] = name
                metrics.update({
                    f'{name}/{key}': value
                    for key, value in self._evaluate().items()
                })
        finally:
            cfg['predict_on'] = default
        self.runner.call_hook('after_val_epoch', metrics=metrics)
        self.runner.call_hook('after_val')
        return metrics

    def _evaluate(self) -> dict:
        """One pass over the validation set with the current model."""
        self.val_loss.clear()
        for idx, data_batch in enumerate(self.dataloader):
            self.run_iter(idx, data_batch)
        metrics = self.evaluator.evaluate(len(self.dataloader.dataset))
        if self.val_loss:
            metrics.update(_parse_losses(self.val_loss, 'val'))
        return metrics
