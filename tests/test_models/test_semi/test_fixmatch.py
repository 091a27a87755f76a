"""FixMatch with an STS teacher: losses, pseudo-labels, teacher updates,
validation of both models, checkpoints and bad configurations."""
import copy
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
from mmengine.optim import OptimWrapper
from mmengine.runner import Runner
from mmpretrain.models import ImageClassifier
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from torch.utils.data import Dataset

import mmsts  # noqa: F401  (registers the modules)
from mmsts.engine import TeacherStudentValLoop

NUM_CLASSES = 3
B, U = 2, 4  # labeled and unlabeled images per batch (mu = 2)


def build_fixmatch(**kwargs):
    cfg = dict(
        type='FixMatch',
        backbone=dict(type='WideResNet', depth=10, widen_factor=1),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(
            type='LinearClsHead', num_classes=NUM_CLASSES, in_channels=64),
        teacher=dict(preserve_prob=0.5, momentum=0.001))
    cfg.update(kwargs)
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def make_batch(seed=0, unlabeled_gt=None):
    g = torch.Generator().manual_seed(seed)

    def images(n):
        return torch.randn(n, 3, 8, 8, generator=g)

    inputs = dict(sup=images(B), unsup_weak=images(U), unsup_strong=images(U))
    unlabeled_gt = unlabeled_gt if unlabeled_gt is not None else [
        i % NUM_CLASSES for i in range(U)
    ]
    data_samples = dict(
        sup=[DataSample().set_gt_label(i % NUM_CLASSES) for i in range(B)],
        unsup_weak=[DataSample().set_gt_label(y) for y in unlabeled_gt],
        unsup_strong=[DataSample().set_gt_label(y) for y in unlabeled_gt])
    return inputs, data_samples


def set_head(classifier, bias):
    """Make a classifier predict ``bias`` whatever the image."""
    with torch.no_grad():
        classifier.head.fc.weight.zero_()
        classifier.head.fc.bias.copy_(torch.tensor(bias))


def exact_softmax_logit(target: torch.Tensor) -> torch.Tensor:
    """A float32 logit ``d`` with ``softmax([d, 0])[0] == target`` exactly."""
    d = torch.log(target / (1 - target)).float()
    for _ in range(2000):
        p = torch.stack([d, torch.zeros(())]).softmax(0)[0]
        if p == target:
            return d
        d = torch.nextafter(
            d, torch.tensor(float('inf') if p < target else -float('inf')))
    pytest.fail(f'no float32 logit gives a softmax of exactly {target}')


# ----------------------------------------------------------------------
# Pseudo-labels and masking
# ----------------------------------------------------------------------
def test_confidence_exactly_at_threshold_is_kept(monkeypatch):
    model = build_fixmatch(
        head=dict(type='LinearClsHead', num_classes=2, in_channels=64),
        semi_train_cfg=dict(pseudo_label_source='teacher'))
    at = torch.tensor(0.95)
    d_at = exact_softmax_logit(at)
    d_below = d_at  # the largest float32 logit whose softmax is below 0.95
    while torch.stack([d_below, torch.zeros(())]).softmax(0)[0] >= at:
        d_below = torch.nextafter(d_below, torch.tensor(-float('inf')))
    weak_logits = torch.stack([
        torch.stack([d_at, torch.zeros(())]),  # exactly 0.95 -> confident
        torch.stack([d_below, torch.zeros(())]),  # just below -> masked
        torch.tensor([0., 20.]),  # confident, class 1
        torch.tensor([0., 0.]),  # 0.5 -> masked
    ])
    monkeypatch.setattr(
        model.teacher.module,
        'forward',
        lambda inputs, mode='tensor': weak_logits)
    inputs, data_samples = make_batch(unlabeled_gt=[0, 0, 0, 0])
    losses = model.loss(inputs, data_samples)

    # The student's strong-view logits, from the concatenated pass.
    batch = torch.cat(
        [inputs[k] for k in ('sup', 'unsup_weak', 'unsup_strong')])
    logits = model.student(batch)[B + U:]
    mask = torch.tensor([1., 0., 1., 0.])
    pseudo = torch.tensor([0, 0, 1, 0])
    expected = (F.cross_entropy(logits, pseudo, reduction='none') *
                mask).mean()
    assert losses['mask_rate'].item() == pytest.approx(0.5)
    torch.testing.assert_close(losses['loss_u'], expected)
    # Against gt 0: pseudo-labels 0, 0, 1, 0 -> 3/4; confident: 0 and 1 -> 1/2
    assert losses['pseudo_label_acc'].item() == pytest.approx(0.75)
    assert losses['masked_pseudo_label_acc'].item() == pytest.approx(0.5)


