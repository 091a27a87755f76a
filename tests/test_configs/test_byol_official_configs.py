"""The official-recipe BYOL configs: the TMA and SE twins of
``byol_resnet50_sts-official_8xb32-coslr-200e_in1k.py`` change only the
smoothing, and the linear probe follows the official STS evaluation
protocol."""
import copy
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner
from mmpretrain.registry import MODELS

from mmsts.models import SpatialTemporalSmoothing
from mmsts.smoothing import ConstantMomentum, CosineMomentum

from conftest import REPO_ROOT, _set_key, small_selfsup_cfg

BYOL = osp.join(REPO_ROOT, 'configs', 'byol')
OFFICIAL = osp.join(BYOL,
                    'byol_resnet50_sts-official_8xb32-coslr-200e_in1k.py')
PROBE = osp.join(BYOL, 'benchmarks',
                 'resnet50_8xb32-linear-bn-coslr-80e_in1k_sts-official.py')
TEACHER_PREFIX = 'target_net.module.0.'
# twin -> (hook keys that differ from the official STS hook, their values,
#          the schedule the teacher must end up with)
TWINS = {
    'byol_resnet50_tma-official_8xb32-coslr-200e_in1k.py':
    ({'preserve_prob'}, dict(preserve_prob=0.0),
     (CosineMomentum, 0.01, 0.0)),
    'byol_resnet50_se-official_8xb32-coslr-200e_in1k.py':
    ({'momentum', 'momentum_schedule'},
     dict(momentum=1.0, momentum_schedule='constant'),
     (ConstantMomentum, 1.0, None)),
}


def _bare(model):
    return model.module if is_model_wrapper(model) else model


def _as_dict(cfg):
    return {k: cfg[k] for k in cfg.keys()}


@pytest.mark.parametrize('name', sorted(TWINS))
def test_twin_differs_only_in_the_smoothing(name):
    keys, values, _ = TWINS[name]
    twin = _as_dict(Config.fromfile(osp.join(BYOL, name)))
    official = _as_dict(Config.fromfile(OFFICIAL))
    # Everything but the hooks is the official recipe, built identically.
    assert twin.keys() == official.keys()
    differing = {k for k in official if twin[k] != official[k]}
    assert differing == {'custom_hooks'}
    (twin_hook, ), (official_hook, ) = twin['custom_hooks'], \
        official['custom_hooks']
    assert twin_hook.keys() == official_hook.keys()
    assert {k for k in official_hook
            if twin_hook[k] != official_hook[k]} == keys
    assert {k: twin_hook[k] for k in keys} == values
    assert official_hook.preserve_prob == 0.7
    # As the official code: the teacher keeps its own BN statistics.
    assert official_hook.buffers == twin_hook.buffers == 'keep'


@pytest.mark.parametrize('name', sorted(TWINS))
def test_twin_trains_with_its_smoothing(name, imagenet_root, tmp_path):
    """Two iterations (ResNet-18, 32-pixel crops, batch 4): the hook puts
    the twin's rule in charge of BYOL's target network."""
    _, values, (kind, momentum, end_momentum) = TWINS[name]
    path = osp.join(BYOL, name)
    hooks = copy.deepcopy(Config.fromfile(path).custom_hooks)
    cfg = small_selfsup_cfg(
        path, str(tmp_path), imagenet_root, max_epochs=1, hooks=hooks)
    cfg.default_hooks.checkpoint = None
    runner = Runner.from_cfg(cfg)
    runner.train()
    teacher = _bare(runner.model).target_net
    assert isinstance(teacher, SpatialTemporalSmoothing)
    assert teacher.smoother.preserve_prob == values.get('preserve_prob', 0.7)
    assert type(teacher.smoother.schedule) is kind
    assert teacher.smoother.schedule.momentum == pytest.approx(momentum)
    if end_momentum is not None:
        assert teacher.smoother.schedule.end_momentum == end_momentum
    assert int(teacher.steps) == 2
    assert teacher.settings['buffers'] == 'keep'
    assert teacher._buffers_avg == []  # no update touches the BN buffers
    # The official optimiser, untouched by the twin.
    optimizer = runner.optim_wrapper.optimizer
    assert type(optimizer).__name__ == 'SGD'
    assert {g['initial_lr'] for g in optimizer.param_groups} == {0.05}


