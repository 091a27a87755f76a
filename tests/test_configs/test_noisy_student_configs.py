"""The ImageNet Noisy Student recipes in ``configs/noisy_student/``: the
round-0 teacher and the B0/B1 students build and train two iterations on a
tiny ImageNet folder and a folder of unlabeled images, the students reading
a pseudo-label file written for that folder."""
import glob
import os
import os.path as osp

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.runner import Runner
from mmpretrain.registry import DATASETS, MODELS
from PIL import Image

from mmsts.datasets import dataset_fingerprint, save_pseudo_labels
from mmsts.models import SpatialTemporalSmoothing

from conftest import REPO_ROOT, _set_key

NS_DIR = osp.join(REPO_ROOT, 'configs', 'noisy_student')
TEACHER = osp.join(NS_DIR, 'efficientnet-b0_8xb32_in1k-teacher.py')
STUDENTS = sorted(glob.glob(osp.join(NS_DIR, 'noisy-student_efficientnet-*')))


@pytest.fixture(scope='module')
def unlabeled_root(tmp_path_factory):
    """A flat folder of 12 images, no labels."""
    root = str(tmp_path_factory.mktemp('unlabeled'))
    rng = np.random.default_rng(1)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(
            osp.join(root, f'img_{i}.JPEG'))
    return root


def _shrink(cfg, imagenet_root, work_dir):
    cfg.work_dir = work_dir
    for key in ('scale', 'crop_size'):
        _set_key(cfg.train_dataloader, key, 32)
        _set_key(cfg.val_dataloader, key, 32)
        _set_key(cfg.get('unlabeled_dataset', {}), key, 32)
    _set_key(cfg.train_dataloader, 'data_root', imagenet_root)
    cfg.val_dataloader.dataset.data_root = imagenet_root
    for loader in ('train_dataloader', 'val_dataloader'):
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
    cfg.train_dataloader.batch_size = 8
    cfg.val_dataloader.batch_size = 4
    cfg.train_cfg = dict(by_epoch=False, max_iters=2, val_interval=2)
    cfg.param_scheduler = []
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook', by_epoch=False, interval=2)
    cfg.log_level = 'WARNING'
    cfg.randomness = dict(seed=0)
    return cfg


def test_teacher_and_b1_student_build():
    """The round-0 teacher is mmpretrain's B0 recipe; the B1 student
    differs from the B0 one (trained below) only in its backbone. Both
    build (training EfficientNets on CPU is slow: one is enough)."""
    teacher = Config.fromfile(TEACHER)
    assert teacher.model.backbone == dict(type='EfficientNet', arch='b0')
    MODELS.build(teacher.model)
    b0, b1 = (Config.fromfile(p) for p in STUDENTS)
    assert b1.model.backbone.arch == 'b1'
    b1.model.backbone.arch = 'b0'
    assert b0.model == b1.model
    assert b0.train_dataloader == b1.train_dataloader
    MODELS.build(Config.fromfile(STUDENTS[1]).model)


def test_b0_student_trains_on_pseudo_labels(imagenet_root, unlabeled_root,
                                            tmp_path):
    cfg = Config.fromfile(STUDENTS[0])
    assert cfg.noisy_student.rounds >= 1
    assert osp.isfile(osp.join(REPO_ROOT, cfg.noisy_student.teacher_config))
    assert cfg.model.backbone.drop_path_rate > 0
    cfg.unlabeled_dataset.data_root = unlabeled_root
    cfg.train_dataloader.dataset.datasets[1].dataset.data_root = \
        unlabeled_root
    cfg = _shrink(cfg, imagenet_root, str(tmp_path))
    cfg.train_dataloader.dataset.datasets[1].dataset.data_root = \
        unlabeled_root
    cfg.train_dataloader.sampler.batch_size = 8
    # What tools/pseudo_label.py writes for the unlabeled folder.
    unlabeled = DATASETS.build(cfg.unlabeled_dataset)
    assert len(unlabeled) == 12
    labels = str(tmp_path / 'pseudo_labels.npz')
    rng = np.random.default_rng(0)
    targets = rng.dirichlet(np.ones(1000), size=6).astype(np.float32)
    save_pseudo_labels(labels, np.arange(6), targets,
                       dataset_fingerprint(unlabeled))
    cfg.train_dataloader.dataset.datasets[1].pseudo_label_file = labels
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 2
    hooks = [h for h in runner.hooks if type(h).__name__ == 'EMAHook']
    assert isinstance(hooks[0].ema_model, SpatialTemporalSmoothing)
    assert int(hooks[0].ema_model.steps) == 2
    assert os.path.isfile(osp.join(str(tmp_path), 'iter_2.pth'))