@pytest.mark.parametrize('source', ['teacher', 'student'])
def test_pseudo_labels_come_from_the_configured_source(source):
    model = build_fixmatch(
        semi_train_cfg=dict(pseudo_label_source=source),
        teacher=dict(preserve_prob=1.0, momentum=0.001))
    # The teacher has been updated before (no first-step copy) and keeps
    # every tensor (p = 1): it predicts class 2, the student class 0.
    model.teacher.steps.fill_(1)
    set_head(model.student, [20., 0., 0.])
    set_head(model.teacher.module, [0., 0., 20.])
    inputs, data_samples = make_batch(unlabeled_gt=[2] * U)
    losses = model.loss(inputs, data_samples)
    assert losses['mask_rate'].item() == 1.0
    expected_acc = 1.0 if source == 'teacher' else 0.0
    assert losses['pseudo_label_acc'].item() == expected_acc
    assert losses['masked_pseudo_label_acc'].item() == expected_acc
    assert torch.equal(model.teacher.module.head.fc.bias,
                       torch.tensor([0., 0., 20.]))


@pytest.mark.parametrize('source', ['teacher', 'student'])
def test_loss_equals_hand_computation(source):
    model = build_fixmatch(
        semi_train_cfg=dict(pseudo_label_source=source, lambda_u=2.0))
    with torch.no_grad():  # spread the confidences
        model.student.head.fc.weight.mul_(50)
    inputs, data_samples = make_batch(seed=1)
    order = ('sup', 'unsup_weak', 'unsup_strong')

    # By hand: one pass over the concatenation (BN batch statistics), then
    # the teacher (a copy of the student after its first update) on the weak
    # views alone, in training mode like the model's own call.
    logits = model.student(torch.cat([inputs[k] for k in order]))
    sup_logits, weak_logits, strong_logits = logits.split([B, U, U])
    if source == 'teacher':
        weak_logits = copy.deepcopy(model.student)(inputs['unsup_weak'])
    conf, pseudo = weak_logits.softmax(1).max(1)
    values = conf.sort().values
    threshold = float((values[U // 2 - 1] + values[U // 2]).detach() / 2)
    model.semi_train_cfg['threshold'] = threshold
    mask = (conf >= threshold).float()
    assert 0 < mask.sum() < U  # the test exercises both sides
    y = torch.tensor([i % NUM_CLASSES for i in range(B)])
    loss_x = F.cross_entropy(sup_logits, y)
    loss_u = 2.0 * (F.cross_entropy(strong_logits, pseudo, reduction='none') *
                    mask).mean()

    losses = model.loss(inputs, data_samples)
    torch.testing.assert_close(losses['loss_x'], loss_x)
    torch.testing.assert_close(losses['loss_u'], loss_u)
    torch.testing.assert_close(losses['mask_rate'], mask.mean())
    gt = torch.tensor([i % NUM_CLASSES for i in range(U)])
    torch.testing.assert_close(losses['pseudo_label_acc'],
                               (pseudo == gt).float().mean())
    # Gradients flow into the student through both terms.
    (losses['loss_x'] + losses['loss_u']).backward()
    assert model.student.head.fc.weight.grad.abs().sum() > 0


def test_original_fixmatch_is_the_default():
    """Pseudo-labels from the model being trained (FixMatch's paper and
    code); the teacher is only updated, for evaluation."""
    model = build_fixmatch()
    assert model.semi_train_cfg['pseudo_label_source'] == 'student'
    teacher_calls = count_calls(model.teacher.module.backbone)
    inputs, data_samples = make_batch()
    model.loss(inputs, data_samples)
    assert teacher_calls == []
    assert int(model.teacher.steps) == 1


def bn_layers(module):
    return [m for m in module.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_teacher_mode_sets_the_batch_norm_statistics(mode):
    """``teacher_mode='eval'`` predicts with the teacher's running
    statistics, ``'train'`` with the weak views' batch statistics; the
    teacher is back in training mode afterwards."""
    model = build_fixmatch(
        semi_train_cfg=dict(pseudo_label_source='teacher',
                            teacher_mode=mode))
    model.train()
    # Running statistics far from the batch's, so the two modes differ.
    g = torch.Generator().manual_seed(0)
    for bn in bn_layers(model.student):
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 2)
    inputs, data_samples = make_batch(seed=3)
    seen = []
    model.teacher.module.register_forward_hook(
        lambda m, args, out: seen.append((m.training, out.detach().clone())))
    # The first update copies the student, buffers included, into the
    # teacher: the expected logits are the student's copy's, in either mode.
    reference = copy.deepcopy(model.student)
    with torch.no_grad():
        by_running_stats = reference.eval()(inputs['unsup_weak'])
        by_batch_stats = reference.train()(inputs['unsup_weak'])
    assert not torch.allclose(by_running_stats, by_batch_stats, atol=1e-3)
    running_means = [
        bn.running_mean.clone() for bn in bn_layers(model.student)
    ]

    model.loss(inputs, data_samples)

    ((training, logits), ) = seen
    assert training == (mode == 'train')
    expected = by_batch_stats if mode == 'train' else by_running_stats
    torch.testing.assert_close(logits, expected)
    assert model.teacher.training and model.teacher.module.training
    # Evaluation mode leaves the running statistics as they were.
    if mode == 'eval':
        for bn, mean in zip(bn_layers(model.teacher.module), running_means):
            assert torch.equal(bn.running_mean, mean)


def test_no_pseudo_label_accuracy_without_unlabeled_labels():
    model = build_fixmatch()
    inputs, data_samples = make_batch()
    data_samples['unsup_weak'] = [DataSample() for _ in range(U)]
    losses = model.loss(inputs, data_samples)
    assert {'loss_x', 'loss_u', 'mask_rate'} <= set(losses)
    assert 'pseudo_label_acc' not in losses
    assert 'masked_pseudo_label_acc' not in losses


# ----------------------------------------------------------------------
# One forward pass, one teacher update per step
# ----------------------------------------------------------------------
def count_calls(module):
    sizes = []
    module.register_forward_hook(
        lambda m, args, out: sizes.append(args[0].shape[0]))
    return sizes


@pytest.mark.parametrize('source,teacher_calls', [('teacher', [U]),
                                                  ('student', [])])
def test_one_concatenated_student_forward(source, teacher_calls):
    model = build_fixmatch(semi_train_cfg=dict(pseudo_label_source=source))
    student_calls = count_calls(model.student.backbone)
    teacher = count_calls(model.teacher.module.backbone)
    optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    inputs, data_samples = make_batch()
    log_vars = model.train_step(
        dict(inputs=inputs, data_samples=data_samples), optim_wrapper)
    assert student_calls == [B + 2 * U]
    assert teacher == teacher_calls
    assert {'loss', 'loss_x', 'loss_u', 'mask_rate'} <= set(log_vars)


def test_teacher_follows_the_sts_rule_once_per_step():
    momentum = 0.5
    model = build_fixmatch(teacher=dict(preserve_prob=0.5, momentum=momentum))
    masks = model.teacher.smoother.masks  # pure function of (seed, step)
    optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.5))
    kept = moved = 0
    for step in range(4):
        teacher_before = [
            p.detach().clone() for p in model.teacher.module.parameters()
        ]
        student_before = [
            p.detach().clone() for p in model.student.parameters()
        ]
        inputs, data_samples = make_batch(seed=step)
        model.train_step(
            dict(inputs=inputs, data_samples=data_samples), optim_wrapper)
        assert int(model.teacher.steps) == step + 1  # one update per step
        teacher_after = list(model.teacher.module.parameters())
        flags = masks.update_flags(step, len(teacher_after))
        for t0, s, t1, flag in zip(teacher_before, student_before,
                                   teacher_after, flags):
            if step == 0:  # the first update copies the student
                assert torch.equal(t1, s)
            elif flag:  # moved toward the student as it was at this step
                torch.testing.assert_close(t1, t0 + momentum * (s - t0))
                moved += not torch.equal(t0, s)
            else:
                assert torch.equal(t1, t0)
                kept += not torch.equal(t0, s)
        # The student did train after the teacher read it.
        assert any(not torch.equal(s, p)
                   for s, p in zip(student_before, model.student.parameters()))
    assert kept > 0 and moved > 0


def test_teacher_follows_the_model_to_its_device():
    """MMEngine's runner builds the model, teacher included, on the host and
    then moves it (``model.to(get_device())``); ``double()`` takes the same
    path on CPU. The teacher's BN statistics must still be copied from the
    student at each update, into the moved tensors."""
    model = build_fixmatch().double()
    optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    for step in range(2):
        # The update at the start of a step reads the student as it is now.
        read = {
            k: v.clone()
            for k, v in model.student.named_buffers()
        }
        inputs, data_samples = make_batch(seed=step)
        inputs = {k: v.double() for k, v in inputs.items()}
        model.train_step(
            dict(inputs=inputs, data_samples=data_samples), optim_wrapper)
    teacher = dict(model.teacher.module.named_buffers())
    assert set(teacher) == set(read)
    assert any(not torch.equal(read[k], v)
               for k, v in model.student.named_buffers())  # it trained on
    for key, value in teacher.items():
        assert value.dtype == read[key].dtype
        assert torch.equal(value, read[key]), key


def test_init_weights_starts_the_teacher_as_the_student():
    model = build_fixmatch()
    for t, s in zip(model.teacher.module.state_dict().values(),
                    model.student.state_dict().values()):
        assert torch.equal(t, s)
    assert int(model.teacher.steps) == 0


# ----------------------------------------------------------------------
# Validation of both models, checkpoints
# ----------------------------------------------------------------------
class TinyLabeled(Dataset):
    """Four 8x8 images of class 1, in mmpretrain's packed format."""
    metainfo = dict(classes=('a', 'b', 'c'))

    def __len__(self):
        return 4

    def __getitem__(self, idx):
        return dict(
            inputs=torch.full((3, 8, 8), idx, dtype=torch.uint8),
            data_samples=DataSample().set_gt_label(1))


def test_val_loop_reports_teacher_and_student(tmp_path):
    model = build_fixmatch(data_preprocessor=dict(type='ClsDataPreprocessor'))
    set_head(model.teacher.module, [0., 5., 0.])  # always right
    set_head(model.student, [5., 0., 0.])  # always wrong
    runner = Runner(
        model=model,
        work_dir=str(tmp_path),
        val_dataloader=dict(
            dataset=TinyLabeled(),
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=2,
            num_workers=0),
        val_cfg=dict(type='TeacherStudentValLoop'),
        val_evaluator=dict(type='Accuracy', topk=(1, )),
        default_scope='mmpretrain',
        log_level='WARNING')
    metrics = runner.val()
    assert isinstance(runner.val_loop, TeacherStudentValLoop)
    assert metrics['teacher/accuracy/top1'] == 100.0
    assert metrics['student/accuracy/top1'] == 0.0
    assert model.semi_test_cfg['predict_on'] == 'teacher'  # restored
    images = torch.zeros(2, 3, 8, 8)
    assert model.predict(images, model='student')[0].pred_label.item() == 0
    assert model.predict(images)[0].pred_label.item() == 1


def test_val_loop_needs_a_teacher_student_model(tmp_path):
    classifier = MODELS.build(
        dict(
            type='ImageClassifier',
            backbone=dict(type='WideResNet', depth=10, widen_factor=1),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=3, in_channels=64)))
    runner = Runner(
        model=classifier,
        work_dir=str(tmp_path),
        val_dataloader=dict(
            dataset=TinyLabeled(),
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=2),
        val_cfg=dict(type='TeacherStudentValLoop'),
        val_evaluator=dict(type='Accuracy'),
        default_scope='mmpretrain',
        log_level='WARNING')
    with pytest.raises(TypeError, match='semi_test_cfg'):
        runner.val()


