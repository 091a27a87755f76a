"""The base of the classifiers that train a student with a teacher."""
import copy
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn
from mmengine.model import BaseAveragedModel, BaseDataPreprocessor
from mmpretrain.models.classifiers import BaseClassifier, ImageClassifier
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from torch import Tensor

from .frozen_teacher import FrozenTeacher

PREDICT_ON = ('teacher', 'student')
TEACHER_MODES = ('train', 'eval')


class TeacherStudentClassifier(BaseClassifier):
    """A student image classifier and its teacher (template of
    :class:`~mmsts.models.FixMatch` and :class:`~mmsts.models.KDClassifier`).

    The student is an :class:`~mmpretrain.models.ImageClassifier`
    (``backbone``, ``neck``, ``head``). The teacher is either

    * **online**: an averaged model built around the student
      (``type='SpatialTemporalSmoothing'``, MMEngine's
      ``'ExponentialMovingAverage'``, ...), updated by :meth:`update_teacher`
      and started as a copy of the student; or
    * **fixed**: a :class:`~mmsts.models.FrozenTeacher`, a trained
      classifier built from a config and a checkpoint, never updated.

    Subclasses implement :meth:`loss`. Prediction uses the model named by
    ``semi_test_cfg.predict_on``, which
    :class:`~mmsts.engine.TeacherStudentValLoop` switches to validate both.
    The state dict holds ``student.*`` and ``teacher.*`` (``teacher.module.*``
    for an online teacher, which therefore loads into a plain
    ``ImageClassifier`` with ``prefix='teacher.module.'``).

    Args:
        backbone (dict): Config of the student's backbone.
        head (dict): Config of the student's head.
        neck (dict, optional): Config of the student's neck.
        teacher (dict): Config of the teacher (see above). An averaged
            model's config must not set ``model``.
        semi_test_cfg (dict, optional): ``predict_on``, ``'teacher'`` or
            ``'student'``.
        default_predict_on (str): ``predict_on`` when not set.
        data_preprocessor (dict | nn.Module, optional): The model's data
            preprocessor (``type`` defaults to ``'ClsDataPreprocessor'``, as
            in ``ImageClassifier``); the student gets preprocessed batches.
        init_cfg (dict, optional): Initialization config.
    """

    def __init__(self,
                 backbone: dict,
                 head: dict,
                 neck: Optional[dict] = None,
                 teacher: Optional[dict] = None,
                 semi_test_cfg: Optional[dict] = None,
                 default_predict_on: str = 'teacher',
                 data_preprocessor: Optional[Union[dict, nn.Module]] = None,
                 init_cfg: Optional[dict] = None) -> None:
        test_cfg = dict(predict_on=default_predict_on)
        test_cfg.update(semi_test_cfg or {})
        check_choice('semi_test_cfg.predict_on', test_cfg['predict_on'],
                     PREDICT_ON)
        if isinstance(data_preprocessor, dict):
            # As ImageClassifier: mmpretrain's data sets give a typeless one.
            data_preprocessor = MODELS.build(
                dict(dict(type='ClsDataPreprocessor'), **data_preprocessor))
        super().__init__(
            init_cfg=init_cfg, data_preprocessor=data_preprocessor)
        self.semi_test_cfg = test_cfg
        self.student = ImageClassifier(
            backbone=backbone,
            neck=neck,
            head=head,
            data_preprocessor=BaseDataPreprocessor())
        self.teacher = self._build_teacher(copy.deepcopy(dict(teacher or {})))

    def _build_teacher(self, cfg: dict) -> nn.Module:
        if 'type' not in cfg:
            raise ValueError('`teacher` needs a `type`: an averaged model '
                             "(e.g. 'SpatialTemporalSmoothing') or "
                             "'FrozenTeacher'")
        if cfg['type'] is FrozenTeacher or \
                MODELS.get(cfg['type']) is FrozenTeacher:
            return MODELS.build(cfg)
        if 'model' in cfg:
            raise ValueError('`teacher` must not set `model`: the teacher is '
                             'built around the student')
        teacher = MODELS.build(dict(cfg, model=self.student))
        if not isinstance(teacher, BaseAveragedModel):
            raise TypeError(
                '`teacher.type` must build a BaseAveragedModel or a '
                f'FrozenTeacher, but got {type(teacher).__name__} from '
                f'{cfg["type"]!r}')
        return teacher

    @property
    def online(self) -> bool:
        """Whether the teacher is an average of the student."""
        return isinstance(self.teacher, BaseAveragedModel)

    def init_weights(self) -> None:
        """Initialize the student, and start an online teacher as its copy
        (a frozen teacher keeps its checkpoint)."""
        super().init_weights()
        if self.online and int(self.teacher.steps) == 0:
            self.teacher.module.load_state_dict(self.student.state_dict())

    def update_teacher(self) -> None:
        """Move an online teacher toward the student (a frozen teacher
        stays as it is)."""
        if self.online:
            self.teacher.update_parameters(self.student)

    @torch.no_grad()
    def teacher_logits(self, inputs: Tensor, mode: str = 'train') -> Tensor:
        """The teacher's logits on ``inputs``, without gradient.

        Args:
            inputs (Tensor): Preprocessed images.
            mode (str): How an online teacher predicts: ``'train'`` (batch
                statistics) or ``'eval'`` (its running statistics); it is put
                back in the model's mode afterwards. A frozen teacher always
                predicts in its own mode.
        """
        if not self.online or mode == 'train':
            return self.teacher(inputs)
        was_training = self.teacher.training
        self.teacher.eval()
        try:
            return self.teacher(inputs)
        finally:
            self.teacher.train(was_training)

    # ------------------------------------------------------------------
    # Inference
    # ------------------------------------------------------------------
    def _classifier(self, model: Optional[str] = None) -> ImageClassifier:
        name = self.semi_test_cfg['predict_on'] if model is None else model
        check_choice('model', name, PREDICT_ON)
        if name == 'student':
            return self.student
        return self.teacher.module if self.online else self.teacher.classifier

    def forward(self,
                inputs: Union[Tensor, Dict[str, Tensor]],
                data_samples: Optional[Union[List[DataSample],
                                             Dict[str, list]]] = None,
                mode: str = 'tensor'):
        """``'tensor'`` (logits), ``'loss'`` or ``'predict'``, as
        :class:`~mmpretrain.models.ImageClassifier`; ``'tensor'`` and
        ``'predict'`` use the model named by ``semi_test_cfg.predict_on``."""
        if mode == 'tensor':
            return self._classifier()(inputs, mode='tensor')
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        raise RuntimeError(f'Invalid mode "{mode}".')

    def extract_feat(self, inputs: Tensor, stage: str = 'neck'):
        """Features of the model named by ``semi_test_cfg.predict_on``, see
        :meth:`mmpretrain.models.ImageClassifier.extract_feat`."""
        return self._classifier().extract_feat(inputs, stage=stage)

    def predict(self,
                inputs: Tensor,
                data_samples: Optional[List[DataSample]] = None,
                model: Optional[str] = None,
                **kwargs) -> List[DataSample]:
        """Predict with the teacher or the student.

        Args:
            inputs (Tensor): Images, ``(N, C, H, W)``.
            data_samples (List[DataSample], optional): Their data samples.
                Defaults to None.
            model (str, optional): ``'teacher'`` or ``'student'``; None uses
                ``semi_test_cfg.predict_on``. Defaults to None.
            **kwargs: Passed to the head's ``predict``.
        """
        return self._classifier(model).predict(inputs, data_samples, **kwargs)


def with_defaults(key: str, cfg: Optional[dict], defaults: dict) -> dict:
    """``cfg`` (the option called ``key``) filled in with ``defaults``;
    a ValueError names any key not in ``defaults``."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        raise ValueError(f'Unknown keys {unknown} in `{key}`; expected some '
                         f'of {sorted(defaults)}')
    return {**defaults, **cfg}


def check_choice(key: str, value, choices) -> None:
    """Raise a ValueError naming ``key`` unless ``value`` is in
    ``choices``."""
    if value not in choices:
        raise ValueError(
            f'`{key}` must be one of {tuple(choices)}, but got {value!r}')


def is_number(value) -> bool:
    """A real number that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
