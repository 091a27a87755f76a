"""Shared fixtures: tiny data sets in real on-disk formats and small
versions of mmpretrain's own configs."""
import os
import os.path as osp

import numpy as np
import pytest
from mmengine.config import Config
from PIL import Image

import mmsts  # noqa: F401  (registers the modules)
from mmsts.utils import fix_collate_fn_scope

# The mmcv-lite warning about compiled ops is expected on this stack.
pytest_plugins = []


def make_imagenet_folder(root: str, num_classes: int = 2,
                         per_class: int = 4, size: int = 40) -> str:
    """Write ImageNet's layout: ``root/{train,val}/<wnid>/<name>.JPEG`` and
    the annotation lists ``root/meta/{train,val}.txt`` (``path label``)."""
    rng = np.random.default_rng(0)
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    for split in ('train', 'val'):
        lines = []
        for c in range(num_classes):
            folder = osp.join(root, split, f'n{c:08d}')
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), np.uint8)
                name = f'n{c:08d}/{split}_{c}_{i}.JPEG'
                Image.fromarray(pixels).save(osp.join(root, split, name))
                lines.append(f'{name} {c}\n')
        with open(osp.join(root, 'meta', f'{split}.txt'), 'w') as f:
            f.writelines(lines)
    return root


@pytest.fixture(scope='session')
def imagenet_root(tmp_path_factory):
    return make_imagenet_folder(str(tmp_path_factory.mktemp('imagenet')))


def _set_key(obj, key, value):
    """Recursively set ``key`` wherever it appears in dicts of a config."""
    if isinstance(obj, dict):
        for k in list(obj.keys()):
            if k == key:
                obj[k] = value
            else:
                _set_key(obj[k], key, value)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _set_key(item, key, value)


def small_selfsup_cfg(base: str, work_dir: str, data_root: str,
                      max_epochs: int = 2, hooks=None) -> Config:
    """An mmpretrain self-supervised config shrunk to run on CPU: ResNet-18,
    32-pixel crops, BN instead of SyncBN, batch 4, no workers."""
    # Inherit as a user's config would (this is what injects `_scope_`).
    os.makedirs(work_dir, exist_ok=True)
    child = osp.join(work_dir, 'child_config.py')
    with open(child, 'w') as f:
        f.write(f'_base_ = {base!r}\n')
    cfg = Config.fromfile(child)
    fix_collate_fn_scope(cfg)
    cfg.work_dir = work_dir
    cfg.model.backbone = dict(type='ResNet', depth=18, norm_cfg=dict(
        type='BN'), zero_init_residual=False)
    cfg.model.neck.in_channels = 512
    _set_key(cfg.model, 'hid_channels', 64)
    if cfg.model.type == 'BYOL':
        cfg.model.neck.out_channels = 32
        cfg.model.head.predictor.in_channels = 32
        cfg.model.head.predictor.out_channels = 32
    else:  # MoCo v2
        cfg.model.queue_len = 16
        cfg.model.feat_dim = cfg.model.neck.out_channels
    _set_key(cfg.model, 'norm_cfg', dict(type='BN'))
    _set_key(cfg.train_dataloader.dataset.pipeline, 'scale', 32)
    cfg.train_dataloader.batch_size = 4
    cfg.train_dataloader.num_workers = 0
    cfg.train_dataloader.persistent_workers = False
    cfg.train_dataloader.dataset.data_root = data_root
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook', interval=1, max_keep_ckpts=-1)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.randomness = dict(seed=0)
    cfg.log_level = 'WARNING'
    cfg.custom_hooks = list(hooks or [])
    return cfg


BYOL_CFG = 'mmpretrain::byol/byol_resnet50_16xb256-coslr-200e_in1k.py'
MOCOV2_CFG = 'mmpretrain::mocov2/mocov2_resnet50_8xb32-coslr-200e_in1k.py'
