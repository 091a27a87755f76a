"""Knowledge distillation (``KDClassifier``) with a frozen or a smoothed
teacher, and the frozen teacher itself (``FrozenTeacher``)."""
import copy
import math

import pytest
import torch
from mmengine.model import ExponentialMovingAverage
from mmengine.optim import OptimWrapper
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

import mmsts  # noqa: F401  (registers the modules)
from mmsts.models import SpatialTemporalSmoothing, kd_loss

NUM_CLASSES = 3
CLASSIFIER = dict(
    type='ImageClassifier',
    backbone=dict(type='WideResNet', depth=10, widen_factor=1),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=NUM_CLASSES, in_channels=64))
STS = dict(type='SpatialTemporalSmoothing', preserve_prob=0.5, momentum=0.1,
           seed=3)


def student_cfg():
    return {k: copy.deepcopy(v) for k, v in CLASSIFIER.items()
            if k != 'type'}


@pytest.fixture
def teacher_checkpoint(tmp_path):
    """A trained-teacher stand-in: a classifier's state dict, saved as
    MMEngine saves checkpoints."""
    torch.manual_seed(7)
    classifier = MODELS.build(copy.deepcopy(CLASSIFIER))
    classifier.init_weights()
    path = tmp_path / 'teacher.pth'
    torch.save(dict(state_dict=classifier.state_dict(), meta={}), path)
    return str(path), classifier.state_dict()


def frozen(checkpoint, **kwargs):
    return dict(type='FrozenTeacher', config=copy.deepcopy(CLASSIFIER),
                checkpoint=checkpoint, **kwargs)


def build_kd(teacher, **kwargs):
    torch.manual_seed(0)
    model = MODELS.build(
        dict(type='KDClassifier', teacher=teacher, **student_cfg(),
             **kwargs))
    model.init_weights()
    return model


def make_batch(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 3, 8, 8, generator=g)
    samples = [DataSample().set_gt_label(i % NUM_CLASSES) for i in range(n)]
    return inputs, samples


def train_steps(model, steps=3):
    optim = OptimWrapper(torch.optim.SGD(model.student.parameters(), lr=0.5))
    model.train()
    for step in range(steps):
        inputs, samples = make_batch(step)
        losses = model.loss(inputs, samples)
        optim.update_params(losses['loss_cls'] + losses['loss_kd'])
        yield losses


# ----------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------
def test_kd_loss_matches_a_hand_computation():
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0, 0.0], [3.0, 0.0, -2.0]])
    T = 2.0
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p = [math.exp(v / T) for v in s_row]
        q = [math.exp(v / T) for v in t_row]
        p = [v / sum(p) for v in p]
        q = [v / sum(q) for v in q]
        expected += sum(qi * math.log(qi / pi) for pi, qi in zip(p, q))
    expected = expected / 2 * T**2
    assert float(kd_loss(student, teacher, T)) == pytest.approx(expected,
                                                                rel=1e-6)
    assert float(kd_loss(teacher, teacher, T)) == pytest.approx(0, abs=1e-7)


def test_loss_is_head_loss_plus_weighted_kd(teacher_checkpoint):
    path, _ = teacher_checkpoint
    model = build_kd(frozen(path),
                     distill_cfg=dict(kd_weight=0.7, temperature=4.0))
    model.train()
    inputs, samples = make_batch()
    losses = model.loss(inputs, samples)
    student_logits = model.student(inputs, mode='tensor')
    teacher_logits = model.teacher.classifier(inputs, mode='tensor')
    labels = torch.tensor([s.gt_label.item() for s in samples])
    torch.testing.assert_close(
        losses['loss_cls'],
        torch.nn.functional.cross_entropy(student_logits, labels))
    torch.testing.assert_close(
        losses['loss_kd'], 0.7 * kd_loss(student_logits, teacher_logits, 4.0))
    assert losses['loss_kd'].requires_grad
    assert float(losses['student_acc']) == pytest.approx(
        float((student_logits.argmax(1) == labels).float().mean()))
    assert float(losses['teacher_acc']) == pytest.approx(
        float((teacher_logits.argmax(1) == labels).float().mean()))
    assert float(losses['agreement']) == pytest.approx(
        float((student_logits.argmax(1) == teacher_logits.argmax(1)).float()
              .mean()))


# ----------------------------------------------------------------------
# The frozen teacher
# ----------------------------------------------------------------------
def test_frozen_teacher_never_changes_and_gets_no_gradient(
        teacher_checkpoint):
    path, weights = teacher_checkpoint
    model = build_kd(frozen(path))
    assert not any(p.requires_grad for p in model.teacher.parameters())
    student_before = copy.deepcopy(model.student.state_dict())
    for _ in train_steps(model):
        assert not model.teacher.training  # eval BN whatever model.train()
        assert all(p.grad is None for p in model.teacher.parameters())
    model.init_weights()  # the runner calls it: the checkpoint stays
    for key, value in model.teacher.classifier.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert any(not torch.equal(v, model.student.state_dict()[k])
               for k, v in student_before.items())