def test_probe_follows_the_official_protocol():
    cfg = Config.fromfile(PROBE)
    assert 'mmsts' in cfg.custom_imports.imports
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.depth) == ('ResNet', 50)
    assert backbone.frozen_stages == 4
    assert backbone.init_cfg.type == 'Pretrained'
    assert backbone.init_cfg.prefix == TEACHER_PREFIX  # the teacher
    assert backbone.init_cfg.checkpoint == ''
    neck = cfg.model.neck
    assert (neck.type, neck.in_channels, neck.out_channels) == \
        ('LinearNeck', 2048, 1000)
    assert neck.gap_dim == 2 and neck.norm_cfg == dict(type='BN1d')
    assert neck.act_cfg is None
    assert neck.init_cfg == dict(type='Normal', std=0.01, bias=0.,
                                 layer='Linear')
    assert cfg.model.head.type == 'ClsHead'
    assert cfg.model.head.loss.type == 'CrossEntropyLoss'
    assert dict(cfg.optim_wrapper) == dict(
        type='OptimWrapper',
        optimizer=dict(
            type='SGD', lr=0.2, momentum=0.9, weight_decay=0.,
            nesterov=False))
    (cosine, ) = cfg.param_scheduler
    assert cosine.type == 'CosineAnnealingLR'
    assert (cosine.begin, cosine.end, cosine.T_max, cosine.eta_min) == \
        (0, 80, 80, 0.)
    assert cosine.by_epoch and cosine.convert_to_iter_based
    assert cfg.train_cfg.max_epochs == 80
    assert cfg.train_cfg.val_interval == 10
    # 8 GPUs x 32 = 256 images per step, the batch 0.2 is meant for.
    assert cfg.train_dataloader.batch_size * 8 == 256
    assert cfg.auto_scale_lr.base_batch_size == 256
    assert cfg.train_dataloader.drop_last
    train_pipeline = [t.type for t in cfg.train_dataloader.dataset.pipeline]
    assert train_pipeline == ['LoadImageFromFile', 'RandomResizedCrop',
                              'RandomFlip', 'PackInputs']
    val_pipeline = cfg.val_dataloader.dataset.pipeline
    assert [t.type for t in val_pipeline] == [
        'LoadImageFromFile', 'ResizeEdge', 'CenterCrop', 'PackInputs']
    assert (val_pipeline[1].scale, val_pipeline[1].edge,
            val_pipeline[2].crop_size) == (256, 'short', 224)
    assert cfg.val_evaluator.topk == (1, 5)


def _byol_checkpoint(path):
    """A BYOL pretraining checkpoint as mmpretrain lays it out: the online
    ResNet-18 under ``backbone.``, the target network's under
    ``target_net.module.0.``, different weights and BN statistics."""
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = MODELS.build(dict(type='ResNet', depth=18))
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
        states.append(net.state_dict())
    student, teacher = states
    state = {f'backbone.{k}': v for k, v in student.items()}
    state.update({f'{TEACHER_PREFIX}{k}': v for k, v in teacher.items()})
    state['target_net.steps'] = torch.tensor(5)
    torch.save({'state_dict': state}, path)
    return student, teacher


def _shrink(cfg, data_root, work_dir):
    cfg.work_dir = work_dir
    cfg.model.backbone.depth = 18
    cfg.model.neck.in_channels = 512
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        for key in ('scale', 'crop_size'):
            _set_key(cfg[loader].dataset.pipeline, key, 32)
        cfg[loader].batch_size = 4
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
        cfg[loader].dataset.data_root = data_root
    cfg.train_cfg.max_epochs = 1
    cfg.train_cfg.val_interval = 1
    cfg.default_hooks.logger.interval = 1
    cfg.log_level = 'WARNING'
    cfg.randomness = dict(seed=0)
    return cfg


@pytest.mark.parametrize('prefix', [None, 'backbone.'])
def test_probe_loads_the_teacher_and_trains_linear_bn(
        prefix, imagenet_root, tmp_path):
    ckpt = str(tmp_path / 'epoch_200.pth')
    student, teacher = _byol_checkpoint(ckpt)
    cfg = _shrink(Config.fromfile(PROBE), imagenet_root, str(tmp_path / 'w'))
    options = {'model.backbone.init_cfg.checkpoint': ckpt}
    if prefix:
        options['model.backbone.init_cfg.prefix'] = prefix
    cfg.merge_from_dict(options)
    runner = Runner.from_cfg(cfg)
    runner.train()
    model = _bare(runner.model)

    # Default: the teacher; with `prefix=backbone.`: the student. Frozen,
    # BN statistics included.
    expected = student if prefix else teacher
    loaded = model.backbone.state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value, msg=key)

    # Only the Linear + BatchNorm1d classifier is optimised, from lr 0.2.
    assert runner.iter == 2  # 8 images, batch 4, last batch dropped
    state = runner.optim_wrapper.optimizer.state
    assert all(state[p] for p in model.neck.parameters())
    assert not any(state[p] for p in model.backbone.parameters())
    assert runner.message_hub.get_scalar('train/lr').data[0][0] == \
        pytest.approx(0.2)
    assert isinstance(model.neck.norm, torch.nn.BatchNorm1d)
    assert model.neck.norm.num_features == 1000

    # Logits are BatchNorm1d(Linear(pooled features)), evaluated top-1/5.
    model.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.backbone(images)[-1].mean(dim=(2, 3))
        expected_logits = model.neck.norm(model.neck.fc(feats))
        logits = model(images, mode='tensor')
    torch.testing.assert_close(logits, expected_logits)
    metrics = runner.val_loop.run()
    assert {'accuracy/top1', 'accuracy/top5'} <= set(metrics)
