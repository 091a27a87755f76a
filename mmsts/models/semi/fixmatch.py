"""FixMatch with a Spatial-Temporal Smoothing teacher."""
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from torch import Tensor

from ..teacher_student import (TEACHER_MODES, TeacherStudentClassifier,
                               check_choice, is_number, with_defaults)

BRANCHES = ('sup', 'unsup_weak', 'unsup_strong')
PSEUDO_LABEL_SOURCES = ('teacher', 'student')
_TRAIN_DEFAULTS = dict(
    threshold=0.95,
    lambda_u=1.0,
    pseudo_label_source='student',
    teacher_mode='train')


@MODELS.register_module()
class FixMatch(TeacherStudentClassifier):
    """FixMatch (Sohn et al., NeurIPS 2020) with a smoothed teacher.

    A student image classifier (``backbone``, ``neck``, ``head``, as
    :class:`~mmpretrain.models.ImageClassifier`) and a teacher that averages
    its weights, by default with Spatial-Temporal Smoothing
    (:class:`~mmsts.models.SpatialTemporalSmoothing`; ``preserve_prob=0`` is
    the usual EMA, "TMA"). At each training step the labeled images
    (``sup``), the weak views (``unsup_weak``) and the strong views
    (``unsup_strong``) of the unlabeled images go through *one* concatenated
    forward pass of the student, and

    .. math::

        L = \\mathrm{CE}(p_s(x_l), y) + \\lambda_u \\frac{1}{\\mu B}
            \\sum_b \\mathbb{1}[\\max q_b \\ge \\tau]
            \\mathrm{CE}(p_s(\\mathcal{A}(u_b)), \\arg\\max q_b)

    where ``q_b`` is the class distribution predicted on the weak view
    ``u_b``: by the student in the same concatenated pass, detached
    (``pseudo_label_source='student'``, the default: the original FixMatch,
    where the averaged model is used for evaluation only), or by the teacher
    (``'teacher'``, no gradient: a mean-teacher FixMatch, not the original
    algorithm). The supervised term is the head's own loss.

    The teacher is updated once per training step, at the start of
    :meth:`loss` and before it predicts, as mmpretrain's BYOL updates its
    target network (the first update copies the student). A
    :class:`~mmsts.engine.SpatialTemporalSmoothingHook` can take it over.
    When it predicts pseudo-labels, it runs in training mode, i.e. with the
    batch statistics of the weak views, like mmpretrain's momentum encoders
    (``teacher_mode='train'``, default), or in evaluation mode, with its
    running batch-norm statistics (``teacher_mode='eval'``); the teacher is
    put back in the model's mode afterwards.

    Logged besides ``loss_x`` and ``loss_u`` (which includes ``lambda_u``):
    ``mask_rate``, the fraction of unlabeled images whose confidence reaches
    the threshold, and, when the unlabeled data samples carry ground-truth
    labels, ``pseudo_label_acc`` (over all unlabeled images) and
    ``masked_pseudo_label_acc`` (over the confident ones; 0 when there are
    none). They stay on the device: the step adds no host synchronisation.

    The state dict holds the student (``student.*``) and the teacher
    (``teacher.module.*``, ``teacher.steps``). Either loads into a plain
    :class:`~mmpretrain.models.ImageClassifier` with ``init_cfg=dict(
    type='Pretrained', checkpoint=..., prefix='teacher.module.')`` (or
    ``prefix='student.'``).

    Args:
        backbone (dict): Config of the backbone.
        neck (dict, optional): Config of the neck. Defaults to None.
        head (dict): Config of the classification head.
        teacher (dict, optional): Arguments of the teacher, an averaged model
            built around the student: ``type`` defaults to
            ``'SpatialTemporalSmoothing'``, whose other arguments
            (``preserve_prob``, ``momentum``, ...) follow MMEngine's convention
            (``momentum`` is the weight of the *student*: FixMatch's EMA decay
            0.999 is ``momentum=0.001``). Defaults to
            ``dict(preserve_prob=0.5, momentum=0.001)``.
        semi_train_cfg (dict, optional): ``threshold`` (confidence threshold
            tau in (0, 1], a prediction exactly at tau counts as confident;
            default 0.95), ``lambda_u`` (weight of the unlabeled loss, >= 0;
            default 1), ``pseudo_label_source`` (``'student'``, the original
            FixMatch, default; or ``'teacher'``, a mean-teacher FixMatch) and
            ``teacher_mode`` (how the teacher predicts pseudo-labels:
            ``'train'``, with batch statistics, default; or ``'eval'``, with
            its running statistics; unused with ``'student'``).
        semi_test_cfg (dict, optional): ``predict_on``: the model used by
            :meth:`predict`, ``'teacher'`` (default) or ``'student'``;
            :class:`~mmsts.engine.TeacherStudentValLoop` switches it to
            validate both.
        data_preprocessor (dict, optional): Config of the data preprocessor,
            typically a ``MultiBranchDataPreprocessor`` wrapping a
            ``ClsDataPreprocessor``. Defaults to None
            (:class:`~mmengine.model.BaseDataPreprocessor`).
        init_cfg (dict, optional): Initialization config. Defaults to None.
    """

    def __init__(self,
                 backbone: dict,
                 head: dict,
                 neck: Optional[dict] = None,
                 teacher: Optional[dict] = None,
                 semi_train_cfg: Optional[dict] = None,
                 semi_test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[Union[dict, nn.Module]] = None,
                 init_cfg: Optional[dict] = None) -> None:
        self.semi_train_cfg = _check_train_cfg(semi_train_cfg)
        teacher_cfg = dict(teacher or {})
        if teacher_cfg.get('type', 'SpatialTemporalSmoothing') == \
                'SpatialTemporalSmoothing':
            # FixMatch's defaults, for its own teacher type only (another
            # averaged model would not take `preserve_prob`).
            teacher_cfg = dict(
                dict(type='SpatialTemporalSmoothing', preserve_prob=0.5,
                     momentum=0.001), **teacher_cfg)
        super().__init__(
            backbone=backbone,
            head=head,
            neck=neck,
            teacher=teacher_cfg,
            semi_test_cfg=semi_test_cfg,
            data_preprocessor=data_preprocessor,
            init_cfg=init_cfg)
        if not self.online:
            raise TypeError('FixMatch needs an averaged teacher (e.g. '
                            "'SpatialTemporalSmoothing'), but got "
                            f'{type(self.teacher).__name__}')

    @property
    def threshold(self) -> float:
        """The confidence threshold tau."""
        return self.semi_train_cfg['threshold']

    @property
    def lambda_u(self) -> float:
        """The weight of the unlabeled loss."""
        return self.semi_train_cfg['lambda_u']

    # ------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------
    def loss(self, inputs: Dict[str, Tensor],
             data_samples: Dict[str, List[DataSample]]) -> Dict[str, Tensor]:
        """Update the teacher, then compute the FixMatch losses.

        Args:
            inputs (dict[str, Tensor]): Preprocessed images of the branches
                ``sup`` (B), ``unsup_weak`` and ``unsup_strong`` (mu B each,
                the two views of the same images in the same order).
            data_samples (dict[str, list[DataSample]]): Their data samples;
                ``sup`` ones carry the labels.

        Returns:
            dict[str, Tensor]: ``loss_x``, ``loss_u``, ``mask_rate`` and, if
            the unlabeled samples have labels, ``pseudo_label_acc`` and
            ``masked_pseudo_label_acc``.
        """
        _check_branches(inputs, data_samples)
        sizes = [inputs[b].shape[0] for b in BRANCHES]
        if sizes[1] != sizes[2]:
            raise ValueError('`unsup_weak` and `unsup_strong` must hold the '
                             'two views of the same images, but got '
                             f'{sizes[1]} and {sizes[2]} images')
        self.update_teacher()

        feats = self.student.extract_feat(
            torch.cat([inputs[b] for b in BRANCHES]))
        # One tuple of features per branch (a neck may return several).
        sup_feats, weak_feats, strong_feats = zip(
            *[f.split(sizes) for f in feats])
        sup_losses = self.student.head.loss(sup_feats, data_samples['sup'])
        losses = {
            ('loss_x' if k == 'loss' else k): v
            for k, v in sup_losses.items()
        }

        if self.semi_train_cfg['pseudo_label_source'] == 'teacher':
            weak_logits = self.teacher_logits(
                inputs['unsup_weak'], self.semi_train_cfg['teacher_mode'])
        else:
            weak_logits = self.student.head(weak_feats).detach()
        probs = weak_logits.float().softmax(dim=1)
        confidence, pseudo_labels = probs.max(dim=1)
        mask = (confidence >= self.threshold).to(probs.dtype)
        strong_logits = self.student.head(strong_feats)
        loss_u = F.cross_entropy(
            strong_logits, pseudo_labels, reduction='none') * mask
        losses['loss_u'] = self.lambda_u * loss_u.mean()
        losses['mask_rate'] = mask.mean()
        losses.update(
            _pseudo_label_accuracy(pseudo_labels, mask,
                                   data_samples['unsup_weak']))
        return losses


