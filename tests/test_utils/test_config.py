"""Configs that inherit ``mmpretrain::`` bases run unchanged under
mmpretrain's own tools once ``custom_imports`` imports mmsts."""
import os.path as osp
import subprocess
import sys

import mmpretrain
import pytest
from mmengine.config import Config
from mmengine.runner import Runner

from mmsts.utils.config import _drop_collate_scope

MMPRETRAIN_TRAIN = osp.join(
    osp.dirname(mmpretrain.__file__), '.mim', 'tools', 'train.py')

# Exactly the README's two lines under a user's `_base_`, then overrides
# that make the run tiny (ResNet-18, BN, batch 4, one epoch of 2 steps).
CHILD = '''\
_base_ = 'mmpretrain::mocov2/mocov2_resnet50_8xb32-coslr-200e_in1k.py'

custom_imports = dict(imports=['mmsts'], allow_failed_imports=False)
custom_hooks = [dict(type='SpatialTemporalSmoothingHook', preserve_prob=0.5)]

model = dict(
    backbone=dict(depth=18, norm_cfg=dict(type='BN'),
                  zero_init_residual=False),
    neck=dict(in_channels=512, hid_channels=64),
    queue_len=16)
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root={root!r}))
train_cfg = dict(max_epochs=1)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
randomness = dict(seed=0)
'''


def test_drop_collate_scope():
    loader = dict(batch_size=2, collate_fn=dict(
        type='default_collate', _scope_='mmpretrain'))
    dropped = _drop_collate_scope(loader)
    assert dropped['collate_fn'] == dict(type='default_collate')
    assert loader['collate_fn']['_scope_'] == 'mmpretrain'  # not modified
    plain = dict(collate_fn=dict(type='default_collate'))
    assert _drop_collate_scope(plain) is plain
    assert Runner.build_dataloader._drops_collate_scope


def test_inherited_config_has_the_scope(tmp_path, imagenet_root):
    """The premise: MMEngine tags the inherited collate_fn."""
    child = tmp_path / 'child.py'
    child.write_text(CHILD.format(root=imagenet_root))
    cfg = Config.fromfile(str(child))
    assert cfg.train_dataloader.collate_fn._scope_ == 'mmpretrain'


@pytest.mark.skipif(
    not osp.exists(MMPRETRAIN_TRAIN),
    reason="mmpretrain's package has no .mim/tools/train.py")
def test_two_lines_train_under_mmpretrains_own_train_py(
        tmp_path, imagenet_root):
    child = tmp_path / 'mocov2_sts_child.py'
    child.write_text(CHILD.format(root=imagenet_root))
    work_dir = tmp_path / 'work_dir'
    result = subprocess.run(
        [sys.executable, MMPRETRAIN_TRAIN,
         str(child), '--work-dir',
         str(work_dir)],
        capture_output=True,
        text=True,
        timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "got an unexpected keyword argument '_scope_'" not in \
        result.stderr
    assert osp.exists(work_dir / 'epoch_1.pth')
    assert 'STS teacher `encoder_k`' in result.stdout + result.stderr
