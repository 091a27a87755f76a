"""The knowledge-distillation recipes in ``configs/kd/``: what they set, and
that each one builds and trains a few iterations (and validates) on CPU on a
tiny ImageNet folder, with the fixed teacher read from a local checkpoint."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from mmpretrain.registry import MODELS

from mmsts.models import FrozenTeacher, KDClassifier, SpatialTemporalSmoothing

from conftest import REPO_ROOT, _set_key

KD_DIR = osp.join(REPO_ROOT, 'configs', 'kd')
BASELINE = osp.join(KD_DIR, 'resnet50_8xb32-autoaug_in1k.py')
KD_CONFIGS = sorted(
    p for p in glob.glob(osp.join(KD_DIR, '*.py'))
    if 'fashion-mnist' not in p and p != BASELINE)
#: ResNet-18 at an eighth of its width: the recipes' wiring, not their cost.
TINY_RESNET = dict(type='ResNet', depth=18, stem_channels=8, base_channels=8)
TINY_TEACHER = dict(
    type='ImageClassifier',
    backbone=TINY_RESNET,
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=1000, in_channels=64))


def _ids(paths):
    return [osp.basename(p)[:-3] for p in paths]


def test_baseline_is_mmpretrain_resnet50_with_autoaugment():
    cfg = Config.fromfile(BASELINE)
    assert cfg.model.type == 'ImageClassifier'
    assert cfg.model.backbone.depth == 50
    assert [t['type'] for t in cfg.train_dataloader.dataset.pipeline] == [
        'LoadImageFromFile', 'RandomResizedCrop', 'RandomFlip',
        'AutoAugment', 'PackInputs'
    ]
    assert cfg.train_dataloader.batch_size * 8 == \
        cfg.auto_scale_lr.base_batch_size == 256
    assert cfg.train_cfg.max_epochs == 100


@pytest.mark.parametrize('path', KD_CONFIGS, ids=_ids(KD_CONFIGS))
def test_kd_config_differs_from_the_baseline_only_in_the_model(path):
    cfg, base = Config.fromfile(path), Config.fromfile(BASELINE)
    assert cfg.model.type == 'KDClassifier'
    for key in ('backbone', 'neck', 'head'):
        assert cfg.model[key] == base.model[key], key
    for key in ('optim_wrapper', 'param_scheduler', 'train_cfg',
                'val_dataloader'):
        assert cfg[key] == base[key], key
    pipeline = [t['type'] for t in cfg.train_dataloader.dataset.pipeline]
    assert pipeline[3] == ('RandAugment' if 'randaug' in path else
                           'AutoAugment')
    teacher = cfg.model.teacher
    if 'fixed-teacher' in path:
        assert teacher.type == 'FrozenTeacher' and teacher.mode == 'eval'
    else:
        assert teacher.type == 'SpatialTemporalSmoothing'
        assert teacher.preserve_prob == (0.0 if '_tma_' in path else 0.5)
        assert cfg.val_cfg.type == 'TeacherStudentValLoop'


@pytest.mark.parametrize('path', KD_CONFIGS, ids=_ids(KD_CONFIGS))
def test_kd_config_trains_on_tiny_imagenet(path, imagenet_root, tmp_path):
    cfg = Config.fromfile(path)
    cfg.work_dir = str(tmp_path)
    if cfg.model.teacher.type == 'FrozenTeacher':
        torch.manual_seed(3)
        teacher = MODELS.build(TINY_TEACHER)
        checkpoint = str(tmp_path / 'teacher.pth')
        torch.save(dict(state_dict=teacher.state_dict()), checkpoint)
        cfg.model.teacher.config = TINY_TEACHER
        cfg.model.teacher.checkpoint = checkpoint
    cfg.model.backbone.update(TINY_RESNET)
    cfg.model.head.in_channels = 64
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        for key in ('scale', 'crop_size'):
            _set_key(cfg[loader].dataset.pipeline, key, 32)
        cfg[loader].batch_size = 4
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
        cfg[loader].dataset.data_root = imagenet_root
    cfg.train_cfg = dict(by_epoch=False, max_iters=2, val_interval=2)
    cfg.param_scheduler = []
    cfg.default_hooks.logger.interval = 1
    cfg.log_level = 'WARNING'
    cfg.randomness = dict(seed=0)
    runner = Runner.from_cfg(cfg)
    runner.train()
    model = runner.model
    assert isinstance(model, KDClassifier) and runner.iter == 2
    scalars = runner.message_hub.log_scalars
    assert {'train/loss_cls', 'train/loss_kd', 'train/agreement'} <= set(
        scalars)
    if isinstance(model.teacher, FrozenTeacher):
        for key, value in teacher.state_dict().items():
            assert torch.equal(model.teacher.classifier.state_dict()[key],
                               value), key
    else:
        assert isinstance(model.teacher, SpatialTemporalSmoothing)
        assert int(model.teacher.steps) == 2
        assert {'val/teacher/accuracy/top1', 'val/student/accuracy/top1'
                } <= set(scalars)
