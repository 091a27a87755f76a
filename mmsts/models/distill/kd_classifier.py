"""Knowledge distillation on the student's own (augmented) images."""
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from torch import Tensor

from ..teacher_student import (TEACHER_MODES, TeacherStudentClassifier,
                               check_choice, is_number, with_defaults)

_DISTILL_DEFAULTS = dict(kd_weight=1.0, temperature=1.0, teacher_mode='eval')


def kd_loss(student_logits: Tensor, teacher_logits: Tensor,
            temperature: float) -> Tensor:
    """Hinton's distillation term:
    ``T^2 * KL(softmax(t / T) || softmax(s / T))``, averaged over the batch.

    Args:
        student_logits (Tensor): ``(N, C)``, with gradient.
        teacher_logits (Tensor): ``(N, C)``, the targets.
        temperature (float): ``T > 0``; the ``T^2`` keeps the gradient's
            scale independent of ``T``.
    """
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_q = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(
        log_p, log_q, log_target=True,
        reduction='batchmean') * temperature**2


@MODELS.register_module()
class KDClassifier(TeacherStudentClassifier):
    """Knowledge distillation under strong augmentation (Wei et al.,
    "Circumventing Outliers of AutoAugment with Knowledge Distillation",
    ECCV 2020), with a fixed or a smoothed teacher.

    The teacher predicts on the *same* augmented images as the student, so
    that where augmentation removed the discriminative content the teacher's
    soft output takes over part of the ground truth:

    .. math::

        L = L_{head}(s(x), y) + \\lambda \\, T^2 \\,
            \\mathrm{KL}(\\sigma(t(x) / T) \\,\\|\\, \\sigma(s(x) / T))

    ``L_head`` is the student head's own loss (cross-entropy, label
    smoothing, mixup/cutmix targets, as configured in mmpretrain). The
    teacher is a :class:`~mmsts.models.FrozenTeacher` (the paper's setting:
    a trained classifier from a config and a checkpoint) or an online average
    of the student, e.g. ``dict(type='SpatialTemporalSmoothing', ...)`` or
    MMEngine's ``'ExponentialMovingAverage'``, updated at the start of every
    :meth:`loss` (the first update copies the student).

    Logged: ``loss_cls`` (the head's), ``loss_kd`` (with its weight) and,
    where the labels are class indices, the batch accuracies
    ``student_acc`` and ``teacher_acc``, and ``agreement`` (the fraction
    of images where both predict the same class). They stay on the device.

    Args:
        backbone (dict): Config of the student's backbone.
        head (dict): Config of the student's head (a ``ClsHead``).
        neck (dict, optional): Config of the student's neck.
        teacher (dict): The teacher, see above.
        distill_cfg (dict, optional): ``kd_weight`` (lambda >= 0, default
            1), ``temperature`` (T > 0, default 1) and ``teacher_mode``
            (how an online teacher predicts: ``'eval'``, with its running BN
            statistics, default, or ``'train'``; a frozen teacher has its
            own ``mode``).
        semi_test_cfg (dict, optional): ``predict_on``: ``'student'``
            (default, the model distillation deploys) or ``'teacher'``.
        train_cfg (dict, optional): ``augments``, the batch augments
            (mixup, cutmix) of mmpretrain's ``ImageClassifier``; the teacher
            predicts on the mixed images too.
        data_preprocessor (dict | nn.Module, optional): e.g. mmpretrain's
            ``ClsDataPreprocessor`` (with its ``batch_augments``).
        init_cfg (dict, optional): Initialization config.
    """

    def __init__(self,
                 backbone: dict,
                 head: dict,
                 teacher: dict,
                 neck: Optional[dict] = None,
                 distill_cfg: Optional[dict] = None,
                 semi_test_cfg: Optional[dict] = None,
                 train_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[Union[dict, nn.Module]] = None,
                 init_cfg: Optional[dict] = None) -> None:
        self.distill_cfg = _check_distill_cfg(distill_cfg)
        if train_cfg and 'augments' in train_cfg and isinstance(
                data_preprocessor or {}, dict):
            # As ImageClassifier: batch augments (mixup, cutmix).
            data_preprocessor = dict(
                data_preprocessor or {}, batch_augments=train_cfg)
        super().__init__(
            backbone=backbone,
            head=head,
            neck=neck,
            teacher=teacher,
            semi_test_cfg=semi_test_cfg,
            default_predict_on='student',
            data_preprocessor=data_preprocessor,
            init_cfg=init_cfg)

    def loss(self, inputs: Tensor,
             data_samples: List[DataSample]) -> Dict[str, Tensor]:
        """Update an online teacher, then the head's loss plus the
        distillation term on the same images.

        Args:
            inputs (Tensor): Preprocessed (augmented) images, ``(N, C, H,
                W)``.
            data_samples (list[DataSample]): Their labels.
        """
        self.update_teacher()
        feats = self.student.extract_feat(inputs)
        # One head pass for both terms (a head with dropout must not draw
        # two masks); ``_get_loss`` is mmpretrain's ClsHead loss on logits.
        logits = self.student.head(feats)
        losses = {('loss_cls' if k == 'loss' else k): v
                  for k, v in self.student.head._get_loss(
                      logits, data_samples).items()}
        teacher_logits = self.teacher_logits(
            inputs, self.distill_cfg['teacher_mode'])
        losses['loss_kd'] = self.distill_cfg['kd_weight'] * kd_loss(
            logits, teacher_logits, self.distill_cfg['temperature'])
        losses.update(_batch_accuracies(logits, teacher_logits,
                                        data_samples))
        return losses


def _check_distill_cfg(cfg: Optional[dict]) -> dict:
    """Fill in and validate ``distill_cfg``."""
    cfg = with_defaults('distill_cfg', cfg, _DISTILL_DEFAULTS)
    weight, temperature = cfg['kd_weight'], cfg['temperature']
    if not is_number(weight) or not weight >= 0:  # also rejects NaN
        raise ValueError('`distill_cfg.kd_weight` must be a number >= 0, '
                         f'but got {weight!r}')
    if not is_number(temperature) or not 0 < temperature < float('inf'):
        raise ValueError('`distill_cfg.temperature` must be a number > 0, '
                         f'but got {temperature!r}')
    check_choice('distill_cfg.teacher_mode', cfg['teacher_mode'],
                 TEACHER_MODES)
    cfg['kd_weight'], cfg['temperature'] = float(weight), float(temperature)
    return cfg


def _batch_accuracies(student_logits: Tensor, teacher_logits: Tensor,
                      data_samples: List[DataSample]) -> Dict[str, Tensor]:
    """Accuracies on the batch where the labels are class indices (not
    soft scores, e.g. mixup's), and the agreement of the two
    predictions."""
    student_pred = student_logits.argmax(dim=1)
    teacher_pred = teacher_logits.argmax(dim=1)
    out = dict(agreement=(student_pred == teacher_pred).float().mean())
    if data_samples and all('gt_label' in s and 'gt_score' not in s
                            for s in data_samples):
        gt = torch.cat([s.gt_label for s in data_samples]).to(student_pred)
        out['student_acc'] = (student_pred == gt).float().mean()
        out['teacher_acc'] = (teacher_pred == gt).float().mean()
    return out