@pytest.mark.parametrize('prefix', ['teacher.module.', 'student.'])
def test_checkpoint_holds_both_models_and_loads_into_mmpretrain(
        tmp_path, prefix):
    model = build_fixmatch()
    set_head(model.teacher.module, [1., 2., 3.])  # teacher != student
    source = model.teacher.module if prefix == 'teacher.module.' else \
        model.student
    keys = model.state_dict().keys()
    assert 'teacher.steps' in keys
    assert 'student.backbone.stem.weight' in keys
    assert 'teacher.module.backbone.stem.weight' in keys
    assert 'teacher.module.head.fc.bias' in keys
    path = osp.join(tmp_path, 'fixmatch.pth')
    torch.save(dict(state_dict=model.state_dict()), path)
    plain = ImageClassifier(
        backbone=dict(type='WideResNet', depth=10, widen_factor=1),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=3, in_channels=64),
        init_cfg=dict(type='Pretrained', checkpoint=path, prefix=prefix))
    plain.init_weights()
    for name, value in source.state_dict().items():
        assert torch.equal(plain.state_dict()[name], value), name


# ----------------------------------------------------------------------
# Bad configurations
# ----------------------------------------------------------------------
@pytest.mark.parametrize('kwargs,match', [
    (dict(semi_train_cfg=dict(threshold=0.)), 'threshold.*0.0'),
    (dict(semi_train_cfg=dict(threshold=1.5)), 'threshold.*1.5'),
    (dict(semi_train_cfg=dict(threshold='high')), 'threshold.*high'),
    (dict(semi_train_cfg=dict(lambda_u=-1)), 'lambda_u.*-1'),
    (dict(semi_train_cfg=dict(pseudo_label_source='ema')),
     'pseudo_label_source.*ema'),
    (dict(semi_train_cfg=dict(teacher_mode='test')),
     r'semi_train_cfg.teacher_mode.*\'test\''),
    (dict(semi_train_cfg=dict(teacher_mode=False)),
     'semi_train_cfg.teacher_mode.*False'),
    (dict(semi_train_cfg=dict(tau=0.9)), 'tau'),
    (dict(semi_test_cfg=dict(predict_on='both')), 'predict_on.*both'),
    (dict(teacher=dict(preserve_prob=1.5)), 'preserve_prob.*1.5'),
])
def test_bad_configuration_fails_at_build_time(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_fixmatch(**kwargs)


def test_threshold_of_one_is_allowed():
    model = build_fixmatch(semi_train_cfg=dict(threshold=1))
    assert model.threshold == 1.0


def test_loss_names_missing_branches():
    model = build_fixmatch()
    inputs, data_samples = make_batch()
    del inputs['unsup_strong']
    with pytest.raises(ValueError, match='unsup_strong'):
        model.loss(inputs, data_samples)


def test_loss_tells_empty_branches_from_missing_ones():
    """A batch without labeled images (sampler and loader batch sizes that
    differ) is not reported as a missing branch that is there."""
    model = build_fixmatch()
    inputs, data_samples = make_batch()
    inputs['sup'] = None
    with pytest.raises(ValueError) as info:
        model.loss(inputs, data_samples)
    text = str(info.value)
    assert "['sup'] hold no images" in text and 'missing' not in text
    assert 'batch_size' in text


def test_a_frozen_teacher_is_refused(tmp_path):
    """FixMatch's teacher is an average of the student (a fixed teacher is
    knowledge distillation: KDClassifier)."""
    classifier = dict(
        type='ImageClassifier',
        backbone=dict(type='WideResNet', depth=10, widen_factor=1),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=NUM_CLASSES,
                  in_channels=64))
    checkpoint = str(tmp_path / 'teacher.pth')
    torch.save(dict(state_dict=MODELS.build(classifier).state_dict()),
               checkpoint)
    with pytest.raises(TypeError, match='FixMatch needs an averaged teacher'):
        build_fixmatch(teacher=dict(type='FrozenTeacher', config=classifier,
                                    checkpoint=checkpoint))


def test_mmengine_ema_teacher_takes_its_own_defaults():
    """STS's defaults (``preserve_prob``) are FixMatch's only for an STS
    teacher: MMEngine's EMA builds with its own."""
    from mmengine.model import ExponentialMovingAverage
    model = build_fixmatch(teacher=dict(type='ExponentialMovingAverage'))
    assert type(model.teacher) is ExponentialMovingAverage
    assert model.teacher.momentum == 0.0002