def _check_train_cfg(cfg: Optional[dict]) -> dict:
    """Fill in and validate ``semi_train_cfg``."""
    cfg = with_defaults('semi_train_cfg', cfg, _TRAIN_DEFAULTS)
    threshold = cfg['threshold']
    if not is_number(threshold) or not 0 < threshold <= 1:
        raise ValueError('`semi_train_cfg.threshold` must be in (0, 1], but '
                         f'got {threshold!r}')
    lambda_u = cfg['lambda_u']
    if not is_number(lambda_u) or not lambda_u >= 0:  # also rejects NaN
        raise ValueError('`semi_train_cfg.lambda_u` must be a number >= 0, '
                         f'but got {lambda_u!r}')
    check_choice('semi_train_cfg.pseudo_label_source',
                 cfg['pseudo_label_source'], PSEUDO_LABEL_SOURCES)
    check_choice('semi_train_cfg.teacher_mode', cfg['teacher_mode'],
                 TEACHER_MODES)
    cfg['threshold'], cfg['lambda_u'] = float(threshold), float(lambda_u)
    return cfg


def _check_branches(inputs, data_samples) -> None:
    for name, obj in (('inputs', inputs), ('data_samples', data_samples)):
        if not isinstance(obj, dict):
            raise ValueError(
                f'FixMatch.loss needs `{name}` as a dict with the branches '
                f'{BRANCHES} (from MultiBranch + MultiBranchDataPreprocessor),'
                f' but got a {type(obj).__name__}')
        missing = [b for b in BRANCHES if b not in obj]
        empty = [b for b in BRANCHES if b in obj and obj[b] is None]
        problems = []
        if missing:
            problems.append(f'{missing} are missing (got {sorted(obj)})')
        if empty:
            problems.append(
                f'{empty} hold no images in this batch (check that the '
                'sampler and the data loader have the same batch_size)')
        if problems:
            raise ValueError(
                f'FixMatch.loss needs `{name}` with the branches {BRANCHES} '
                '(from MultiBranch + MultiBranchDataPreprocessor), but '
                + ' and '.join(problems))


def _pseudo_label_accuracy(
        pseudo_labels: Tensor, mask: Tensor,
        data_samples: List[DataSample]) -> Dict[str, Tensor]:
    """Accuracy of the pseudo-labels, if the unlabeled samples have labels."""
    if not data_samples or not all('gt_label' in s for s in data_samples):
        return {}
    gt = torch.cat([s.gt_label for s in data_samples]).to(pseudo_labels)
    correct = (pseudo_labels == gt).to(mask.dtype)
    return dict(
        pseudo_label_acc=correct.mean(),
        masked_pseudo_label_acc=(correct * mask).sum() /
        mask.sum().clamp_min(1))