def test_frozen_teacher_in_train_mode_follows_its_owner(teacher_checkpoint):
    path, _ = teacher_checkpoint
    model = build_kd(frozen(path, mode='train'))
    model.train()
    assert model.teacher.training
    model.eval()
    assert not model.teacher.training


def test_frozen_teacher_predicts_for_validation(teacher_checkpoint):
    path, _ = teacher_checkpoint
    model = build_kd(frozen(path), semi_test_cfg=dict(predict_on='teacher'))
    model.eval()
    inputs, _ = make_batch()
    torch.testing.assert_close(
        model(inputs), model.teacher.classifier(inputs, mode='tensor'))
    assert model.semi_test_cfg['predict_on'] == 'teacher'
    assert build_kd(frozen(path)).semi_test_cfg['predict_on'] == 'student'


@pytest.mark.parametrize('change,message', [
    (dict(prefix='teacher.module.'), r'keys missing'),
    (dict(config=dict(CLASSIFIER, head=dict(
        type='LinearClsHead', num_classes=5, in_channels=64))),
     r'shapes differ: \[.head\.fc\.weight \(3, 64\) vs \(5, 64\)'),
    (dict(checkpoint='nowhere.pth'), r"`teacher.checkpoint` 'nowhere.pth'"
     ': no such file'),
    (dict(mode='frozen'), r"`teacher.mode` must be one of .* 'frozen'"),
    (dict(config='nowhere.py'), r"`teacher.config`: no such file"),
])
def test_frozen_teacher_bad_input(teacher_checkpoint, change, message):
    path, _ = teacher_checkpoint
    with pytest.raises(ValueError, match=message):
        build_kd(dict(frozen(path), **change))


# ----------------------------------------------------------------------
# Online teachers
# ----------------------------------------------------------------------
def test_online_sts_teacher_follows_the_sts_rule():
    """The teacher equals an STS average, built independently, of the
    students the model saw at each step (updated before predicting)."""
    model = build_kd(dict(STS))
    reference = SpatialTemporalSmoothing(
        copy.deepcopy(model.student), preserve_prob=0.5, momentum=0.1,
        seed=3)
    students = []
    optim = OptimWrapper(torch.optim.SGD(model.student.parameters(), lr=0.5))
    model.train()
    for step in range(4):
        students.append(copy.deepcopy(model.student))
        inputs, samples = make_batch(step)
        losses = model.loss(inputs, samples)
        optim.update_params(losses['loss_cls'] + losses['loss_kd'])
    for student in students:
        reference.update_parameters(student)
    for key, value in reference.module.state_dict().items():
        assert torch.equal(model.teacher.module.state_dict()[key], value), key
    assert int(model.teacher.steps) == 4


def test_online_ema_teacher_and_eval_mode_prediction():
    """MMEngine's EMA works as the online teacher; with the default
    ``teacher_mode='eval'`` it predicts with its running statistics and is
    put back in training mode."""
    model = build_kd(dict(type='ExponentialMovingAverage', momentum=0.5))
    assert isinstance(model.teacher, ExponentialMovingAverage)
    model.train()
    seen = []
    model.teacher.register_forward_pre_hook(
        lambda module, args: seen.append(module.module.training))
    list(train_steps(model, steps=2))
    assert seen == [False, False] and model.teacher.training


@pytest.mark.parametrize('cfg,message', [
    (dict(temperature=0), r'`distill_cfg.temperature` must be a number > 0'
     r', but got 0'),
    (dict(temperature=-1.0), r'temperature.*-1\.0'),
    (dict(kd_weight=-0.5), r'`distill_cfg.kd_weight` must be a number >= 0'),
    (dict(teacher_mode='frozen'), r'`distill_cfg.teacher_mode`.*frozen'),
    (dict(alpha=1), r"Unknown keys \['alpha'\] in `distill_cfg`"),
])
def test_distill_cfg_bad_input(cfg, message):
    with pytest.raises(ValueError, match=message):
        build_kd(dict(STS), distill_cfg=cfg)


def test_teacher_needs_a_type():
    with pytest.raises(ValueError, match='`teacher` needs a `type`'):
        build_kd(dict(preserve_prob=0.5))


def test_batch_augments_mix_the_labels_the_teacher_sees():
    """``train_cfg.augments`` (mixup) as in ImageClassifier: the labels
    become soft (so no batch accuracies) and both models see the mixed
    images."""
    model = build_kd(
        dict(STS),
        train_cfg=dict(augments=dict(type='Mixup', alpha=1.0)),
        data_preprocessor=dict(num_classes=NUM_CLASSES))
    inputs, samples = make_batch()
    data = model.data_preprocessor(
        dict(inputs=list(inputs), data_samples=samples), training=True)
    assert data['data_samples'][0].gt_score.shape == (NUM_CLASSES, )
    losses = model.loss(data['inputs'], data['data_samples'])
    assert 'student_acc' not in losses and 'agreement' in losses
